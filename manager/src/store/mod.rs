//! The typed store: the desired state every manager holds, changed only by applying committed
//! Raft commands. [`Store::apply`] is a pure function of the store and a command, so every replica
//! that applies the same log ends in the same state.

mod index;
mod task_status;
mod types;

pub use index::TasksByNode;
pub use task_status::TaskStatusUpdate;
pub use types::*;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A write proposed through Raft. `now_ms` is the proposer's clock, used for timestamps so that
/// replicas stay identical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub now_ms: i64,
    pub op: Op,
}

/// What a command does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates the cluster: settings and the first manager. Refused once settings exist.
    Bootstrap { settings: Box<ClusterSettings>, first_manager: Box<Node> },
    /// Generic writes, applied all or nothing.
    Batch(Vec<Change>),
    /// Read-modify-write of a node in the state machine, so concurrent updates never conflict.
    UpdateNode {
        id: String,
        availability: Option<Availability>,
        labels_add: BTreeMap<String, String>,
        labels_remove: Vec<String>,
    },
    /// Sets a node's role (promote / demote).
    SetNodeRole { id: String, role: NodeRole },
    /// Replaces the secret of the worker or manager join token.
    RotateJoinToken { role: NodeRole, secret: String },
    /// Independent operations the leader proposed together (one log entry for many concurrent
    /// client writes); each is applied on its own and gets its own response.
    Multi(Vec<Op>),
    // New variants go last: postcard encodes the variant index, so existing logs keep decoding.
    /// Creates a network: the store checks the name, checks `subnet` (or, when empty, allocates
    /// one from the cluster's address pool) and allocates the VNI, so that concurrent creates
    /// never collide. Nothing is written when it is refused.
    CreateNetwork(Box<Network>),
    /// Removes a network, its leases and virtual IPs; refused while a service uses it (for the
    /// ingress network: while a service publishes ports).
    RemoveNetwork { id: String },
    /// Sets the observed status of tasks (agents' reports), all or nothing: each task must
    /// still have the version its update was computed on. Carries the status alone where a
    /// `Batch` would carry each whole task (with its copy of the service spec): status reports
    /// are about half of all writes when many tasks start.
    SetTaskStatuses(Vec<TaskStatusUpdate>),
}


impl Op {
    /// How many object changes the operation makes at most (a `Batch` its changes, a `Multi`
    /// the sum of its operations', any other one): the measure of an entry's size.
    pub fn weight(&self) -> usize {
        match self {
            Op::Batch(changes) => changes.len().max(1),
            Op::SetTaskStatuses(updates) => updates.len().max(1),
            Op::Multi(ops) => ops.iter().map(Op::weight).sum(),
            _ => 1,
        }
    }
}

/// One generic write. `expected_version`, when given, must equal the stored object's version
/// (optimistic concurrency for read-modify-write loops).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Create(Object),
    Update { object: Object, expected_version: Option<u64> },
    Delete { kind: Kind, id: String, expected_version: Option<u64> },
}

/// The outcome of applying a command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Ok,
    /// The node after an `UpdateNode` or `SetNodeRole`.
    Node(Node),
    /// The command was refused; nothing changed.
    Rejected(StoreError),
    /// One response per operation of an `Op::Multi`, in order.
    Multi(Vec<Response>),
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    #[error("the cluster is already initialised")]
    AlreadyBootstrapped,
    #[error("the cluster is not initialised")]
    NotBootstrapped,
    #[error("an Op::Multi cannot contain another")]
    NestedMulti,
    #[error("{kind} {id} not found")]
    NotFound { kind: String, id: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: String, id: String },
    #[error("{kind} name {name:?} is already in use")]
    NameInUse { kind: String, name: String },
    #[error("{kind} {id} changed since it was read (version {expected} expected, {actual} found)")]
    VersionConflict { kind: String, id: String, expected: u64, actual: u64 },
    /// An invalid value; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The object is still used by others, named in the message.
    #[error("{0}")]
    InUse(String),
    /// No address or identifier is left to allocate.
    #[error("{0}")]
    Exhausted(String),
}

