//! Micro-benchmark: 100k PENDING tasks on 1,000 nodes. Prints placements/s, asserts nothing.
//! `cargo test -p manager --release --lib scheduler::tests::bench -- --ignored --nocapture`

use super::*;
use crate::store::{Meta, Node, NodeResources, NodeRole, NodeState, RestartInfo, ServiceMode, TaskStatus};
use std::time::Instant;

const NODES: usize = 1_000;
const TASKS: usize = 100_000;

fn cluster() -> Store {
    let mut store = Store::default();
    for n in 0..NODES {
        let id = format!("{:016x}", n + 1);
        let node = Node {
            meta: Meta { id: id.clone(), ..Meta::default() },
            hostname: format!("node-{n}"),
            role: NodeRole::Worker,
            availability: crate::store::Availability::Active,
            labels: [("zone".to_string(), format!("z{}", n % 10)), ("disk".to_string(), ["ssd", "hdd"][n % 2].into())]
                .into(),
            addr: String::new(),
            state: NodeState::Ready,
            resources: NodeResources { nano_cpus: 64_000_000_000, memory_bytes: 256 << 30 },
        };
        store.nodes.insert(id, node);
    }
    store
}

/// `services` services sharing `TASKS` tasks; every other one with a zone preference and
/// every third one with a constraint.
fn pending(services: usize) -> Vec<Task> {
    let per_service = TASKS / services;
    let mut tasks = Vec::with_capacity(TASKS);
    for s in 0..services {
        let mut spec = ServiceSpec {
            image: "nginx".into(),
            mode: ServiceMode::Replicated { replicas: per_service as u64 },
            ..ServiceSpec::default()
        };
        spec.resources.reservations.nano_cpus = 100_000_000;
        spec.resources.reservations.memory_bytes = 64 << 20;
        if s % 2 == 0 {
            spec.placement.preferences = vec!["spread=node.labels.zone".into()];
        }
        if s % 3 == 0 {
            spec.placement.constraints = vec!["node.labels.disk==ssd".into()];
        }
        for slot in 1..=per_service as u64 {
            tasks.push(Task {
                meta: Meta { id: format!("t{s:05}-{slot:06}"), version: 1, ..Meta::default() },
                service_id: format!("s{s}"),
                slot,
                node_id: None,
                desired_state: TaskState::Running,
                status: TaskStatus { state: TaskState::Pending, ..TaskStatus::default() },
                spec: spec.clone(),
                job_iteration: 0,
                restart: RestartInfo::default(),
            });
        }
    }
    tasks
}

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn placements_per_second() {
    for services in [1, 100, 10_000] {
        let mut store = cluster();
        let tasks = pending(services);
        for task in &tasks {
            store.tasks.insert(task.meta.id.clone(), task.clone());
        }
        let start = Instant::now();
        let decisions = schedule(&store, &tasks);
        let scheduled = start.elapsed();
        let placed = decisions.iter().filter(|d| matches!(d.outcome, Outcome::Assigned { .. })).count();
        let start = Instant::now();
        let changes = decisions_to_changes(&store, &decisions, 1);
        let command = crate::store::Command { now_ms: 1, op: crate::store::Op::Batch(changes) };
        let (response, _) = store.apply(2, &command);
        let applied = start.elapsed();
        println!(
            "{services:>6} services: {placed} of {TASKS} tasks placed on {NODES} nodes in {:.3} s = {:.0} placements/s \
             (store writes {:.3} s, {response:?})",
            scheduled.as_secs_f64(),
            placed as f64 / scheduled.as_secs_f64(),
            applied.as_secs_f64(),
        );
    }
}
