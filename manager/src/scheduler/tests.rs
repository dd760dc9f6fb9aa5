use super::*;
use crate::orchestrator::testkit::{Sim, global, replicated};
use crate::store::{Availability, NodeResources, NodeRole, PortConfig, PublishMode};
use std::collections::BTreeMap;

const GIB: u64 = 1 << 30;

fn pending_messages(sim: &Sim, service: &str) -> Vec<String> {
    sim.tasks(service)
        .into_iter()
        .filter(|t| t.is_live() && t.status.state == TaskState::Pending)
        .map(|t| t.status.message)
        .collect()
}

#[test]
fn constraints_on_labels_role_and_hostname() {
    let mut sim = Sim::new();
    sim.add_node_with("a", NodeResources::default(), &[("zone", "east")]);
    let b = sim.add_node_with("b", NodeResources::default(), &[("zone", "west")]);
    sim.add_node_with("c", NodeResources::default(), &[]);
    sim.update_node(&b, |n| n.role = NodeRole::Manager);
    let cases: [(&[&str], &[&str]); 5] = [
        (&["node.labels.zone==east"], &["a"]),
        (&["node.labels.zone!=east"], &["b", "c"]),
        (&["node.role==manager"], &["b"]),
        (&["node.role!=manager", "node.hostname!=c"], &["a"]),
        (&["node.hostname==c"], &["c"]),
    ];
    for (i, (constraints, expected)) in cases.into_iter().enumerate() {
        let mut spec = replicated(6);
        spec.placement.constraints = constraints.iter().map(|c| c.to_string()).collect();
        let service = sim.add_service(&format!("s{i}"), spec);
        sim.converge();
        let nodes: Vec<String> = sim.running_per_node(&service).into_keys().collect();
        assert_eq!(nodes, expected, "{constraints:?}");
    }
}

#[test]
fn unsatisfiable_constraints_leave_tasks_pending_with_reasons() {
    let mut sim = Sim::new();
    let a = sim.add_node("a");
    let b = sim.add_node("b");
    sim.add_node("c");
    sim.update_node(&a, |n| n.availability = Availability::Drain);
    sim.update_node(&b, |n| n.state = crate::store::NodeState::Down);
    let mut spec = replicated(1);
    spec.placement.constraints = vec!["node.labels.gpu==yes".into()];
    let service = sim.add_service("gpu", spec);
    sim.converge();
    assert_eq!(
        pending_messages(&sim, &service),
        ["no suitable node (1 node down; 1 node drained; 1 node does not satisfy the constraints)"]
    );
}

#[test]
fn invalid_constraint_is_reported() {
    let mut sim = Sim::new();
    sim.add_node("a");
    let mut spec = replicated(1);
    spec.placement.constraints = vec!["node.platform.os==linux".into()];
    let service = sim.add_service("bad", spec);
    sim.converge();
    let messages = pending_messages(&sim, &service);
    assert!(messages[0].starts_with("invalid placement: invalid constraint"), "{messages:?}");
}

#[test]
fn max_replicas_per_node() {
    let mut sim = Sim::new();
    sim.add_node("a");
    sim.add_node("b");
    let mut spec = replicated(5);
    spec.placement.max_replicas_per_node = 2;
    let service = sim.add_service("web", spec);
    sim.converge();
    assert_eq!(sim.running_per_node(&service), [("a".to_string(), 2), ("b".to_string(), 2)].into());
    assert_eq!(pending_messages(&sim, &service), ["no suitable node (2 nodes reached the max replicas per node)"]);
    sim.add_node("c");
    sim.converge();
    assert_eq!(sim.running(&service).len(), 5);
}

#[test]
fn reservations_beyond_capacity_wait_until_resources_free_up() {
    let mut sim = Sim::new();
    let node = NodeResources { nano_cpus: 4_000_000_000, memory_bytes: 4 * GIB };
    sim.add_node_with("a", node, &[]);
    sim.add_node_with("b", node, &[]);
    let mut spec = replicated(5);
    spec.resources.reservations.memory_bytes = 2 * GIB;
    let db = sim.add_service("db", spec);
    sim.converge();
    assert_eq!(sim.running(&db).len(), 4);
    assert_eq!(pending_messages(&sim, &db), ["no suitable node (2 nodes have insufficient memory)"]);
    let mut spec = replicated(1);
    spec.resources.reservations.nano_cpus = 5_000_000_000;
    let hog = sim.add_service("hog", spec);
    sim.converge();
    assert_eq!(pending_messages(&sim, &hog), ["no suitable node (2 nodes have insufficient CPU)"]);
    // Another service goes away: once its task stopped, the pending task lands.
    let mut spec = replicated(1);
    spec.resources.reservations.memory_bytes = 2 * GIB;
    let small = sim.add_service("small", spec);
    sim.converge();
    assert_eq!(sim.running(&small).len(), 0);
    sim.remove_service(&db);
    sim.converge();
    assert_eq!(sim.running(&small).len(), 1, "scheduled once memory was freed");
    assert!(pending_messages(&sim, &small).is_empty());
}