/// A change to one object, as seen by watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Created(Object),
    /// The object after the change.
    Updated(Object),
    /// The object as it was.
    Deleted(Object),
}

/// The desired state. Tables are keyed by object id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    pub settings: Option<ClusterSettings>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    pub networks: BTreeMap<String, Network>,
    pub secrets: BTreeMap<String, Blob>,
    pub configs: BTreeMap<String, Blob>,
    pub subnet_leases: BTreeMap<String, SubnetLease>,
    /// Service virtual IPs, keyed `<service id>.<network id>`.
    pub virtual_ips: BTreeMap<String, VirtualIp>,
}

impl Store {
    /// Applies a committed command at log `index`. On `Rejected` nothing changed and no events
    /// are returned.
    pub fn apply(&mut self, index: u64, command: &Command) -> (Response, Vec<Event>) {
        match &command.op {
            Op::Multi(ops) => {
                let mut responses = Vec::with_capacity(ops.len());
                let mut events = Vec::new();
                for op in ops {
                    let (response, op_events) = match op {
                        Op::Multi(_) => (Response::Rejected(StoreError::NestedMulti), Vec::new()),
                        op => self.apply_op(index, command.now_ms, op),
                    };
                    responses.push(response);
                    events.extend(op_events);
                }
                (Response::Multi(responses), events)
            }
            op => self.apply_op(index, command.now_ms, op),
        }
    }

    /// Applies one operation; on a refusal nothing changed and no events are returned.
    fn apply_op(&mut self, index: u64, now: i64, op: &Op) -> (Response, Vec<Event>) {
        let mut events = Vec::new();
        let result = match op {
            Op::Multi(_) => Err(StoreError::NestedMulti),
            Op::Bootstrap { settings, first_manager } => {
                self.bootstrap(index, now, settings, first_manager, &mut events)
            }
            Op::Batch(changes) => self.apply_batch(index, now, changes, &mut events),
            Op::UpdateNode { id, availability, labels_add, labels_remove } => {
                self.modify_node(index, now, id, &mut events, |node| {
                    if let Some(availability) = availability {
                        node.availability = *availability;
                    }
                    for key in labels_remove {
                        node.labels.remove(key);
                    }
                    for (key, value) in labels_add {
                        node.labels.insert(key.clone(), value.clone());
                    }
                })
            }
            Op::SetNodeRole { id, role } => {
                self.modify_node(index, now, id, &mut events, |node| node.role = *role)
            }
            Op::CreateNetwork(network) => self.create_network(index, now, network, &mut events),
            Op::RemoveNetwork { id } => self.remove_network(id, &mut events),
            Op::SetTaskStatuses(updates) => self.set_task_statuses(index, now, updates, &mut events),
            Op::RotateJoinToken { role, secret } => match self.settings.as_mut() {
                None => Err(StoreError::NotBootstrapped),
                Some(settings) => {
                    match role {
                        NodeRole::Worker => settings.worker_token_secret = secret.clone(),
                        NodeRole::Manager => settings.manager_token_secret = secret.clone(),
                    }
                    Ok(Response::Ok)
                }
            },
        };
        match result {
            Ok(response) => (response, events),
            Err(error) => (Response::Rejected(error), Vec::new()),
        }
    }

    fn bootstrap(
        &mut self,
        index: u64,
        now: i64,
        settings: &ClusterSettings,
        first_manager: &Node,
        events: &mut Vec<Event>,
    ) -> Result<Response, StoreError> {
        if self.settings.is_some() {
            return Err(StoreError::AlreadyBootstrapped);
        }
        self.settings = Some(settings.clone());
        let mut node = first_manager.clone();
        stamp_created(&mut node.meta, index, now);
        self.nodes.insert(node.meta.id.clone(), node.clone());
        events.push(Event::Created(Object::Node(node)));
        Ok(Response::Ok)
    }

