//! Address management for overlay networks, as pure functions over the store: the cluster's
//! default address pool, a network's subnet (allocated from the pool or given by the user, never
//! overlapping another network nor the hosts' own addresses), its VNI, and the per-host subnet
//! leases (a /24 of the network for every node where a task on that network is assigned or
//! running; released when no such task is left), and the services' virtual IPs (from the
//! network's last /24, which is never leased to a host). The ingress network (the routing mesh)
//! is on top leased to every ready node while a service publishes a port in ingress mode, and
//! its services get no virtual IP on it.

pub mod ports;

use crate::store::{
    Change, EndpointMode, Kind, Meta, Network, NodeState, Object, ServiceSpec, Store, SubnetLease, TaskState, VirtualIp,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The prefix length of a per-host lease: every host gets a /24 of each network it uses.
pub const LEASE_PREFIX: u8 = 24;
/// The longest prefix of a network: room for at least one per-host /24 besides the last /24,
/// which holds the services' virtual IPs.
pub const MAX_NETWORK_PREFIX: u8 = LEASE_PREFIX - 1;
/// The first VNI handed out (lower ones are left for other uses, as Docker does).
pub const FIRST_VNI: u32 = 4096;
/// The largest VxLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The default address pool networks are carved from when no `--subnet` is given.
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
/// The default prefix length of a network carved from the pool: room for 255 per-host /24s
/// and the virtual-IP /24.
pub const DEFAULT_MASK_LENGTH: u8 = 16;

/// An IPv4 network: an address whose host bits are zero, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: u32,
    prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

impl Ipv4Net {
    /// The network `addr/prefix`; `None` if the prefix is over 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        let addr = u32::from(addr);
        (prefix <= 32 && addr & !mask(prefix) == 0).then_some(Ipv4Net { addr, prefix })
    }

    /// Parses `a.b.c.d/n`, refusing host bits (naming the network that was probably meant).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) =
            text.split_once('/').ok_or_else(|| format!("{text:?} is not a CIDR (expected a.b.c.d/n, e.g. 10.20.0.0/16)"))?;
        let addr: Ipv4Addr =
            addr.parse().map_err(|_| format!("{text:?} is not a CIDR: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{text:?} is not a CIDR: the prefix length must be 0 to 32"))?;
        Ipv4Net::new(addr, prefix).ok_or_else(|| {
            let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
            format!("{text:?} has host bits set (did you mean {network}/{prefix}?)")
        })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    fn last(&self) -> u32 {
        self.addr | !mask(self.prefix)
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.addr <= other.last() && other.addr <= self.last()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.addr
    }

    /// The subnets of length `prefix` inside this network, in address order (none if `prefix`
    /// is shorter than this network's).
    pub fn subnets(&self, prefix: u8) -> impl Iterator<Item = Ipv4Net> + use<> {
        let (base, own) = (self.addr, self.prefix);
        let count: u64 = if prefix < own || prefix > 32 { 0 } else { 1u64 << (prefix - own) };
        let step: u64 = if prefix >= 32 { 1 } else { 1u64 << (32 - prefix) };
        (0..count).map(move |i| Ipv4Net { addr: (u64::from(base) + i * step) as u32, prefix })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// Checks a default address pool and the prefix length of the networks carved from it.
pub fn validate_pool(pool: &str, mask_length: u8) -> Result<Ipv4Net, String> {
    let net = Ipv4Net::parse(pool).map_err(|e| format!("default address pool: {e}"))?;
    if mask_length < net.prefix || mask_length > MAX_NETWORK_PREFIX {
        return Err(format!(
            "default address pool mask length: {mask_length} is invalid: between the pool's /{} and /{MAX_NETWORK_PREFIX} (a network holds per-host /{LEASE_PREFIX} leases and a /{LEASE_PREFIX} of virtual IPs)",
            net.prefix
        ));
    }
    Ok(net)
}

/// The IPv4 address in a node's advertised address (`ip:port` for managers, `ip` for workers).
pub fn node_ip(addr: &str) -> Option<Ipv4Addr> {
    let ip = addr.parse::<SocketAddr>().map(|a| a.ip()).or_else(|_| addr.parse::<IpAddr>()).ok()?;
    match ip {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    }
}

/// The hosts' own addresses, as the node records give them.
pub fn host_ips(store: &Store) -> Vec<Ipv4Addr> {
    store.nodes.values().filter_map(|n| node_ip(&n.addr)).collect()
}

/// The subnets of the stored networks (unparsable ones, which the store never writes, are skipped).
pub fn network_subnets(store: &Store) -> Vec<(String, Ipv4Net)> {
    store.networks.values().filter_map(|n| Ipv4Net::parse(&n.subnet).ok().map(|s| (n.name.clone(), s))).collect()
}

/// The first subnet of length `mask_length` in `pool` that overlaps no `taken` subnet and holds
/// no host address; `None` when the pool is exhausted.
pub fn allocate_subnet(pool: Ipv4Net, mask_length: u8, taken: &[Ipv4Net], hosts: &[Ipv4Addr]) -> Option<Ipv4Net> {
    pool.subnets(mask_length).find(|candidate| {
        !taken.iter().any(|t| t.overlaps(candidate)) && !hosts.iter().any(|h| candidate.contains(*h))
    })
}

/// Validates a user's subnet: a well-formed CIDR, large enough for per-host /24 leases and the
/// virtual-IP /24 (at least a /23), not overlapping another network (`taken`: name and subnet)
/// nor holding a host address. Errors name the field.
pub fn check_subnet(text: &str, field: &str, taken: &[(String, Ipv4Net)], hosts: &[Ipv4Addr]) -> Result<Ipv4Net, String> {
    let net = Ipv4Net::parse(text.trim()).map_err(|e| format!("{field}: {e}"))?;
    if net.prefix > MAX_NETWORK_PREFIX {
        return Err(too_small(field, net));
    }
    if let Some((name, other)) = taken.iter().find(|(_, other)| other.overlaps(&net)) {
        return Err(format!("{field}: {net} overlaps network {name} ({other})"));
    }
    if let Some(host) = hosts.iter().find(|h| net.contains(**h)) {
        return Err(format!("{field}: {net} holds the address of a host of the cluster ({host})"));
    }
    Ok(net)
}

/// The error for a network smaller than a /[`MAX_NETWORK_PREFIX`], naming `field`.
pub fn too_small(field: &str, net: Ipv4Net) -> String {
    format!(
        "{field}: {net} is too small: a network needs at least a /{MAX_NETWORK_PREFIX} (each host gets a /{LEASE_PREFIX} of it, and its last /{LEASE_PREFIX} holds the services' virtual IPs)"
    )
}

/// The lowest VNI from [`FIRST_VNI`] that no network uses; `None` when all are taken.
pub fn allocate_vni(used: impl IntoIterator<Item = u32>) -> Option<u32> {
    let used: BTreeSet<u32> = used.into_iter().collect();
    (FIRST_VNI..=MAX_VNI).find(|v| !used.contains(v))
}

/// The first per-host /24 of `network` that no `taken` lease holds, never its last /24 (the
/// virtual IPs' range).
pub fn next_lease(network: Ipv4Net, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let vips = vip_range(network);
    network.subnets(LEASE_PREFIX).filter(|c| Some(*c) != vips).find(|c| !taken.iter().any(|t| t.overlaps(c)))
}

/// The last /24 of `network`, where its services' virtual IPs come from; `None` for a network
/// smaller than a /24.
pub fn vip_range(network: Ipv4Net) -> Option<Ipv4Net> {
    (network.prefix <= LEASE_PREFIX)
        .then(|| Ipv4Net { addr: network.last() & mask(LEASE_PREFIX), prefix: LEASE_PREFIX })
}

/// The first address of `network`'s virtual-IP range (without its .0 and .255) not in `taken`.
pub fn next_vip(network: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let range = vip_range(network)?;
    (range.addr + 1..range.last()).map(Ipv4Addr::from).find(|a| !taken.contains(a))
}

/// The id of the virtual IP of `service_id` on `network_id`: one per pair, by construction.
pub fn vip_id(service_id: &str, network_id: &str) -> String {
    format!("{service_id}.{network_id}")
}

/// The id of the lease of `network_id` on `node_id`: one lease per pair, by construction.
pub fn lease_id(network_id: &str, node_id: &str) -> String {
    format!("{network_id}.{node_id}")
}

/// The ingress network (the routing mesh), if there is one.
pub fn ingress_network(store: &Store) -> Option<&Network> {
    store.networks.values().find(|n| n.ingress)
}

/// The ids of the networks a task of `spec` is on: the spec's networks, then the ingress
/// network when the spec publishes any port (ingress or host mode) and does not list it.
pub fn task_network_ids(store: &Store, spec: &ServiceSpec) -> Vec<String> {
    let mut ids: Vec<String> = spec.networks.iter().map(|a| a.network_id.clone()).collect();
    if !spec.endpoint.ports.is_empty()
        && let Some(ingress) = ingress_network(store)
        && !ids.contains(&ingress.meta.id)
    {
        ids.push(ingress.meta.id.clone());
    }
    ids
}

/// The (network id, node id) pairs that need a lease: a live task assigned to the node (from
/// ASSIGNED up to RUNNING) is on the network (see [`task_network_ids`]), and both still exist;
/// and, while any service publishes a port in ingress mode, the ingress network on every READY
/// node (so that every node accepts the published ports).
pub fn needed_leases(store: &Store) -> BTreeSet<(String, String)> {
    let mut needed: BTreeSet<(String, String)> = store
        .tasks
        .values()
        .filter(|t| t.is_live() && t.status.state >= TaskState::Assigned && t.status.state <= TaskState::Running)
        .filter_map(|t| t.node_id.as_ref().map(|node| (t, node)))
        .filter(|(_, node)| store.nodes.contains_key(*node))
        .flat_map(|(t, node)| {
            task_network_ids(store, &t.spec)
                .into_iter()
                .filter(|id| store.networks.contains_key(id))
                .map(move |id| (id, node.clone()))
        })
        .collect();
    if let Some(ingress) = ingress_network(store)
        && ports::any_ingress_port(store)
    {
        let ready = store.nodes.values().filter(|n| n.state == NodeState::Ready);
        needed.extend(ready.map(|n| (ingress.meta.id.clone(), n.meta.id.clone())));
    }
    needed
}

/// The lease changes that bring the store in line with [`needed_leases`]: a new lease (the next
/// free /24 of the network) for every pair without one, and the release of every lease no task
/// needs. A network with no free /24 left gets no lease (its tasks' nodes wait for one).
pub fn plan_leases(store: &Store) -> Vec<Change> {
    let needed = needed_leases(store);
    let mut changes = Vec::new();
    let mut taken: BTreeMap<&str, Vec<Ipv4Net>> = BTreeMap::new();
    let mut held: BTreeSet<(String, String)> = BTreeSet::new();
    for lease in store.subnet_leases.values() {
        let pair = (lease.network_id.clone(), lease.node_id.clone());
        if needed.contains(&pair) {
            if let Ok(subnet) = Ipv4Net::parse(&lease.subnet) {
                taken.entry(lease.network_id.as_str()).or_default().push(subnet);
            }
            held.insert(pair);
        } else {
            changes.push(Change::Delete {
                kind: Kind::SubnetLease,
                id: lease.meta.id.clone(),
                expected_version: Some(lease.meta.version),
            });
        }
    }
    for (network_id, node_id) in needed.difference(&held) {
        let Some(network) = store.networks.get(network_id) else { continue };
        let Ok(subnet) = Ipv4Net::parse(&network.subnet) else { continue };
        let in_use = taken.entry(network.meta.id.as_str()).or_default();
        let Some(lease) = next_lease(subnet, in_use) else {
            tracing::warn!(network = %network.name, node = %node_id, "no free per-host subnet left in {subnet}");
            continue;
        };
        in_use.push(lease);
        changes.push(Change::Create(Object::SubnetLease(SubnetLease {
            meta: Meta { id: lease_id(network_id, node_id), ..Meta::default() },
            network_id: network_id.clone(),
            node_id: node_id.clone(),
            subnet: lease.to_string(),
        })));
    }
    changes
}

/// The (service id, network id) pairs that need a virtual IP: a service in endpoint mode vip
/// attached to a network that exists and is not the ingress network, keyed by [`vip_id`].
pub fn needed_vips(store: &Store) -> BTreeMap<String, (&str, &str)> {
    store
        .services
        .values()
        .filter(|s| s.spec.endpoint.mode == EndpointMode::Vip)
        .flat_map(|s| {
            s.spec
                .networks
                .iter()
                .filter(|a| store.networks.get(&a.network_id).is_some_and(|n| !n.ingress))
                .map(move |a| (vip_id(&s.meta.id, &a.network_id), (s.meta.id.as_str(), a.network_id.as_str())))
        })
        .collect()
}

/// The virtual IP changes that bring the store in line with [`needed_vips`]: a new one (the
/// first free address of the network's range) for every pair without one, and the deletion of
/// every one no longer needed (service removed or switched to dnsrr, network detached). An
/// address released here is not handed out again in the same plan. A network whose range is
/// full gets no more virtual IPs.
pub fn plan_vips(store: &Store) -> Vec<Change> {
    let needed = needed_vips(store);
    let mut changes = Vec::new();
    let mut taken: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let mut held: BTreeSet<&str> = BTreeSet::new();
    for vip in store.virtual_ips.values() {
        let address = vip.address.parse::<Ipv4Addr>().ok();
        if let Some(address) = address {
            taken.entry(vip.network_id.as_str()).or_default().insert(address);
        }
        let in_range = address.is_some_and(|a| {
            store
                .networks
                .get(&vip.network_id)
                .and_then(|n| Ipv4Net::parse(&n.subnet).ok())
                .and_then(vip_range)
                .is_some_and(|range| range.contains(a))
        });
        let wanted = needed.get(&vip.meta.id) == Some(&(vip.service_id.as_str(), vip.network_id.as_str()));
        if wanted && in_range {
            held.insert(&vip.meta.id);
        } else {
            changes.push(Change::Delete {
                kind: Kind::VirtualIp,
                id: vip.meta.id.clone(),
                expected_version: Some(vip.meta.version),
            });
        }
    }
    for (id, (service_id, network_id)) in &needed {
        if held.contains(id.as_str()) {
            continue;
        }
        let Some(network) = store.networks.get(*network_id) else { continue };
        let Ok(subnet) = Ipv4Net::parse(&network.subnet) else { continue };
        let in_use = taken.entry(network_id).or_default();
        let Some(address) = next_vip(subnet, in_use) else {
            tracing::warn!(network = %network.name, service = %service_id, "no free virtual IP left in {subnet}");
            continue;
        };
        in_use.insert(address);
        changes.push(Change::Create(Object::VirtualIp(VirtualIp {
            meta: Meta { id: id.clone(), ..Meta::default() },
            service_id: service_id.to_string(),
            network_id: network_id.to_string(),
            address: address.to_string(),
        })));
    }
    changes
}

#[cfg(test)]
mod tests;
