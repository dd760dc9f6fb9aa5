//! Task status reports: validated against the store, merged per burst (every report that
//! queued while the previous write ran goes into one Raft write), and only forward moves of
//! the observed state are kept.

use crate::api::convert::addresses_from_proto;
use crate::batcher::split_write;
use crate::consensus::{Consensus, now_ms};
use crate::store::{Change, Command, Object, Op, Response, Store, StoreError, TaskState, TaskStatusUpdate};
use proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Reports waiting for the writer; callers wait when it is full.
const QUEUE: usize = 4096;

/// The most task updates one Raft write of a burst carries.
const MAX_CHANGES_PER_WRITE: usize = 500;

/// How often a burst is recomputed after version conflicts before its callers are told.
const MAX_ATTEMPTS: usize = 10;

/// One observed state of a task, from the agent of `node_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub node_id: String,
    pub task_id: String,
    pub state: TaskState,
    pub message: String,
    pub err: String,
    pub exit_code: Option<i32>,
    pub container_id: String,
    /// Network id -> IPv4 address; empty: unchanged.
    pub addresses: BTreeMap<String, String>,
    /// "starting", "healthy" or "unhealthy"; empty: unchanged.
    pub health: String,
}

/// The health values an agent may report ("": none reported).
pub const HEALTH_VALUES: [&str; 4] = ["", "starting", "healthy", "unhealthy"];

/// Parses and checks the reports of `node_id`'s agent: every task must be assigned to that
/// node (tasks no longer in the store are skipped: they were removed meanwhile), and every
/// address must be IPv4 and on a network the task is on (its spec's, and the ingress network
/// when it publishes ports).
pub fn validate(store: &Store, node_id: &str, updates: Vec<pb::TaskStatus>) -> Result<Vec<Report>, Status> {
    let mut reports = Vec::with_capacity(updates.len());
    for (i, update) in updates.into_iter().enumerate() {
        let state = TaskState::parse(&update.state).ok_or_else(|| {
            Status::invalid_argument(format!("updates[{i}].state: {:?} is not a task state", update.state))
        })?;
        let Some(task) = store.tasks.get(&update.task_id) else { continue };
        if task.node_id.as_deref() != Some(node_id) {
            return Err(Status::permission_denied(format!(
                "updates[{i}]: task {} is not assigned to node {node_id}",
                update.task_id
            )));
        }
        let field = format!("updates[{i}].addresses");
        let attached = crate::ipam::task_network_ids(store, &task.spec);
        let addresses = addresses_from_proto(&update.addresses, &attached, &field).map_err(Status::invalid_argument)?;
        if !HEALTH_VALUES.contains(&update.health.as_str()) {
            return Err(Status::invalid_argument(format!(
                "updates[{i}].health: {:?} is invalid: use starting, healthy or unhealthy",
                update.health
            )));
        }
        reports.push(Report {
            node_id: node_id.to_string(),
            task_id: update.task_id,
            state,
            message: update.message,
            err: update.error,
            exit_code: update.exit_code,
            container_id: update.container_id,
            addresses,
            health: update.health,
        });
    }
    Ok(reports)
}

/// The store writes for `reports`: per task the furthest state reported (the latest report on
/// ties), dropped if it would move the observed state back, changes nothing, or the task left
/// the node meanwhile. The addresses are those of the latest report, not older than the stored
/// state, that carries any (none: the known ones stay). The health is that of the report kept
/// (empty: the known one stays); a report that changes only the health, the state staying
/// RUNNING, is written like any other change. Each update carries the version it was computed
/// on.
pub fn status_changes(store: &Store, reports: &[Report], now_ms: i64) -> Vec<Change> {
    let mut latest: HashMap<&str, &Report> = HashMap::new();
    let mut by_task: HashMap<&str, Vec<&Report>> = HashMap::new();
    for report in reports {
        let keep = latest.get(report.task_id.as_str()).is_some_and(|r| r.state > report.state);
        if !keep {
            latest.insert(&report.task_id, report);
        }
        by_task.entry(&report.task_id).or_default().push(report);
    }
    let mut changes = Vec::new();
    for (task_id, report) in latest {
        let Some(task) = store.tasks.get(task_id) else { continue };
        if task.node_id.as_deref() != Some(report.node_id.as_str()) || report.state < task.status.state {
            continue;
        }
        let addresses = by_task
            .get(task_id)
            .into_iter()
            .flatten()
            .rev()
            .find(|r| r.node_id == report.node_id && r.state >= task.status.state && !r.addresses.is_empty())
            .map(|r| &r.addresses);
        let mut status = task.status.clone();
        status.state = report.state;
        status.message = report.message.clone();
        status.err = report.err.clone();
        status.exit_code = report.exit_code.or(status.exit_code);
        if !report.container_id.is_empty() {
            status.container_id = report.container_id.clone();
        }
        if let Some(addresses) = addresses {
            status.addresses = addresses.clone();
        }
        if !report.health.is_empty() {
            status.health = report.health.clone();
        }
        if status == task.status {
            continue;
        }
        status.timestamp_ms = now_ms;
        let mut updated = task.clone();
        updated.status = status;
        changes.push(Change::Update { object: Object::Task(updated), expected_version: Some(task.meta.version) });
    }
    changes
}

