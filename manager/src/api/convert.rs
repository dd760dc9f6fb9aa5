//! Store objects to API messages.

use crate::store::Node;
use proto::v1 as pb;

/// What the Raft group says about one manager.
#[derive(Clone, Debug, Default)]
pub struct ManagerView {
    pub leader: bool,
    pub reachable: bool,
    pub voter: bool,
    pub raft_addr: String,
}

pub fn node_to_proto(node: &Node, manager: Option<&ManagerView>) -> pb::Node {
    pb::Node {
        id: node.meta.id.clone(),
        hostname: node.hostname.clone(),
        role: node.role.as_str().to_string(),
        availability: node.availability.as_str().to_string(),
        labels: node.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        addr: node.addr.clone(),
        state: node.state.as_str().to_string(),
        manager: manager.map(|view| pb::ManagerStatus {
            leader: view.leader,
            reachability: reachability(view.reachable).to_string(),
            raft_addr: view.raft_addr.clone(),
            membership: membership(view.voter).to_string(),
        }),
        version: node.meta.version,
        created_at_ms: node.meta.created_at_ms,
        updated_at_ms: node.meta.updated_at_ms,
    }
}

pub fn reachability(reachable: bool) -> &'static str {
    if reachable { "reachable" } else { "unreachable" }
}

pub fn membership(voter: bool) -> &'static str {
    if voter { "voter" } else { "learner" }
}
