//! Helpers shared by the orchestrators: building tasks, desired-state updates, grouping tasks,
//! node eligibility, and conflict-free merging of the stages' changes.

use crate::scheduler::{Constraint, parse_constraints};
use crate::store::{
    Availability, Change, Meta, Node, NodeState, Object, RestartInfo, Service, ServiceSpec, Store, Task, TaskState,
    TaskStatus,
};
use std::collections::{HashMap, HashSet};

/// Where new task ids come from (random on the leader, sequential in tests).
pub trait IdSource {
    fn next_id(&mut self) -> String;
}

impl<F: FnMut() -> String> IdSource for F {
    fn next_id(&mut self) -> String {
        self()
    }
}

/// Changes that must be applied together (a task shut down and its replacement).
pub(crate) type Unit = Vec<Change>;

/// A new PENDING task of `service` in `slot` (0 for global) on `node_id` (global) or wherever
/// the scheduler puts it (`None`).
pub(crate) fn new_task(
    service: &Service,
    slot: u64,
    node_id: Option<String>,
    now_ms: i64,
    ids: &mut dyn IdSource,
) -> Task {
    Task {
        meta: Meta { id: ids.next_id(), ..Meta::default() },
        service_id: service.meta.id.clone(),
        slot,
        node_id,
        desired_state: service.spec.run_state(),
        status: TaskStatus {
            state: TaskState::Pending,
            message: "created".into(),
            timestamp_ms: now_ms,
            ..TaskStatus::default()
        },
        spec: service.spec.clone(),
        job_iteration: service.job_iteration,
        restart: RestartInfo::default(),
    }
}

/// A unit creating `task`.
pub(crate) fn create(task: Task) -> Unit {
    vec![Change::Create(Object::Task(task))]
}

/// The update setting `task`'s desired state, refused if the task changed meanwhile.
pub(crate) fn set_desired(task: &Task, desired: TaskState) -> Change {
    let mut updated = task.clone();
    updated.desired_state = desired;
    Change::Update { object: Object::Task(updated), expected_version: Some(task.meta.version) }
}

/// Units shutting down each of `tasks`.
pub(crate) fn shut_down<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Vec<Unit> {
    tasks.into_iter().map(|t| vec![set_desired(t, TaskState::Shutdown)]).collect()
}

/// Which slot a task fills: its service and slot, and for global tasks (slot 0) its node.
pub(crate) type SlotKey<'a> = (&'a str, u64, &'a str);

pub(crate) fn slot_key(task: &Task) -> SlotKey<'_> {
    let node = if task.slot == 0 { task.node_id.as_deref().unwrap_or_default() } else { "" };
    (task.service_id.as_str(), task.slot, node)
}

/// The tasks of each service, in id order.
pub(crate) fn tasks_by_service(store: &Store) -> HashMap<&str, Vec<&Task>> {
    let mut map: HashMap<&str, Vec<&Task>> = HashMap::new();
    for task in store.tasks.values() {
        map.entry(task.service_id.as_str()).or_default().push(task);
    }
    map
}

/// The tasks of one service.
pub(crate) fn tasks_of<'a>(store: &'a Store, service_id: &str) -> Vec<&'a Task> {
    store.tasks.values().filter(|t| t.service_id == service_id).collect()
}

/// The constraints of a spec, parsed once. Unparsable constraints (the API refuses them at
/// create) judge no node: nothing is created for them and nothing is evicted because of them.
pub(crate) struct Fit(Option<Vec<Constraint>>);

impl Fit {
    pub fn of(spec: &ServiceSpec) -> Self {
        Fit(parse_constraints(&spec.placement.constraints).ok())
    }

    /// Whether `node` satisfies the constraints; `None` when they do not parse.
    pub fn satisfied_by(&self, node: &Node) -> Option<bool> {
        self.0.as_ref().map(|constraints| constraints.iter().all(|c| c.matches(node)))
    }

    /// Whether a new task may be created for `node` (global modes): ready, active and
    /// satisfying the constraints.
    pub fn accepts_new_tasks(&self, node: &Node) -> bool {
        node.state == NodeState::Ready
            && node.availability == Availability::Active
            && self.satisfied_by(node) == Some(true)
    }
}

/// Whether `task` no longer holds its node: it ended, never got there, or the node is gone or
/// down (its agent will be told to drop it when it comes back).
pub(crate) fn is_finished(store: &Store, task: &Task) -> bool {
    if !task.status.state.holds_node() {
        return true;
    }
    match task.node_id.as_deref().and_then(|id| store.nodes.get(id)) {
        None => true,
        Some(node) => node.state == NodeState::Down,
    }
}

/// Merges the units of successive stages into one batch. A unit touching a task that an earlier
/// unit already touches is dropped (two updates of one task would conflict in the store); the
/// next round, on the updated store, takes it up again.
#[derive(Default)]
pub(crate) struct Plan {
    touched: HashSet<String>,
    pub changes: Vec<Change>,
}

impl Plan {
    pub fn extend(&mut self, units: Vec<Unit>) {
        for unit in units {
            if unit.iter().any(|change| self.touched.contains(change_id(change))) {
                continue;
            }
            for change in &unit {
                self.touched.insert(change_id(change).to_string());
            }
            self.changes.extend(unit);
        }
    }
}

fn change_id(change: &Change) -> &str {
    match change {
        Change::Create(object) | Change::Update { object, .. } => &object.meta().id,
        Change::Delete { id, .. } => id,
    }
}
