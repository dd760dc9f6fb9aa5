//! The network calls of the `Control` service: create, get, list and remove overlay networks
//! (by id, unique id prefix or name), and the resolution of a service's network targets to ids.
//! Subnets and VNIs are allocated by the store when the create is applied (see
//! [`crate::store::Op::CreateNetwork`]), so concurrent creates never collide.

use super::service_spec::valid_service_name;
use crate::consensus::Consensus;
use crate::ids::new_id;
use crate::store::{Meta, Network, Op, ServiceSpec, Store};
use proto::v1 as pb;
use std::collections::HashMap;
use tonic::Status;

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid network spec: {field}: {reason}"))
}

/// Finds a network by exact id, exact name, or unique id prefix.
pub fn find_network<'a>(store: &'a Store, reference: &str) -> Result<&'a Network, Status> {
    if let Some(network) = store.networks.get(reference) {
        return Ok(network);
    }
    if let Some(network) = store.networks.values().find(|n| n.name == reference) {
        return Ok(network);
    }
    let matches: Vec<&Network> =
        store.networks.values().filter(|n| !reference.is_empty() && n.meta.id.starts_with(reference)).collect();
    match matches.as_slice() {
        [network] => Ok(network),
        [] => Err(Status::not_found(format!("network {reference} not found"))),
        _ => Err(Status::invalid_argument(format!(
            "network reference {reference} is ambiguous ({} networks match)",
            matches.len()
        ))),
    }
}

/// Turns the targets of `spec.networks` (names, ids or id prefixes) into network ids. Errors
/// name the field; a network named twice is refused.
pub fn resolve_attachments(store: &Store, spec: &mut ServiceSpec) -> Result<(), Status> {
    let mut seen: Vec<String> = Vec::new();
    for (i, attachment) in spec.networks.iter_mut().enumerate() {
        let field = format!("spec.networks[{i}]");
        let network = find_network(store, &attachment.network_id).map_err(|status| {
            Status::invalid_argument(format!("invalid service spec: {field}: {}", status.message()))
        })?;
        if let Some(j) = seen.iter().position(|id| *id == network.meta.id) {
            return Err(Status::invalid_argument(format!(
                "invalid service spec: {field}: network {} is already attached by spec.networks[{j}]",
                network.name
            )));
        }
        seen.push(network.meta.id.clone());
        attachment.network_id = network.meta.id.clone();
    }
    Ok(())
}

/// Validates a network spec and builds the network to create (subnet and VNI still to allocate
/// when empty / 0: the store does it).
pub fn network_from_spec(spec: &pb::NetworkSpec) -> Result<Network, Status> {
    if !valid_service_name(&spec.name) {
        return Err(invalid(
            "spec.name",
            format!("{:?} is invalid: 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", spec.name),
        ));
    }
    if let Some(key) = spec.labels.keys().find(|k| k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace)) {
        return Err(invalid("spec.labels", format!("label key {key:?} is invalid: non-empty, without '=' or spaces")));
    }
    match spec.driver.as_str() {
        "" | "overlay" => {}
        other => return Err(invalid("spec.driver", format!("{other:?} is not supported: only overlay"))),
    }
    if !spec.subnet.is_empty() {
        // Checked again against the other networks when the store applies the create.
        crate::ipam::Ipv4Net::parse(spec.subnet.trim()).map_err(|e| invalid("spec.subnet", e))?;
        if let Ok(net) = crate::ipam::Ipv4Net::parse(spec.subnet.trim())
            && net.prefix() > crate::ipam::MAX_NETWORK_PREFIX
        {
            return Err(Status::invalid_argument(format!(
                "invalid network spec: {}",
                crate::ipam::too_small("spec.subnet", net)
            )));
        }
    }
    Ok(Network {
        meta: Meta { id: new_id(), ..Meta::default() },
        name: spec.name.clone(),
        labels: spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        subnet: spec.subnet.trim().to_string(),
        vni: 0,
        attachable: spec.attachable,
        driver: "overlay".into(),
        ingress: false,
    })
}