    fn create_network(
        &mut self,
        index: u64,
        now: i64,
        network: &Network,
        events: &mut Vec<Event>,
    ) -> Result<Response, StoreError> {
        let settings = self.settings.as_ref().ok_or(StoreError::NotBootstrapped)?;
        if self.networks.contains_key(&network.meta.id) {
            return Err(StoreError::AlreadyExists { kind: Kind::Network.as_str().into(), id: network.meta.id.clone() });
        }
        if self.networks.values().any(|n| n.name == network.name) {
            return Err(StoreError::NameInUse { kind: Kind::Network.as_str().into(), name: network.name.clone() });
        }
        if network.ingress && let Some(ingress) = self.networks.values().find(|n| n.ingress) {
            return Err(StoreError::Invalid(format!("there is already an ingress network ({})", ingress.name)));
        }
        let taken = crate::ipam::network_subnets(self);
        let hosts = crate::ipam::host_ips(self);
        let subnet = if network.subnet.is_empty() {
            let pool = &settings.address_pool;
            let net = crate::ipam::validate_pool(&pool.pool, pool.mask_length).map_err(StoreError::Invalid)?;
            let taken: Vec<_> = taken.into_iter().map(|(_, s)| s).collect();
            crate::ipam::allocate_subnet(net, pool.mask_length, &taken, &hosts).ok_or_else(|| {
                StoreError::Exhausted(format!(
                    "the default address pool {} has no free /{} left: give a --subnet",
                    pool.pool, pool.mask_length
                ))
            })?
        } else {
            crate::ipam::check_subnet(&network.subnet, "spec.subnet", &taken, &hosts)
                .map_err(|e| StoreError::Invalid(format!("invalid network spec: {e}")))?
        };
        let vni = crate::ipam::allocate_vni(self.networks.values().map(|n| n.vni))
            .ok_or_else(|| StoreError::Exhausted("no VxLAN network identifier is left".into()))?;
        let mut network = network.clone();
        network.subnet = subnet.to_string();
        network.vni = vni;
        if network.driver.is_empty() {
            network.driver = "overlay".into();
        }
        stamp_created(&mut network.meta, index, now);
        self.networks.insert(network.meta.id.clone(), network.clone());
        events.push(Event::Created(Object::Network(network)));
        Ok(Response::Ok)
    }

    fn remove_network(&mut self, id: &str, events: &mut Vec<Event>) -> Result<Response, StoreError> {
        let network = self.networks.get(id).ok_or_else(|| not_found(Kind::Network, id))?;
        if network.ingress {
            let mut publishers: Vec<&str> = self
                .services
                .values()
                .filter(|s| !s.spec.endpoint.ports.is_empty())
                .map(|s| s.name.as_str())
                .collect();
            publishers.sort_unstable();
            if !publishers.is_empty() {
                return Err(StoreError::InUse(format!(
                    "network {}: the routing mesh is in use by service{} {} (published ports): remove {} or unpublish {} ports first",
                    network.name,
                    if publishers.len() == 1 { "" } else { "s" },
                    publishers.join(", "),
                    if publishers.len() == 1 { "it" } else { "them" },
                    if publishers.len() == 1 { "its" } else { "their" },
                )));
            }
        }
        let users: Vec<&str> = self
            .services
            .values()
            .filter(|s| s.spec.networks.iter().any(|a| a.network_id == id))
            .map(|s| s.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(StoreError::InUse(format!(
                "network {} is in use by service{} {}: remove {} or detach {} first (service update --network-rm)",
                network.name,
                if users.len() == 1 { "" } else { "s" },
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" },
                if users.len() == 1 { "it" } else { "them" },
            )));
        }
        let leases: Vec<String> =
            self.subnet_leases.values().filter(|l| l.network_id == id).map(|l| l.meta.id.clone()).collect();
        for lease in leases {
            if let Some(lease) = self.subnet_leases.remove(&lease) {
                events.push(Event::Deleted(Object::SubnetLease(lease)));
            }
        }
        let vips: Vec<String> =
            self.virtual_ips.values().filter(|v| v.network_id == id).map(|v| v.meta.id.clone()).collect();
        for vip in vips {
            if let Some(vip) = self.virtual_ips.remove(&vip) {
                events.push(Event::Deleted(Object::VirtualIp(vip)));
            }
        }
        if let Some(network) = self.networks.remove(id) {
            events.push(Event::Deleted(Object::Network(network)));
        }
        Ok(Response::Ok)
    }

