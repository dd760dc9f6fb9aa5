//! A small simulated cluster for the tests of the orchestrators and the scheduler: a store
//! changed only through `Store::apply`, the control loops, and agents that do what they are
//! told at once (agents of DOWN nodes say nothing).

use super::reconcile_all;
use crate::scheduler::{decisions_to_changes, schedule, unassigned_tasks};
use crate::store::{
    Availability, Change, Command, Kind, Meta, Node, NodeResources, NodeRole, NodeState, Object, Op, Response, Service,
    ServiceMode, ServiceSpec, Store, Task, TaskState,
};
use std::collections::BTreeMap;

pub(crate) struct Sim {
    pub store: Store,
    pub now: i64,
    index: u64,
    next_id: u64,
}

/// A replicated service spec without restart delay.
pub(crate) fn replicated(replicas: u64) -> ServiceSpec {
    let mut spec =
        ServiceSpec { image: "nginx".into(), mode: ServiceMode::Replicated { replicas }, ..ServiceSpec::default() };
    spec.restart.delay_ms = 0;
    spec
}

/// A global service spec without restart delay.
pub(crate) fn global() -> ServiceSpec {
    ServiceSpec { mode: ServiceMode::Global, ..replicated(0) }
}

impl Sim {
    pub fn new() -> Self {
        Sim { store: Store::default(), now: 1_000_000, index: 0, next_id: 0 }
    }

    /// Applies one batch, which must be accepted.
    pub fn apply(&mut self, changes: Vec<Change>) -> usize {
        let count = changes.len();
        if count > 0 {
            self.index += 1;
            let command = Command { now_ms: self.now, op: Op::Batch(changes) };
            let (response, _) = self.store.apply(self.index, &command);
            assert_eq!(response, Response::Ok);
        }
        count
    }

    pub fn add_node(&mut self, hostname: &str) -> String {
        self.add_node_with(hostname, NodeResources::default(), &[])
    }

    pub fn add_node_with(&mut self, hostname: &str, resources: NodeResources, labels: &[(&str, &str)]) -> String {
        let id = format!("{:016x}", self.store.nodes.len() + 1);
        let node = Node {
            meta: Meta { id: id.clone(), ..Meta::default() },
            hostname: hostname.into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            addr: String::new(),
            state: NodeState::Ready,
            resources,
        };
        self.apply(vec![Change::Create(Object::Node(node))]);
        id
    }

    pub fn add_service(&mut self, name: &str, spec: ServiceSpec) -> String {
        let id = format!("svc-{name}");
        let service = Service {
            meta: Meta { id: id.clone(), ..Meta::default() },
            name: name.into(),
            labels: BTreeMap::new(),
            spec,
            previous_spec: None,
            job_iteration: 0,
            update_status: None,
        };
        self.apply(vec![Change::Create(Object::Service(service))]);
        id
    }

    pub fn update_service(&mut self, id: &str, change: impl FnOnce(&mut Service)) {
        let mut service = self.store.services[id].clone();
        change(&mut service);
        self.apply(vec![Change::Update { object: Object::Service(service), expected_version: None }]);
    }

    pub fn remove_service(&mut self, id: &str) {
        self.apply(vec![Change::Delete { kind: Kind::Service, id: id.into(), expected_version: None }]);
    }

    pub fn update_node(&mut self, id: &str, change: impl FnOnce(&mut Node)) {
        let mut node = self.store.nodes[id].clone();
        change(&mut node);
        self.apply(vec![Change::Update { object: Object::Node(node), expected_version: None }]);
    }

    /// Reports an observed state, as an agent would.
    pub fn set_state(&mut self, task_id: &str, state: TaskState) {
        let mut task = self.store.tasks[task_id].clone();
        task.status.state = state;
        task.status.timestamp_ms = self.now;
        self.apply(vec![Change::Update { object: Object::Task(task), expected_version: None }]);
    }

    /// One round of the orchestrators; the number of changes.
    pub fn reconcile(&mut self) -> usize {
        let mut counter = self.next_id;
        let mut ids = || {
            counter += 1;
            format!("task-{counter:06}")
        };
        let changes = reconcile_all(&self.store, self.now, &mut ids);
        self.next_id = counter;
        self.apply(changes)
    }

    /// One round of the scheduler; the number of changes.
    pub fn schedule(&mut self) -> usize {
        let pending = unassigned_tasks(&self.store);
        let decisions = schedule(&self.store, &pending);
        let changes = decisions_to_changes(&self.store, &decisions, self.now);
        self.apply(changes)
    }

    /// The agents start what should run and stop what should not.
    pub fn agents(&mut self) -> usize {
        let mut changes = Vec::new();
        for task in self.store.tasks.values() {
            let Some(node) = task.node_id.as_deref().and_then(|id| self.store.nodes.get(id)) else { continue };
            let state = task.status.state;
            let next = if node.state == NodeState::Down || !state.holds_node() {
                continue;
            } else if task.desired_state >= TaskState::Shutdown {
                TaskState::Shutdown
            } else if matches!(task.desired_state, TaskState::Running | TaskState::Complete)
                && state < TaskState::Running
            {
                TaskState::Running
            } else {
                continue;
            };
            let mut task = task.clone();
            task.status.state = next;
            task.status.timestamp_ms = self.now;
            changes.push(Change::Update { expected_version: Some(task.meta.version), object: Object::Task(task) });
        }
        self.apply(changes)
    }

    /// Runs orchestrators, scheduler and agents until nothing changes.
    pub fn converge(&mut self) {
        for _ in 0..100 {
            if self.reconcile() + self.schedule() + self.agents() == 0 {
                return;
            }
        }
        panic!("the cluster did not converge in 100 rounds");
    }

    /// The tasks of a service, by slot then age.
    pub fn tasks(&self, service_id: &str) -> Vec<Task> {
        let mut tasks: Vec<Task> = self.store.tasks.values().filter(|t| t.service_id == service_id).cloned().collect();
        tasks.sort_by_key(|t| (t.slot, t.meta.created_at_ms, t.meta.id.clone()));
        tasks
    }

    /// The live RUNNING tasks of a service, by slot.
    pub fn running(&self, service_id: &str) -> Vec<Task> {
        let mut tasks = self.tasks(service_id);
        tasks.retain(|t| t.is_live() && t.status.state == TaskState::Running);
        tasks
    }

    /// How many live RUNNING tasks of a service each node (by hostname) has.
    pub fn running_per_node(&self, service_id: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for task in self.running(service_id) {
            let node = task.node_id.as_deref().and_then(|id| self.store.nodes.get(id));
            *counts.entry(node.map(|n| n.hostname.clone()).unwrap_or_default()).or_default() += 1;
        }
        counts
    }
}