/// The API form of `network`, with its leases and the services attached to it (for the ingress
/// network: the services publishing ports too).
pub fn network_to_proto(store: &Store, network: &Network) -> pb::Network {
    let leases = store
        .subnet_leases
        .values()
        .filter(|l| l.network_id == network.meta.id)
        .map(|l| pb::NetworkLease {
            node_id: l.node_id.clone(),
            node_hostname: store.nodes.get(&l.node_id).map(|n| n.hostname.clone()).unwrap_or_default(),
            subnet: l.subnet.clone(),
        })
        .collect();
    let services = store
        .services
        .values()
        .filter(|s| crate::ipam::task_network_ids(store, &s.spec).contains(&network.meta.id))
        .map(|s| s.name.clone())
        .collect();
    pb::Network {
        id: network.meta.id.clone(),
        name: network.name.clone(),
        labels: network.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        subnet: network.subnet.clone(),
        vni: network.vni,
        attachable: network.attachable,
        driver: network.driver.clone(),
        scope: "swarm".into(),
        version: network.meta.version,
        created_at_ms: network.meta.created_at_ms,
        updated_at_ms: network.meta.updated_at_ms,
        leases,
        services,
        ingress: network.ingress,
    }
}

pub async fn create(consensus: &Consensus, request: pb::CreateNetworkRequest) -> Result<pb::Network, Status> {
    let spec = request.spec.ok_or_else(|| invalid("spec", "required"))?;
    let network = network_from_spec(&spec)?;
    let id = network.meta.id.clone();
    consensus.write(Op::CreateNetwork(Box::new(network))).await?;
    tracing::info!(network = %id, "network created");
    consensus
        .read(|store| store.networks.get(&id).map(|n| network_to_proto(store, n)))
        .await?
        .ok_or_else(|| Status::not_found(format!("network {id} was removed meanwhile")))
}

pub async fn get(consensus: &Consensus, request: pb::GetNetworkRequest) -> Result<pb::Network, Status> {
    consensus.read(|store| find_network(store, &request.reference).map(|n| network_to_proto(store, n))).await?
}

pub async fn list(consensus: &Consensus, request: pb::ListNetworksRequest) -> Result<pb::ListNetworksResponse, Status> {
    let filters = request.filters;
    for key in filters.keys() {
        if !matches!(key.as_str(), "id" | "name" | "label") {
            return Err(Status::invalid_argument(format!("unknown filter {key:?}: use id, name or label")));
        }
    }
    let networks = consensus
        .read(|store| {
            store
                .networks
                .values()
                .filter(|n| network_matches(n, &filters))
                .map(|n| network_to_proto(store, n))
                .collect()
        })
        .await?;
    Ok(pb::ListNetworksResponse { networks })
}

fn network_matches(network: &Network, filters: &HashMap<String, String>) -> bool {
    filters.iter().all(|(key, value)| match key.as_str() {
        "id" => network.meta.id.starts_with(value.as_str()),
        "name" => network.name.starts_with(value.as_str()),
        "label" => match value.split_once('=') {
            Some((k, v)) => network.labels.get(k).is_some_and(|actual| actual == v),
            None => network.labels.contains_key(value),
        },
        _ => false,
    })
}

pub async fn remove(consensus: &Consensus, request: pb::RemoveNetworkRequest) -> Result<pb::RemoveNetworkResponse, Status> {
    let network = consensus.read(|store| find_network(store, &request.reference).cloned()).await??;
    let id = network.meta.id.clone();
    consensus.write(Op::RemoveNetwork { id: id.clone() }).await?;
    tracing::info!(network = %id, "network removed");
    Ok(pb::RemoveNetworkResponse { id })
}

#[cfg(test)]
mod tests;
