//! Randomised properties of the scheduler (seeded, so failures reproduce): it never exceeds a
//! node's capacity or a service's max replicas per node, never places on an ineligible node or
//! onto a held host port, and leaves a task PENDING only when no node could take it.

use super::*;
use crate::orchestrator::testkit::{Sim, replicated};
use crate::store::{Availability, NodeResources, NodeState, PortConfig, PublishMode, ServiceMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GIB: u64 = 1 << 30;
const CORE: u64 = 1_000_000_000;

fn random_cluster(rng: &mut StdRng) -> Sim {
    let mut sim = Sim::new();
    for n in 0..rng.random_range(1..12) {
        let resources = NodeResources {
            nano_cpus: if rng.random_bool(0.2) { 0 } else { rng.random_range(1..8) * CORE },
            memory_bytes: if rng.random_bool(0.2) { 0 } else { rng.random_range(1..16) * GIB },
        };
        let zone = ["a", "b", "c"][rng.random_range(0..3)];
        let labels: &[(&str, &str)] = if rng.random_bool(0.8) { &[("zone", zone)] } else { &[] };
        let id = sim.add_node_with(&format!("n{n}"), resources, labels);
        let availability = [Availability::Active, Availability::Active, Availability::Pause, Availability::Drain]
            [rng.random_range(0..4)];
        let state = if rng.random_bool(0.1) { NodeState::Down } else { NodeState::Ready };
        sim.update_node(&id, |node| {
            node.availability = availability;
            node.state = state;
        });
    }
    for s in 0..rng.random_range(1..6) {
        let mut spec = replicated(rng.random_range(1..30));
        let reservations = &mut spec.resources.reservations;
        reservations.nano_cpus = rng.random_range(0..3) * CORE / 2;
        reservations.memory_bytes = rng.random_range(0..4) * GIB;
        spec.placement.max_replicas_per_node = rng.random_range(0..4);
        if rng.random_bool(0.3) {
            spec.placement.constraints = vec![format!("node.labels.zone!={}", ["a", "b", "c"][rng.random_range(0..3)])];
        }
        if rng.random_bool(0.3) {
            spec.placement.preferences = vec!["spread=node.labels.zone".into()];
        }
        if rng.random_bool(0.2) {
            spec.endpoint.ports =
                vec![PortConfig { target: 80, published: 9000, protocol: Default::default(), mode: PublishMode::Host }];
        }
        if rng.random_bool(0.2) {
            spec.mode = ServiceMode::Global;
        }
        sim.add_service(&format!("s{s}"), spec);
    }
    sim
}

/// Why `node_id` cannot take `task` in the current store, if it cannot.
fn refusal(store: &Store, task: &Task, node_id: &str) -> Option<&'static str> {
    let node = &store.nodes[node_id];
    if node.state != NodeState::Ready || node.availability != Availability::Active {
        return Some("unavailable");
    }
    let constraints = parse_constraints(&task.spec.placement.constraints).ok()?;
    if !constraints.iter().all(|c| c.matches(node)) {
        return Some("constraints");
    }
    let on_node: Vec<&Task> = store
        .tasks
        .values()
        .filter(|t| t.meta.id != task.meta.id && t.node_id.as_deref() == Some(node_id) && t.status.state.holds_node())
        .collect();
    let max = task.spec.placement.max_replicas_per_node;
    let same_service = on_node.iter().filter(|t| t.service_id == task.service_id && t.is_live()).count() as u64;
    if max > 0 && same_service >= max {
        return Some("max replicas");
    }
    let wanted = task.spec.resources.reservations;
    let cpus: u64 = on_node.iter().map(|t| t.spec.resources.reservations.nano_cpus).sum();
    let memory: u64 = on_node.iter().map(|t| t.spec.resources.reservations.memory_bytes).sum();
    if wanted.nano_cpus > 0 && node.resources.nano_cpus > 0 && cpus + wanted.nano_cpus > node.resources.nano_cpus {
        return Some("cpu");
    }
    if wanted.memory_bytes > 0
        && node.resources.memory_bytes > 0
        && memory + wanted.memory_bytes > node.resources.memory_bytes
    {
        return Some("memory");
    }
    let held: Vec<_> = on_node.iter().flat_map(|t| t.spec.host_ports()).collect();
    if task.spec.host_ports().any(|p| held.contains(&p)) {
        return Some("port");
    }
    None
}

#[test]
fn scheduling_respects_capacity_max_replicas_and_eligibility() {
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = random_cluster(&mut rng);
        sim.converge();
        let store = &sim.store;
        for task in store.tasks.values().filter(|t| t.is_live()) {
            match (task.status.state, task.node_id.as_deref()) {
                (TaskState::Pending, None) => {
                    for node_id in store.nodes.keys() {
                        assert!(
                            refusal(store, task, node_id).is_some(),
                            "seed {seed}: {} fits on {node_id}",
                            task.meta.id
                        );
                    }
                    assert!(
                        task.status.message.starts_with("no suitable node"),
                        "seed {seed}: {}",
                        task.status.message
                    );
                }
                (TaskState::Pending, Some(node_id)) => {
                    assert!(refusal(store, task, node_id).is_some(), "seed {seed}: global task fits");
                }
                (_, Some(node_id)) => {
                    let refused = refusal(store, task, node_id);
                    assert_eq!(refused, None, "seed {seed}: {} on {node_id}", task.meta.id);
                }
                (state, None) => panic!("seed {seed}: {state:?} without a node"),
            }
        }
    }
}
