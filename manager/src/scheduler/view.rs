//! The scheduler's view of the cluster, computed once per batch: per node, what is reserved,
//! which host ports are held and how many tasks run there (in all and per service), plus the
//! filters and the reasons a node is refused.

use super::constraint::Constraint;
use crate::store::{Availability, Node, NodeState, Protocol, ServiceSpec, Store, Task};
use std::collections::{BTreeMap, HashMap};

/// One node and what its tasks hold.
pub(crate) struct NodeView<'a> {
    pub node: &'a Node,
    pub cpus: u64,
    pub memory: u64,
    pub ports: Vec<(u16, Protocol)>,
    /// Live tasks (desired READY..=COMPLETE) holding the node.
    pub tasks: u32,
}

/// Every node, and the live tasks per service and node.
pub(crate) struct ClusterView<'a> {
    pub nodes: Vec<NodeView<'a>>,
    pub by_id: HashMap<&'a str, usize>,
    pub per_service: HashMap<&'a str, HashMap<usize, u32>>,
}

/// Why a node cannot take a task. The order is the order of the filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reject {
    Down,
    NotReady,
    Drained,
    Paused,
    Constraints,
    MaxReplicas,
    Cpu,
    Memory,
    Port(u16, Protocol),
}

impl<'a> ClusterView<'a> {
    /// One pass over the nodes and the tasks of the store.
    pub fn new(store: &'a Store) -> Self {
        let mut nodes = Vec::with_capacity(store.nodes.len());
        let mut by_id = HashMap::with_capacity(store.nodes.len());
        for (id, node) in &store.nodes {
            by_id.insert(id.as_str(), nodes.len());
            nodes.push(NodeView { node, cpus: 0, memory: 0, ports: Vec::new(), tasks: 0 });
        }
        let mut view = ClusterView { nodes, by_id, per_service: HashMap::new() };
        for task in store.tasks.values() {
            let Some(node_id) = task.node_id.as_deref() else { continue };
            let Some(&index) = view.by_id.get(node_id) else { continue };
            if task.status.state.holds_node() {
                view.hold(index, task);
            }
        }
        view
    }

    /// Records that `task` holds node `index`: its reservations, host ports and counts.
    pub fn hold(&mut self, index: usize, task: &'a Task) {
        let reservations = task.spec.resources.reservations;
        let node = &mut self.nodes[index];
        node.cpus = node.cpus.saturating_add(reservations.nano_cpus);
        node.memory = node.memory.saturating_add(reservations.memory_bytes);
        node.ports.extend(task.spec.host_ports());
        if task.is_live() {
            node.tasks += 1;
            *self.per_service.entry(task.service_id.as_str()).or_default().entry(index).or_default() += 1;
        }
    }

    /// The live tasks of `service_id` on node `index`.
    pub fn service_tasks(&self, service_id: &str, index: usize) -> u32 {
        self.per_service.get(service_id).and_then(|m| m.get(&index)).copied().unwrap_or(0)
    }

    /// The filters that depend only on the node and the spec: state, availability, constraints.
    pub fn static_check(&self, index: usize, constraints: &[Constraint]) -> Result<(), Reject> {
        let node = self.nodes[index].node;
        match node.state {
            NodeState::Ready => {}
            NodeState::Down => return Err(Reject::Down),
            NodeState::Unknown => return Err(Reject::NotReady),
        }
        match node.availability {
            Availability::Active => {}
            Availability::Drain => return Err(Reject::Drained),
            Availability::Pause => return Err(Reject::Paused),
        }
        if constraints.iter().all(|c| c.matches(node)) { Ok(()) } else { Err(Reject::Constraints) }
    }

    /// The filters that change as tasks are placed: max replicas, reservations, host ports.
    pub fn dynamic_check(&self, index: usize, service_id: &str, spec: &ServiceSpec) -> Result<(), Reject> {
        let max = spec.placement.max_replicas_per_node;
        if max > 0 && u64::from(self.service_tasks(service_id, index)) >= max {
            return Err(Reject::MaxReplicas);
        }
        let view = &self.nodes[index];
        let capacity = view.node.resources;
        let wanted = spec.resources.reservations;
        if wanted.nano_cpus > 0
            && capacity.nano_cpus > 0
            && view.cpus.saturating_add(wanted.nano_cpus) > capacity.nano_cpus
        {
            return Err(Reject::Cpu);
        }
        if wanted.memory_bytes > 0
            && capacity.memory_bytes > 0
            && view.memory.saturating_add(wanted.memory_bytes) > capacity.memory_bytes
        {
            return Err(Reject::Memory);
        }
        if let Some(port) = spec.host_ports().find(|port| view.ports.contains(port)) {
            return Err(Reject::Port(port.0, port.1));
        }
        Ok(())
    }

    /// The spread key of node `index` for a service: fewest tasks of the service, then fewest
    /// tasks in all, then the node's order.
    pub fn spread_key(&self, index: usize, service_id: &str) -> (u32, u32, usize) {
        (self.service_tasks(service_id, index), self.nodes[index].tasks, index)
    }
}

/// Counts of refused nodes by reason, rendered as Swarm-like messages.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rejections(BTreeMap<Reject, usize>);

impl Rejections {
    pub fn add(&mut self, reject: Reject) {
        *self.0.entry(reject).or_default() += 1;
    }

    /// `no suitable node (2 nodes drained; 1 node has insufficient memory)`.
    pub fn message(&self) -> String {
        if self.0.is_empty() {
            return "no suitable node (the cluster has no nodes)".into();
        }
        let parts: Vec<String> = self.0.iter().map(|(reject, &n)| describe(*reject, n)).collect();
        format!("no suitable node ({})", parts.join("; "))
    }
}

fn describe(reject: Reject, n: usize) -> String {
    let nodes = if n == 1 { "1 node".to_string() } else { format!("{n} nodes") };
    let (has, do_) = if n == 1 { ("has", "does") } else { ("have", "do") };
    match reject {
        Reject::Down => format!("{nodes} down"),
        Reject::NotReady => format!("{nodes} not ready"),
        Reject::Drained => format!("{nodes} drained"),
        Reject::Paused => format!("{nodes} paused"),
        Reject::Constraints => format!("{nodes} {do_} not satisfy the constraints"),
        Reject::MaxReplicas => format!("{nodes} reached the max replicas per node"),
        Reject::Cpu => format!("{nodes} {has} insufficient CPU"),
        Reject::Memory => format!("{nodes} {has} insufficient memory"),
        Reject::Port(port, protocol) => {
            format!("{nodes} {has} host port {port}/{} in use", protocol.as_str())
        }
    }
}