    /// A service may only name networks that exist, and publish no port another service holds
    /// (see [`crate::ipam::ports::check_conflicts`]).
    fn check_references(&self, object: &Object) -> Result<(), StoreError> {
        if let Object::Service(service) = object {
            for (i, attachment) in service.spec.networks.iter().enumerate() {
                if !self.networks.contains_key(&attachment.network_id) {
                    return Err(StoreError::Invalid(format!(
                        "invalid service spec: spec.networks[{i}]: network {} not found",
                        attachment.network_id
                    )));
                }
            }
            let files = [("secrets", "secret", &service.spec.secrets, &self.secrets), ("configs", "config", &service.spec.configs, &self.configs)];
            for (field, kind, refs, table) in files {
                for (i, file) in refs.iter().enumerate() {
                    if !table.contains_key(&file.id) {
                        return Err(StoreError::Invalid(format!("invalid service spec: spec.{field}[{i}].source: {kind} {} not found", file.id)));
                    }
                }
            }
            crate::ipam::ports::check_conflicts(self, &service.meta.id, &service.spec)
                .map_err(|e| StoreError::Invalid(format!("invalid service spec: {e}")))?;
        }
        Ok(())
    }

    /// A secret or config cannot go while a service uses it (tasks of older specs may still hold
    /// it: agents keep what they received until those tasks go).
    fn check_unused(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        let (name, uses): (&str, fn(&Service, &str) -> bool) = match kind {
            Kind::Secret => (self.secrets.get(id).map_or(id, |b| b.name.as_str()), |s, id| s.spec.secrets.iter().any(|f| f.id == id)),
            Kind::Config => (self.configs.get(id).map_or(id, |b| b.name.as_str()), |s, id| s.spec.configs.iter().any(|f| f.id == id)),
            _ => return Ok(()),
        };
        let mut users: Vec<&str> = self.services.values().filter(|s| uses(s, id)).map(|s| s.name.as_str()).collect();
        users.sort_unstable();
        if users.is_empty() {
            return Ok(());
        }
        Err(StoreError::InUse(format!(
            "{} {name} is in use by service{} {}: remove {} or update {} first",
            kind.as_str(),
            if users.len() == 1 { "" } else { "s" },
            users.join(", "),
            if users.len() == 1 { "it" } else { "them" },
            if users.len() == 1 { "it" } else { "them" },
        )))
    }

    fn modify_node(
        &mut self,
        index: u64,
        now: i64,
        id: &str,
        events: &mut Vec<Event>,
        modify: impl FnOnce(&mut Node),
    ) -> Result<Response, StoreError> {
        let node = self.nodes.get_mut(id).ok_or_else(|| not_found(Kind::Node, id))?;
        modify(node);
        node.meta.version = index;
        node.meta.updated_at_ms = now;
        events.push(Event::Updated(Object::Node(node.clone())));
        Ok(Response::Node(node.clone()))
    }

    /// Applies every change or none: changes are applied in order with an undo log, and on the
    /// first refusal the earlier ones are undone.
    fn apply_batch(
        &mut self,
        index: u64,
        now: i64,
        changes: &[Change],
        events: &mut Vec<Event>,
    ) -> Result<Response, StoreError> {
        let mut undo: Vec<(Kind, String, Option<Object>)> = Vec::new();
        for change in changes {
            if let Err(error) = self.apply_change(index, now, change, &mut undo, events) {
                for (kind, id, previous) in undo.into_iter().rev() {
                    match previous {
                        Some(object) => {
                            self.put(object);
                        }
                        None => {
                            self.remove(kind, &id);
                        }
                    }
                }
                events.clear();
                return Err(error);
            }
        }
        Ok(Response::Ok)
    }

