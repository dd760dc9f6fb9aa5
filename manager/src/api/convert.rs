//! Store objects to API messages.

use crate::store::{Node, Service, Store};
use proto::v1 as pb;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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

/// A task's addresses (network id -> IPv4 address), in network id order.
pub fn addresses_to_proto(addresses: &BTreeMap<String, String>) -> Vec<pb::TaskAddress> {
    addresses
        .iter()
        .map(|(network_id, address)| pb::TaskAddress { network_id: network_id.clone(), address: address.clone() })
        .collect()
}

/// The virtual IPs `service` holds, in the order of its spec's networks.
pub fn virtual_ips_to_proto(store: &Store, service: &Service) -> Vec<pb::TaskAddress> {
    service
        .spec
        .networks
        .iter()
        .filter_map(|a| store.virtual_ips.get(&crate::ipam::vip_id(&service.meta.id, &a.network_id)))
        .map(|vip| pb::TaskAddress { network_id: vip.network_id.clone(), address: vip.address.clone() })
        .collect()
}

/// A task's reported addresses in store form, checked: each must be an IPv4 address (no prefix
/// length) on a network the task is on (`attached`: network ids, see
/// [`crate::ipam::task_network_ids`]), named once. Errors name the entry as `{field}[j]`.
pub fn addresses_from_proto(
    addresses: &[pb::TaskAddress],
    attached: &[String],
    field: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut checked = BTreeMap::new();
    for (j, entry) in addresses.iter().enumerate() {
        let address: Ipv4Addr = entry
            .address
            .parse()
            .map_err(|_| format!("{field}[{j}].address: {:?} is not an IPv4 address", entry.address))?;
        if !attached.contains(&entry.network_id) {
            return Err(format!(
                "{field}[{j}].network_id: the task is not attached to network {:?}",
                entry.network_id
            ));
        }
        if checked.insert(entry.network_id.clone(), address.to_string()).is_some() {
            return Err(format!("{field}[{j}].network_id: network {} is named twice", entry.network_id));
        }
    }
    Ok(checked)
}
