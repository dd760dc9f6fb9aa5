//! One round of the leader's control loops, pure: the orchestrators' batch, then placement of
//! the PENDING tasks, both the ones already stored and the ones this batch creates, so a new
//! task is created already ASSIGNED and the scheduler is never starved by a busy orchestrator.
//! Last, the per-host subnet leases of overlay networks ([`crate::ipam::plan_leases`]) and the
//! services' virtual IPs ([`crate::ipam::plan_vips`]).

use crate::orchestrator::{IdSource, reconcile_all};
use crate::scheduler::{Decision, Outcome, decisions_to_changes, schedule, unassigned_tasks};
use crate::store::{Change, Object, Store, Task, TaskState};
use std::collections::{HashMap, HashSet};

/// The changes of one round on `store` at `now_ms`, as one conflict-free batch: no task is
/// changed twice (tasks the orchestrators change are scheduled next round).
pub fn plan_round(store: &Store, now_ms: i64, ids: &mut dyn IdSource) -> Vec<Change> {
    let mut changes = reconcile_all(store, now_ms, ids);
    let touched: HashSet<String> = changes.iter().map(|c| change_id(c).to_string()).collect();
    let mut created: HashMap<String, usize> = HashMap::new();
    let mut pending: Vec<Task> =
        unassigned_tasks(store).into_iter().filter(|t| !touched.contains(&t.meta.id)).collect();
    for (index, change) in changes.iter().enumerate() {
        if let Change::Create(Object::Task(task)) = change {
            created.insert(task.meta.id.clone(), index);
            pending.push(task.clone());
        }
    }
    let decisions = schedule(store, &pending);
    let (new, stored): (Vec<Decision>, Vec<Decision>) =
        decisions.into_iter().partition(|d| created.contains_key(&d.task_id));
    for decision in new {
        let Some(&index) = created.get(&decision.task_id) else { continue };
        if let Some(Change::Create(Object::Task(task))) = changes.get_mut(index) {
            place_new(task, &decision.outcome, now_ms);
        }
    }
    changes.extend(decisions_to_changes(store, &stored, now_ms));
    // Per-host subnet leases follow the stored tasks (tasks this round places get theirs next
    // round, once their assignment is committed).
    changes.extend(crate::ipam::plan_leases(store));
    changes.extend(crate::ipam::plan_vips(store));
    changes
}

/// Applies a decision to a task this round creates (as `decisions_to_changes` does to stored ones).
fn place_new(task: &mut Task, outcome: &Outcome, now_ms: i64) {
    match outcome {
        Outcome::Assigned { node_id } => {
            task.node_id = Some(node_id.clone());
            task.status.state = TaskState::Assigned;
            task.status.message = format!("assigned to node {node_id}");
        }
        Outcome::Pending { message } => task.status.message = message.clone(),
    }
    task.status.timestamp_ms = now_ms;
}

fn change_id(change: &Change) -> &str {
    match change {
        Change::Create(object) | Change::Update { object, .. } => &object.meta().id,
        Change::Delete { id, .. } => id,
    }
}

#[cfg(test)]
mod tests {
    use super::plan_round;
    use crate::orchestrator::testkit::{Sim, replicated};
    use crate::store::{Change, NodeState, Object, TaskState};

    fn round(sim: &mut Sim) -> usize {
        let mut ids = crate::ids::new_id;
        let changes = plan_round(&sim.store, sim.now, &mut ids);
        sim.apply(changes)
    }

    #[test]
    fn new_tasks_are_created_assigned() {
        let mut sim = Sim::new();
        sim.add_node("a");
        sim.add_node("b");
        let service = sim.add_service("web", replicated(4));
        let mut ids = crate::ids::new_id;
        let changes = plan_round(&sim.store, sim.now, &mut ids);
        assert_eq!(changes.len(), 4);
        for change in &changes {
            let Change::Create(Object::Task(task)) = change else { panic!("{change:?}") };
            assert_eq!(task.status.state, TaskState::Assigned);
            assert!(task.node_id.is_some());
        }
        sim.apply(changes);
        assert_eq!(round(&mut sim), 0, "converged in one round");
        assert_eq!(sim.tasks(&service).len(), 4);
    }

    #[test]
    fn without_nodes_tasks_wait_pending_and_land_when_a_node_comes() {
        let mut sim = Sim::new();
        let service = sim.add_service("web", replicated(2));
        assert_eq!(round(&mut sim), 2);
        assert_eq!(round(&mut sim), 0, "an unchanged backlog writes nothing");
        assert!(sim.tasks(&service).iter().all(|t| t.status.state == TaskState::Pending));
        sim.add_node("a");
        assert_eq!(round(&mut sim), 2);
        assert!(sim.tasks(&service).iter().all(|t| t.status.state == TaskState::Assigned));
    }

    #[test]
    fn leases_follow_the_tasks_of_services_on_networks() {
        let mut sim = Sim::new();
        let a = sim.add_node("a");
        let b = sim.add_node("b");
        sim.apply(vec![Change::Create(Object::Network(crate::store::Network {
            meta: crate::store::Meta { id: "net".into(), ..Default::default() },
            name: "front".into(),
            labels: Default::default(),
            subnet: "10.9.0.0/16".into(),
            vni: 4096,
            attachable: false,
            driver: "overlay".into(),
            ingress: false,
        }))]);
        let mut spec = replicated(4);
        spec.networks = vec![crate::store::NetworkAttachment { network_id: "net".into(), aliases: Vec::new() }];
        let service = sim.add_service("web", spec);
        let mut rounds = 0;
        while round(&mut sim) > 0 {
            rounds += 1;
            assert!(rounds < 5, "no convergence");
        }
        let mut leased: Vec<(String, String)> =
            sim.store.subnet_leases.values().map(|l| (l.node_id.clone(), l.subnet.clone())).collect();
        leased.sort();
        let mut nodes: Vec<String> = leased.iter().map(|(n, _)| n.clone()).collect();
        nodes.dedup();
        assert_eq!(nodes, [a, b], "one lease per node with a task");
        assert_ne!(leased[0].1, leased[1].1, "distinct per-host subnets");
        let vips: Vec<&str> = sim.store.virtual_ips.values().map(|v| v.address.as_str()).collect();
        assert_eq!(vips, ["10.9.255.1"], "the service's virtual IP");
        sim.remove_service(&service);
        let mut rounds = 0;
        while round(&mut sim) > 0 {
            rounds += 1;
            assert!(rounds < 5, "no convergence");
        }
        assert!(sim.store.subnet_leases.is_empty(), "released: {:?}", sim.store.subnet_leases);
        assert!(sim.store.virtual_ips.is_empty(), "released: {:?}", sim.store.virtual_ips);
    }

    #[test]
    fn down_node_tasks_are_replaced_in_bounded_rounds() {
        let mut sim = Sim::new();
        let a = sim.add_node("a");
        sim.add_node("b");
        let service = sim.add_service("web", replicated(4));
        sim.converge();
        sim.update_node(&a, |n| n.state = NodeState::Down);
        let mut rounds = 0;
        while round(&mut sim) > 0 {
            rounds += 1;
            assert!(rounds < 10, "no convergence");
        }
        let live: Vec<_> = sim.tasks(&service).into_iter().filter(|t| t.is_live()).collect();
        assert_eq!(live.len(), 4);
        assert!(live.iter().all(|t| t.node_id.as_deref() != Some(a.as_str())));
        assert!(live.iter().all(|t| t.status.state >= TaskState::Assigned));
    }
}