struct Pending {
    reports: Vec<Report>,
    done: oneshot::Sender<Result<(), Status>>,
}

/// Hands reports to the writer task; cheap to clone.
#[derive(Clone)]
pub struct StatusWriter {
    queue: mpsc::Sender<Pending>,
}

impl StatusWriter {
    /// Starts the writer task (it ends when every `StatusWriter` is dropped).
    pub fn start(consensus: Consensus) -> (StatusWriter, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        (StatusWriter { queue }, tokio::spawn(write_bursts(consensus, receiver)))
    }

    /// Queues `reports` and waits until they are committed (or refused).
    pub async fn submit(&self, reports: Vec<Report>) -> Result<(), Status> {
        if reports.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.queue.send(Pending { reports, done }).await.map_err(|_| Status::unavailable("the manager is shutting down"))?;
        wait.await.map_err(|_| Status::unavailable("the manager is shutting down"))?
    }
}

async fn write_bursts(consensus: Consensus, mut receiver: mpsc::Receiver<Pending>) {
    while let Some(first) = receiver.recv().await {
        let mut burst = vec![first];
        while let Ok(next) = receiver.try_recv() {
            burst.push(next);
        }
        let reports: Vec<Report> = burst.iter().flat_map(|p| p.reports.iter().cloned()).collect();
        let result = write_reports(&consensus, &reports).await;
        for pending in burst {
            let _ = pending.done.send(result.clone());
        }
    }
}

/// Writes one burst, recomputed on the current store after each version conflict. The changes
/// go out as writes of at most [`MAX_CHANGES_PER_WRITE`] (proposed together), so that a burst
/// from 1,000 agents never makes one huge Raft entry; a write that was refused is recomputed
/// with the rest (what was written already drops out: it changes nothing any more).
async fn write_reports(consensus: &Consensus, reports: &[Report]) -> Result<(), Status> {
    for _ in 0..MAX_ATTEMPTS {
        let now = now_ms();
        let changes = status_changes(&consensus.state.read(), reports, now);
        if changes.is_empty() {
            return Ok(());
        }
        let updates: Vec<TaskStatusUpdate> = changes.into_iter().filter_map(status_update).collect();
        let writes = split_write(updates, MAX_CHANGES_PER_WRITE)
            .into_iter()
            .map(|piece| consensus.write_command(Command { now_ms: now, op: Op::SetTaskStatuses(piece) }));
        let mut conflict = false;
        for outcome in futures::future::join_all(writes).await {
            match outcome? {
                Response::Rejected(StoreError::VersionConflict { .. }) => conflict = true,
                Response::Rejected(error) => return Err(crate::consensus::store_error_status(&error)),
                _ => {}
            }
        }
        if !conflict {
            return Ok(());
        }
    }
    Err(Status::aborted("the tasks kept changing while their status was written; report again"))
}