#[test]
fn placement_preference_spreads_over_zones_first() {
    let mut sim = Sim::new();
    // Zone east has 3 nodes, west 1: spreading over zones puts half the tasks on the west node.
    for name in ["e1", "e2", "e3"] {
        sim.add_node_with(name, NodeResources::default(), &[("zone", "east")]);
    }
    sim.add_node_with("w1", NodeResources::default(), &[("zone", "west")]);
    let mut spec = replicated(6);
    spec.placement.preferences = vec!["spread=node.labels.zone".into()];
    let service = sim.add_service("web", spec);
    sim.converge();
    let per_node = sim.running_per_node(&service);
    assert_eq!(per_node.get("w1"), Some(&3));
    assert_eq!(per_node.get("e1"), Some(&1));
    assert_eq!(per_node.get("e2"), Some(&1));
    assert_eq!(per_node.get("e3"), Some(&1));
}

#[test]
fn nested_preferences_and_unlabelled_nodes() {
    let mut sim = Sim::new();
    sim.add_node_with("a1", NodeResources::default(), &[("dc", "a"), ("rack", "1")]);
    sim.add_node_with("a2", NodeResources::default(), &[("dc", "a"), ("rack", "2")]);
    sim.add_node_with("a3", NodeResources::default(), &[("dc", "a"), ("rack", "2")]);
    sim.add_node_with("x", NodeResources::default(), &[]);
    let mut spec = replicated(8);
    spec.placement.preferences = vec!["spread=node.labels.dc".into(), "spread=node.labels.rack".into()];
    let service = sim.add_service("web", spec);
    sim.converge();
    let per_node = sim.running_per_node(&service);
    // dc "" (node x) and dc a get 4 each; within a, rack 1 and rack 2 get 2 each.
    let expected: BTreeMap<String, usize> =
        [("a1", 2), ("a2", 1), ("a3", 1), ("x", 4)].map(|(n, c)| (n.to_string(), c)).into();
    assert_eq!(per_node, expected);
}

#[test]
fn host_ports_conflict() {
    let mut sim = Sim::new();
    sim.add_node("a");
    sim.add_node("b");
    let mut spec = replicated(3);
    spec.endpoint.ports =
        vec![PortConfig { target: 80, published: 8080, protocol: Default::default(), mode: PublishMode::Host }];
    let service = sim.add_service("web", spec);
    sim.converge();
    assert_eq!(sim.running(&service).len(), 2);
    assert_eq!(pending_messages(&sim, &service), ["no suitable node (2 nodes have host port 8080/tcp in use)"]);
}

#[test]
fn global_task_waits_on_its_node() {
    let mut sim = Sim::new();
    sim.add_node_with("small", NodeResources { nano_cpus: 0, memory_bytes: GIB }, &[]);
    sim.add_node_with("large", NodeResources { nano_cpus: 0, memory_bytes: 8 * GIB }, &[]);
    let mut spec = global();
    spec.resources.reservations.memory_bytes = 2 * GIB;
    let service = sim.add_service("agent", spec);
    sim.converge();
    assert_eq!(sim.running_per_node(&service), [("large".to_string(), 1)].into());
    assert_eq!(pending_messages(&sim, &service), ["no suitable node (1 node has insufficient memory)"]);
}

#[test]
fn stale_decisions_are_refused_by_the_store() {
    let mut sim = Sim::new();
    sim.add_node("a");
    let service = sim.add_service("web", replicated(1));
    sim.reconcile();
    let pending = unassigned_tasks(&sim.store);
    let decisions = schedule(&sim.store, &pending);
    let changes = decisions_to_changes(&sim.store, &decisions, sim.now);
    // The task changes before the decision is committed.
    let id = sim.tasks(&service)[0].meta.id.clone();
    sim.set_state(&id, TaskState::Pending);
    let command = crate::store::Command { now_ms: sim.now, op: crate::store::Op::Batch(changes) };
    let (response, _) = sim.store.clone().apply(1_000, &command);
    assert!(matches!(response, crate::store::Response::Rejected(crate::store::StoreError::VersionConflict { .. })));
}

mod bench;
mod property;