    fn apply_change(
        &mut self,
        index: u64,
        now: i64,
        change: &Change,
        undo: &mut Vec<(Kind, String, Option<Object>)>,
        events: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        match change {
            Change::Create(object) => {
                let kind = object.kind();
                let id = object.meta().id.clone();
                if self.meta_of(kind, &id).is_some() {
                    return Err(StoreError::AlreadyExists { kind: kind.as_str().into(), id });
                }
                if let Some(name) = self.name_taken_by_other(object) {
                    return Err(StoreError::NameInUse { kind: kind.as_str().into(), name });
                }
                self.check_references(object)?;
                let mut object = object.clone();
                stamp_created(object.meta_mut(), index, now);
                undo.push((kind, id, None));
                self.put(object.clone());
                events.push(Event::Created(object));
            }
            Change::Update { object, expected_version } => {
                let kind = object.kind();
                let id = object.meta().id.clone();
                let current = self.meta_of(kind, &id).ok_or_else(|| not_found(kind, &id))?;
                check_version(kind, &id, *expected_version, current.version)?;
                let created_at = current.created_at_ms;
                if let Some(name) = self.name_taken_by_other(object) {
                    return Err(StoreError::NameInUse { kind: kind.as_str().into(), name });
                }
                self.check_references(object)?;
                let mut object = object.clone();
                let meta = object.meta_mut();
                meta.version = index;
                meta.created_at_ms = created_at;
                meta.updated_at_ms = now;
                undo.push((kind, id, self.put(object.clone())));
                events.push(Event::Updated(object));
            }
            Change::Delete { kind, id, expected_version } => {
                let current = self.meta_of(*kind, id).ok_or_else(|| not_found(*kind, id))?;
                check_version(*kind, id, *expected_version, current.version)?;
                self.check_unused(*kind, id)?;
                let removed = self.remove(*kind, id);
                if let Some(object) = &removed {
                    events.push(Event::Deleted(object.clone()));
                }
                undo.push((*kind, id.clone(), removed));
            }
        }
        Ok(())
    }