/// The status part of a task update made by [`status_changes`].
fn status_update(change: Change) -> Option<TaskStatusUpdate> {
    match change {
        Change::Update { object: Object::Task(task), expected_version: Some(expected_version) } => {
            Some(TaskStatusUpdate { task_id: task.meta.id, expected_version, status: task.status })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Meta, NetworkAttachment, RestartInfo, ServiceSpec, Task, TaskStatus};

    fn store() -> Store {
        let mut store = Store::default();
        let task = Task {
            meta: Meta { id: "t1".into(), version: 7, ..Meta::default() },
            service_id: "s".into(),
            slot: 1,
            node_id: Some("a".into()),
            desired_state: TaskState::Running,
            status: TaskStatus { state: TaskState::Starting, ..TaskStatus::default() },
            spec: ServiceSpec {
                networks: vec![NetworkAttachment { network_id: "n1".into(), aliases: Vec::new() }],
                ..ServiceSpec::default()
            },
            job_iteration: 0,
            restart: RestartInfo::default(),
        };
        store.tasks.insert("t1".into(), task);
        store
    }

    fn report(state: &str) -> pb::TaskStatus {
        pb::TaskStatus { task_id: "t1".into(), state: state.into(), ..Default::default() }
    }

    #[test]
    fn only_the_assigned_node_reports_and_states_must_parse() {
        let store = store();
        assert_eq!(validate(&store, "b", vec![report("running")]).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(validate(&store, "a", vec![report("sleeping")]).unwrap_err().message().contains("updates[0].state"));
        let unknown = pb::TaskStatus { task_id: "gone".into(), ..report("running") };
        assert!(validate(&store, "a", vec![unknown]).unwrap().is_empty());
    }

    #[test]
    fn states_only_move_forward_and_the_furthest_wins() {
        let store = store();
        let reports = validate(&store, "a", vec![report("running"), report("preparing")]).unwrap();
        let changes = status_changes(&store, &reports, 5);
        let [Change::Update { object: Object::Task(task), expected_version: Some(7) }] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(task.status.state, TaskState::Running);
        assert_eq!(task.status.timestamp_ms, 5);
        let back = validate(&store, "a", vec![report("preparing")]).unwrap();
        assert!(status_changes(&store, &back, 5).is_empty());
        let same = validate(&store, "a", vec![report("starting")]).unwrap();
        assert!(status_changes(&store, &same, 5).is_empty(), "nothing new");
    }

    fn with_addresses(state: &str, addresses: &[(&str, &str)]) -> pb::TaskStatus {
        let addresses = addresses
            .iter()
            .map(|(n, a)| pb::TaskAddress { network_id: n.to_string(), address: a.to_string() })
            .collect();
        pb::TaskStatus { addresses, ..report(state) }
    }

    fn updated(changes: &[Change]) -> &Task {
        let [Change::Update { object: Object::Task(task), .. }] = changes else { panic!("{changes:?}") };
        task
    }

    #[test]
    fn addresses_must_be_ipv4_on_the_tasks_networks() {
        let store = store();
        let not_ip = validate(&store, "a", vec![with_addresses("running", &[("n1", "10.0.0.2/24")])]).unwrap_err();
        assert_eq!(not_ip.code(), tonic::Code::InvalidArgument);
        assert!(not_ip.message().contains("updates[0].addresses[0]"), "{}", not_ip.message());
        let v6 = validate(&store, "a", vec![report("running"), with_addresses("running", &[("n1", "fe80::1")])]);
        assert!(v6.unwrap_err().message().contains("updates[1].addresses[0]"));
        let other = with_addresses("running", &[("n1", "10.0.0.2"), ("n2", "10.1.0.2")]);
        let other = validate(&store, "a", vec![other]).unwrap_err();
        assert_eq!(other.code(), tonic::Code::InvalidArgument);
        let message = other.message();
        assert!(message.contains("updates[0].addresses[1]") && message.contains("n2"), "{message}");
        let ok = validate(&store, "a", vec![with_addresses("running", &[("n1", "10.0.0.2")])]).unwrap();
        assert_eq!(ok[0].addresses, BTreeMap::from([("n1".to_string(), "10.0.0.2".to_string())]));
    }

    #[test]
    fn a_task_publishing_ports_reports_its_ingress_address() {
        let mut store = store();
        let ingress = crate::store::Network {
            meta: Meta { id: "in".into(), ..Meta::default() },
            name: "ingress".into(),
            labels: Default::default(),
            subnet: "10.0.0.0/16".into(),
            vni: 4096,
            attachable: false,
            driver: "overlay".into(),
            ingress: true,
        };
        store.networks.insert("in".into(), ingress);
        let both = || with_addresses("running", &[("n1", "10.1.0.2"), ("in", "10.0.0.2")]);
        let refused = validate(&store, "a", vec![both()]).unwrap_err();
        assert!(refused.message().contains("updates[0].addresses[1]"), "no published port, not on ingress");
        let port = crate::store::PortConfig { target: 80, published: 8080, ..Default::default() };
        store.tasks.get_mut("t1").unwrap().spec.endpoint.ports.push(port);
        let ok = validate(&store, "a", vec![both()]).unwrap();
        assert_eq!(ok[0].addresses["in"], "10.0.0.2");
    }

    #[test]
    fn addresses_are_set_kept_when_absent_and_updated_without_a_state_move() {
        let mut store = store();
        let reports = validate(&store, "a", vec![with_addresses("running", &[("n1", "10.0.0.2")])]).unwrap();
        let task = updated(&status_changes(&store, &reports, 5)).clone();
        assert_eq!((task.status.state, task.status.addresses["n1"].as_str()), (TaskState::Running, "10.0.0.2"));
        store.tasks.insert("t1".into(), task);

        let empty = validate(&store, "a", vec![report("running")]).unwrap();
        assert!(status_changes(&store, &empty, 6).is_empty(), "an empty list keeps the known addresses");

        let moved = validate(&store, "a", vec![with_addresses("running", &[("n1", "10.0.0.9")])]).unwrap();
        let task = updated(&status_changes(&store, &moved, 7)).clone();
        assert_eq!((task.status.state, task.status.addresses["n1"].as_str()), (TaskState::Running, "10.0.0.9"));

        let older = validate(&store, "a", vec![with_addresses("starting", &[("n1", "10.0.0.7")])]).unwrap();
        assert!(status_changes(&store, &older, 8).is_empty(), "an older state carries nothing");

        // In one burst, the addresses of an earlier report survive a later one without any.
        let burst =
            validate(&store, "a", vec![with_addresses("running", &[("n1", "10.0.0.3")]), report("complete")]).unwrap();
        let task = updated(&status_changes(&store, &burst, 9)).clone();
        assert_eq!((task.status.state, task.status.addresses["n1"].as_str()), (TaskState::Complete, "10.0.0.3"));
    }

    fn with_health(state: &str, health: &str) -> pb::TaskStatus {
        pb::TaskStatus { health: health.into(), ..report(state) }
    }

    #[test]
    fn health_changes_are_written_while_the_state_stays_running() {
        let mut store = store();
        let bad = validate(&store, "a", vec![with_health("running", "sickly")]).unwrap_err();
        assert!(bad.message().contains("updates[0].health"), "{}", bad.message());

        let reports = validate(&store, "a", vec![with_health("running", "starting")]).unwrap();
        let task = updated(&status_changes(&store, &reports, 5)).clone();
        assert_eq!((task.status.state, task.status.health.as_str()), (TaskState::Running, "starting"));
        store.tasks.insert("t1".into(), task);

        let same = validate(&store, "a", vec![with_health("running", "starting")]).unwrap();
        assert!(status_changes(&store, &same, 6).is_empty(), "nothing new");
        let none = validate(&store, "a", vec![report("running")]).unwrap();
        assert!(status_changes(&store, &none, 6).is_empty(), "no health reported: the known one stays");

        let healthy = validate(&store, "a", vec![with_health("running", "healthy")]).unwrap();
        let task = updated(&status_changes(&store, &healthy, 7)).clone();
        assert_eq!((task.status.state, task.status.health.as_str(), task.status.timestamp_ms), (TaskState::Running, "healthy", 7));
        store.tasks.insert("t1".into(), task);

        // A burst: the health of the report kept (the furthest state, the latest on ties).
        let burst = validate(&store, "a", vec![with_health("running", "unhealthy"), with_health("running", "healthy")]).unwrap();
        assert!(status_changes(&store, &burst, 8).is_empty());
        let failed = validate(&store, "a", vec![with_health("running", "unhealthy"), with_health("failed", "unhealthy")]).unwrap();
        let task = updated(&status_changes(&store, &failed, 9)).clone();
        assert_eq!((task.status.state, task.status.health.as_str()), (TaskState::Failed, "unhealthy"));
    }
}
