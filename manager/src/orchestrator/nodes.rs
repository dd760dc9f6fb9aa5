//! Node changes and the constraint enforcer: the live, not yet ended tasks on a node that was
//! removed, drained or went DOWN, or whose labels no longer satisfy the task's constraints, are
//! shut down. Their slots become empty, so the replicated orchestrator replaces them elsewhere;
//! global services get no new task there while the node is not eligible. Paused nodes keep
//! their tasks.

use super::common::{Fit, Unit, set_desired};
use crate::store::{Availability, Change, NodeState, Store, Task, TaskState};

/// Shuts down the tasks that must leave their node.
pub fn reconcile_nodes(store: &Store) -> Vec<Change> {
    units(store).into_iter().flatten().collect()
}

pub(crate) fn units(store: &Store) -> Vec<Unit> {
    store
        .tasks
        .values()
        .filter(|t| t.is_live() && !t.status.state.is_ended() && must_leave(store, t))
        .map(|t| vec![set_desired(t, TaskState::Shutdown)])
        .collect()
}

fn must_leave(store: &Store, task: &Task) -> bool {
    let Some(node_id) = task.node_id.as_deref() else { return false };
    match store.nodes.get(node_id) {
        None => true,
        Some(node) => {
            node.availability == Availability::Drain
                || node.state == NodeState::Down
                || (!task.spec.placement.constraints.is_empty()
                    && Fit::of(&task.spec).satisfied_by(node) == Some(false))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::orchestrator::testkit::{Sim, replicated};
    use crate::store::{Availability, NodeState, TaskState};

    #[test]
    fn drain_moves_tasks_and_pause_keeps_them() {
        let mut sim = Sim::new();
        let a = sim.add_node("a");
        sim.add_node("b");
        sim.add_node("c");
        let service = sim.add_service("web", replicated(6));
        sim.converge();
        sim.update_node(&a, |n| n.availability = Availability::Pause);
        sim.converge();
        assert_eq!(sim.running_per_node(&service).get("a"), Some(&2), "paused keeps its tasks");
        sim.update_node(&a, |n| n.availability = Availability::Drain);
        sim.converge();
        assert_eq!(sim.running_per_node(&service), [("b".to_string(), 3), ("c".to_string(), 3)].into());
        let slots: Vec<u64> = sim.running(&service).iter().map(|t| t.slot).collect();
        assert_eq!(slots, (1..=6).collect::<Vec<_>>(), "replacements keep their slots");
    }

    #[test]
    fn down_node_tasks_are_replaced_elsewhere() {
        let mut sim = Sim::new();
        let a = sim.add_node("a");
        sim.add_node("b");
        let service = sim.add_service("web", replicated(4));
        sim.converge();
        sim.update_node(&a, |n| n.state = NodeState::Down);
        sim.converge();
        assert_eq!(sim.running_per_node(&service).get("b"), Some(&4));
        let on_a: Vec<_> =
            sim.tasks(&service).into_iter().filter(|t| t.node_id.as_deref() == Some(a.as_str())).collect();
        assert!(on_a.iter().all(|t| t.desired_state == TaskState::Shutdown));
    }

    #[test]
    fn label_change_evicts_tasks_whose_constraints_fail() {
        let mut sim = Sim::new();
        let a = sim.add_node("a");
        let b = sim.add_node("b");
        for node in [&a, &b] {
            sim.update_node(node, |n| {
                n.labels.insert("tier".into(), "front".into());
            });
        }
        let mut spec = replicated(2);
        spec.placement.constraints = vec!["node.labels.tier==front".into()];
        let service = sim.add_service("web", spec);
        sim.converge();
        sim.update_node(&a, |n| {
            n.labels.insert("tier".into(), "back".into());
        });
        sim.converge();
        assert_eq!(sim.running_per_node(&service), [("b".to_string(), 2)].into());
    }
}