    /// The object of `kind` with `id`, if any.
    pub fn get(&self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Node => self.nodes.get(id).cloned().map(Object::Node),
            Kind::Service => self.services.get(id).cloned().map(Object::Service),
            Kind::Task => self.tasks.get(id).cloned().map(Object::Task),
            Kind::Network => self.networks.get(id).cloned().map(Object::Network),
            Kind::Secret => self.secrets.get(id).cloned().map(Object::Secret),
            Kind::Config => self.configs.get(id).cloned().map(Object::Config),
            Kind::SubnetLease => self.subnet_leases.get(id).cloned().map(Object::SubnetLease),
            Kind::VirtualIp => self.virtual_ips.get(id).cloned().map(Object::VirtualIp),
        }
    }

    /// The meta of the object of `kind` with `id`, if any (no copy of the object, unlike
    /// [`get`](Self::get): applying a batch of 1,000 task updates looks each one up).
    fn meta_of(&self, kind: Kind, id: &str) -> Option<&Meta> {
        match kind {
            Kind::Node => self.nodes.get(id).map(|o| &o.meta),
            Kind::Service => self.services.get(id).map(|o| &o.meta),
            Kind::Task => self.tasks.get(id).map(|o| &o.meta),
            Kind::Network => self.networks.get(id).map(|o| &o.meta),
            Kind::Secret => self.secrets.get(id).map(|o| &o.meta),
            Kind::Config => self.configs.get(id).map(|o| &o.meta),
            Kind::SubnetLease => self.subnet_leases.get(id).map(|o| &o.meta),
            Kind::VirtualIp => self.virtual_ips.get(id).map(|o| &o.meta),
        }
    }

    /// Stores `object`, returning the one it replaced.
    fn put(&mut self, object: Object) -> Option<Object> {
        let id = object.meta().id.clone();
        match object {
            Object::Node(o) => self.nodes.insert(id, o).map(Object::Node),
            Object::Service(o) => self.services.insert(id, o).map(Object::Service),
            Object::Task(o) => self.tasks.insert(id, o).map(Object::Task),
            Object::Network(o) => self.networks.insert(id, o).map(Object::Network),
            Object::Secret(o) => self.secrets.insert(id, o).map(Object::Secret),
            Object::Config(o) => self.configs.insert(id, o).map(Object::Config),
            Object::SubnetLease(o) => self.subnet_leases.insert(id, o).map(Object::SubnetLease),
            Object::VirtualIp(o) => self.virtual_ips.insert(id, o).map(Object::VirtualIp),
        }
    }

    fn remove(&mut self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Node => self.nodes.remove(id).map(Object::Node),
            Kind::Service => self.services.remove(id).map(Object::Service),
            Kind::Task => self.tasks.remove(id).map(Object::Task),
            Kind::Network => self.networks.remove(id).map(Object::Network),
            Kind::Secret => self.secrets.remove(id).map(Object::Secret),
            Kind::Config => self.configs.remove(id).map(Object::Config),
            Kind::SubnetLease => self.subnet_leases.remove(id).map(Object::SubnetLease),
            Kind::VirtualIp => self.virtual_ips.remove(id).map(Object::VirtualIp),
        }
    }

    /// For named kinds, the name of `object` if another object of its kind already uses it.
    fn name_taken_by_other(&self, object: &Object) -> Option<String> {
        let id = &object.meta().id;
        let taken = |name: &String, mut names: Box<dyn Iterator<Item = (&String, &String)> + '_>| {
            names.any(|(other_id, other_name)| other_id != id && other_name == name).then(|| name.clone())
        };
        match object {
            Object::Service(o) => taken(&o.name, Box::new(self.services.iter().map(|(k, v)| (k, &v.name)))),
            Object::Network(o) => taken(&o.name, Box::new(self.networks.iter().map(|(k, v)| (k, &v.name)))),
            Object::Secret(o) => taken(&o.name, Box::new(self.secrets.iter().map(|(k, v)| (k, &v.name)))),
            Object::Config(o) => taken(&o.name, Box::new(self.configs.iter().map(|(k, v)| (k, &v.name)))),
            Object::Node(_) | Object::Task(_) | Object::SubnetLease(_) | Object::VirtualIp(_) => None,
        }
    }

    /// Finds a node by exact id, hostname, or unique id prefix.
    pub fn find_node(&self, reference: &str) -> Result<&Node, String> {
        if let Some(node) = self.nodes.get(reference) {
            return Ok(node);
        }
        let by_name: Vec<&Node> = self.nodes.values().filter(|n| n.hostname == reference).collect();
        let candidates = if by_name.is_empty() {
            self.nodes.values().filter(|n| !reference.is_empty() && n.meta.id.starts_with(reference)).collect()
        } else {
            by_name
        };
        match candidates.as_slice() {
            [node] => Ok(node),
            [] => Err(format!("node {reference} not found")),
            _ => Err(format!("node reference {reference} is ambiguous ({} nodes match)", candidates.len())),
        }
    }
}

fn stamp_created(meta: &mut Meta, index: u64, now: i64) {
    meta.version = index;
    meta.created_at_ms = now;
    meta.updated_at_ms = now;
}

fn not_found(kind: Kind, id: &str) -> StoreError {
    StoreError::NotFound { kind: kind.as_str().into(), id: id.into() }
}

fn check_version(kind: Kind, id: &str, expected: Option<u64>, actual: u64) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != actual => Err(StoreError::VersionConflict {
            kind: kind.as_str().into(),
            id: id.into(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
