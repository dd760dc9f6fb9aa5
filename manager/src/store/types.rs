//! The objects of the desired state. Every object has [`Meta`]: an id, a version (the Raft log
//! index of the write that last changed it) and timestamps taken from the proposing leader's
//! clock, so that every replica applies the same bytes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod service;
mod task;

pub use service::*;
pub use task::*;

/// Identity and bookkeeping common to every object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    /// The Raft log index of the write that last changed the object.
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    Manager,
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }
    }
}

/// Whether the scheduler may place tasks on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    /// New tasks may be placed here.
    Active,
    /// Running tasks stay, no new ones arrive.
    Pause,
    /// Tasks are moved elsewhere.
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            _ => None,
        }
    }
}

/// What the managers last observed of a node's agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// No agent session seen yet.
    Unknown,
    Ready,
    /// Heartbeats stopped.
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// A host of the cluster (manager or worker). Its id is the 16-hex-digit form of its Raft node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub meta: Meta,
    pub hostname: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
    /// Managers: the host:port their API and Raft listen on. Workers: their underlay address.
    pub addr: String,
    pub state: NodeState,
    /// What the node offers to tasks, as its agent reports it.
    #[serde(default)]
    pub resources: NodeResources,
}

/// The capacity of a node. 0 means not reported: the scheduler does not check that resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// CPU in billionths of a core.
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

/// Settings of the whole cluster, created once by `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub cluster_id: String,
    pub created_at_ms: i64,
    /// The root CA. The key is replicated so that any manager can sign join requests (as in
    /// Swarm without autolock); it never leaves the managers.
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub worker_token_secret: String,
    pub manager_token_secret: String,
    /// How long node certificates stay valid.
    pub node_cert_validity_secs: u64,
    /// Where network subnets come from when none is given (chosen at init).
    #[serde(default)]
    pub address_pool: AddressPool,
}

/// The default address pool: networks without `--subnet` get the first free `/mask_length` of
/// `pool` that overlaps no other network and no host address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    /// An IPv4 CIDR.
    pub pool: String,
    pub mask_length: u8,
}

impl Default for AddressPool {
    fn default() -> Self {
        AddressPool { pool: crate::ipam::DEFAULT_POOL.into(), mask_length: crate::ipam::DEFAULT_MASK_LENGTH }
    }
}

/// An overlay network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub meta: Meta,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// An IPv4 CIDR, never overlapping another network nor a host's address.
    pub subnet: String,
    /// The VxLAN network identifier, unique among networks.
    pub vni: u32,
    /// Whether standalone containers may attach (services always may).
    #[serde(default)]
    pub attachable: bool,
    /// Always "overlay" for now.
    #[serde(default)]
    pub driver: String,
    /// The routing mesh for published ports (the network `init` creates, named "ingress").
    #[serde(default)]
    pub ingress: bool,
}

/// A secret or a config (same shape; secrets are encrypted at rest with the secrets issue).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub meta: Meta,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

/// A per-host subnet of a network, leased to one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetLease {
    pub meta: Meta,
    pub network_id: String,
    pub node_id: String,
    pub subnet: String,
}

/// A service's virtual IP on one of its networks (endpoint mode vip), taken from the network's
/// last /24, which is never leased to a host. Its id is `<service id>.<network id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIp {
    pub meta: Meta,
    pub service_id: String,
    pub network_id: String,
    /// An IPv4 address, without prefix length.
    pub address: String,
}

/// Any object of the store, for generic writes and the watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    Node(Node),
    Service(Service),
    Task(Task),
    Network(Network),
    Secret(Blob),
    Config(Blob),
    SubnetLease(SubnetLease),
    // New variants go last: postcard encodes the variant index.
    VirtualIp(VirtualIp),
}

/// The kinds of objects, naming the store's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Node,
    Service,
    Task,
    Network,
    Secret,
    Config,
    SubnetLease,
    // New variants go last: postcard encodes the variant index.
    VirtualIp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
            Kind::Secret => "secret",
            Kind::Config => "config",
            Kind::SubnetLease => "subnet lease",
            Kind::VirtualIp => "virtual ip",
        }
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Network(_) => Kind::Network,
            Object::Secret(_) => Kind::Secret,
            Object::Config(_) => Kind::Config,
            Object::SubnetLease(_) => Kind::SubnetLease,
            Object::VirtualIp(_) => Kind::VirtualIp,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Object::Node(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::Task(o) => &o.meta,
            Object::Network(o) => &o.meta,
            Object::Secret(o) | Object::Config(o) => &o.meta,
            Object::SubnetLease(o) => &o.meta,
            Object::VirtualIp(o) => &o.meta,
        }
    }

    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Object::Node(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut o.meta,
            Object::Network(o) => &mut o.meta,
            Object::Secret(o) | Object::Config(o) => &mut o.meta,
            Object::SubnetLease(o) => &mut o.meta,
            Object::VirtualIp(o) => &mut o.meta,
        }
    }
}

/// The textual id of a Raft node id.
pub fn node_id_string(raft_id: u64) -> String {
    format!("{raft_id:016x}")
}

/// The Raft node id of a textual node id, if it is one.
pub fn parse_node_id(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}
