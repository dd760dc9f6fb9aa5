//! The overlay data plane on one host, flannel-style, through netlink (rtnetlink).
//!
//! Layout, per overlay network on a host, all inside a network namespace of its own (isolation
//! between networks, Docker's way):
//! - a bridge (`br0`) holding the host subnet's gateway address (e.g. `10.0.1.1/24`); container
//!   veths are its ports;
//! - a VxLAN device (`vxlan0`: VNI, UDP 4789, `local` = the host's underlay address, learning off,
//!   MTU = underlay MTU - 50, a deterministic MAC derived from the underlay address, and the /32
//!   address `<subnet>.0`). It is created in the underlay namespace (where its UDP socket must
//!   live) and then moved into the network's namespace. It is *not* a bridge port: traffic between
//!   hosts is routed (flannel's L3 layout), so no broadcast or ARP ever crosses hosts;
//! - per remote host: a route `<remote subnet> via <remote subnet>.0 dev vxlan0 onlink`, a permanent
//!   neighbour `<remote subnet>.0 -> remote VTEP MAC`, and an FDB entry `remote VTEP MAC -> dst
//!   remote underlay IP`. These are reconciled as a set ([`plan_remotes`] is the pure part).
//!
//! All calls block the calling thread (each runs its netlink work on a short-lived thread that has
//! entered the target namespace with `setns`); call them from `spawn_blocking` in async code.

pub mod lb;
pub mod mesh;
mod nl;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use nl::{
    attach_container, bind_in_netns, create_named_netns, delete_named_netns, detach_container,
    detach_veth, ensure_network, link_has_address, observe_remotes, reconcile_remotes,
    teardown_network, underlay_mtu,
};

/// Name of the bridge inside a network's namespace.
pub const BRIDGE_NAME: &str = "br0";
/// Name of the VxLAN device inside a network's namespace.
pub const VXLAN_NAME: &str = "vxlan0";
/// The IANA VxLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// VxLAN over IPv4 costs 50 bytes (outer IP 20 + UDP 8 + VxLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// An IPv4 prefix (`10.0.1.0/24`). The address is kept as given; [`Subnet::network`] masks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet> {
        if prefix > 30 {
            return Err(Error::Invalid(format!(
                "subnet prefix /{prefix} leaves no host addresses"
            )));
        }
        Ok(Subnet { addr, prefix }.normalized())
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }

    fn normalized(self) -> Subnet {
        Subnet {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    /// The network address (`10.0.1.0`): flannel puts it, as a /32, on the VxLAN device, and
    /// remote hosts route this subnet via it.
    pub fn network(&self) -> Ipv4Addr {
        self.normalized().addr
    }

    /// The gateway (first host address, `10.0.1.1`), held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Subnet> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| Error::Invalid(format!("not a CIDR: {s}")))?;
        let addr = a
            .parse()
            .map_err(|_| Error::Invalid(format!("not an IPv4 address: {a}")))?;
        let prefix = p
            .parse()
            .map_err(|_| Error::Invalid(format!("not a prefix length: {p}")))?;
        Subnet::new(addr, prefix)
    }
}

/// The VTEP MAC of a host, derived from its underlay address (locally administered, unicast), so
/// that every host can compute every other host's entries without asking.
pub fn vtep_mac(underlay_ip: Ipv4Addr) -> [u8; 6] {
    let o = underlay_ip.octets();
    [0x02, 0x56, o[0], o[1], o[2], o[3]]
}

/// The MAC of a network's bridge on a host, derived from its gateway address (locally
/// administered, unicast; distinct from [`vtep_mac`]).
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A network namespace, given by the path of its nsfs file (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub type NetnsPath = PathBuf;

/// One overlay network on this host.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The network's namespace (must exist; see [`create_named_netns`]).
    pub netns: NetnsPath,
    /// The namespace holding the underlay address; `None` = the caller's process namespace.
    pub underlay_netns: Option<NetnsPath>,
    pub vni: u32,
    /// This host's subnet of the network (its lease).
    pub subnet: Subnet,
    /// This host's underlay address (the VxLAN `local` address).
    pub underlay_ip: Ipv4Addr,
    /// MTU of the underlay; the overlay gets `underlay_mtu - 50`.
    pub underlay_mtu: u32,
}

impl NetworkConfig {
    pub fn overlay_mtu(&self) -> u32 {
        self.underlay_mtu - VXLAN_OVERHEAD
    }

    pub fn vtep_mac(&self) -> [u8; 6] {
        vtep_mac(self.underlay_ip)
    }

    /// Temporary name of the VxLAN device in the underlay namespace, before the move.
    fn staging_vxlan_name(&self) -> String {
        format!("ovx{}", self.vni)
    }

    fn validate(&self) -> Result<()> {
        if self.vni == 0 || self.vni >= 1 << 24 {
            return Err(Error::Invalid(format!(
                "VNI {} out of range 1..2^24",
                self.vni
            )));
        }
        if self.underlay_mtu < 576 + VXLAN_OVERHEAD {
            return Err(Error::Invalid(format!(
                "underlay MTU {} too small",
                self.underlay_mtu
            )));
        }
        Ok(())
    }
}

/// A container's attachment to a network on this host.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The container's network namespace.
    pub container_netns: NetnsPath,
    /// Name of the veth end in the network's namespace (a bridge port), unique per network on the
    /// host, at most 13 characters (the peer's temporary name appends `_c`).
    pub host_ifname: String,
    /// Name inside the container (`eth0`).
    pub container_ifname: String,
    /// The container's address, from the host's subnet.
    pub address: Ipv4Addr,
    /// Destinations routed through the gateway (the whole network, for a container on several
    /// networks); empty: a default route through it.
    pub routes: Vec<Subnet>,
}

/// A remote host's share of a network: what this host needs to reach its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteHost {
    pub subnet: Subnet,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

impl RemoteHost {
    /// A remote host whose VTEP MAC follows [`vtep_mac`].
    pub fn new(subnet: Subnet, underlay_ip: Ipv4Addr) -> RemoteHost {
        RemoteHost {
            subnet: subnet.normalized(),
            underlay_ip,
            vtep_mac: vtep_mac(underlay_ip),
        }
    }
}

/// Entries seen on the VxLAN device of a network (see [`observe_remotes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRemotes {
    /// Routes through the VxLAN device: destination -> gateway.
    pub routes: BTreeMap<Subnet, Ipv4Addr>,
    /// Permanent neighbours on the VxLAN device: IP -> MAC.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// FDB entries on the VxLAN device with a destination: MAC -> underlay IP.
    pub fdb: BTreeMap<[u8; 6], Ipv4Addr>,
}

/// One netlink change on a network's VxLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    // Order matters: removals first (route before neighbour before FDB), then additions in the
    // reverse order, so a route never points at a missing neighbour.
    DelRoute { subnet: Subnet },
    DelNeighbour { ip: Ipv4Addr },
    DelFdb { mac: [u8; 6] },
    SetFdb { mac: [u8; 6], dst: Ipv4Addr },
    SetNeighbour { ip: Ipv4Addr, mac: [u8; 6] },
    SetRoute { subnet: Subnet, via: Ipv4Addr },
}

/// The changes that turn `observed` into the entries `desired` needs. Pure; an empty plan means
/// nothing to do. Entries on the device not wanted by any desired host are removed.
pub fn plan_remotes(desired: &[RemoteHost], observed: &ObservedRemotes) -> Vec<Change> {
    let mut want = ObservedRemotes::default();
    for r in desired {
        let via = r.subnet.network();
        want.routes.insert(r.subnet.normalized(), via);
        want.neighbours.insert(via, r.vtep_mac);
        want.fdb.insert(r.vtep_mac, r.underlay_ip);
    }
    let mut out = Vec::new();
    for (s, via) in &want.routes {
        if observed.routes.get(s) != Some(via) {
            out.push(Change::SetRoute {
                subnet: *s,
                via: *via,
            });
        }
    }
    for s in observed
        .routes
        .keys()
        .filter(|s| !want.routes.contains_key(*s))
    {
        out.push(Change::DelRoute { subnet: *s });
    }
    for (ip, mac) in &want.neighbours {
        if observed.neighbours.get(ip) != Some(mac) {
            out.push(Change::SetNeighbour { ip: *ip, mac: *mac });
        }
    }
    for ip in observed
        .neighbours
        .keys()
        .filter(|ip| !want.neighbours.contains_key(*ip))
    {
        out.push(Change::DelNeighbour { ip: *ip });
    }
    for (mac, dst) in &want.fdb {
        if observed.fdb.get(mac) != Some(dst) {
            out.push(Change::SetFdb {
                mac: *mac,
                dst: *dst,
            });
        }
    }
    for mac in observed.fdb.keys().filter(|m| !want.fdb.contains_key(*m)) {
        out.push(Change::DelFdb { mac: *mac });
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_math() {
        let s = sn("10.0.1.77/24");
        assert_eq!(s.to_string(), "10.0.1.0/24");
        assert_eq!(s.network(), Ipv4Addr::new(10, 0, 1, 0));
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 0, 1, 1));
        assert!(s.contains(Ipv4Addr::new(10, 0, 1, 255)));
        assert!(!s.contains(Ipv4Addr::new(10, 0, 2, 1)));
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("10.0.0.0".parse::<Subnet>().is_err());
    }

    #[test]
    fn vtep_mac_is_deterministic_and_local_unicast() {
        let m = vtep_mac(Ipv4Addr::new(10, 214, 0, 2));
        assert_eq!(m, [0x02, 0x56, 10, 214, 0, 2]);
        assert_eq!(m[0] & 0x03, 0x02);
        assert_ne!(m, vtep_mac(Ipv4Addr::new(10, 214, 0, 3)));
    }

    #[test]
    fn plan_from_empty_adds_fdb_neighbour_route_in_order() {
        let r = RemoteHost::new(sn("10.0.2.0/24"), Ipv4Addr::new(10, 214, 0, 3));
        let plan = plan_remotes(&[r], &ObservedRemotes::default());
        assert_eq!(
            plan,
            vec![
                Change::SetFdb {
                    mac: r.vtep_mac,
                    dst: r.underlay_ip
                },
                Change::SetNeighbour {
                    ip: Ipv4Addr::new(10, 0, 2, 0),
                    mac: r.vtep_mac
                },
                Change::SetRoute {
                    subnet: sn("10.0.2.0/24"),
                    via: Ipv4Addr::new(10, 0, 2, 0)
                },
            ]
        );
    }

    fn observed_of(hosts: &[RemoteHost]) -> ObservedRemotes {
        let mut o = ObservedRemotes::default();
        for c in plan_remotes(hosts, &ObservedRemotes::default()) {
            match c {
                Change::SetRoute { subnet, via } => {
                    o.routes.insert(subnet, via);
                }
                Change::SetNeighbour { ip, mac } => {
                    o.neighbours.insert(ip, mac);
                }
                Change::SetFdb { mac, dst } => {
                    o.fdb.insert(mac, dst);
                }
                _ => unreachable!(),
            }
        }
        o
    }

    #[test]
    fn plan_is_empty_when_in_sync_and_removes_departed_hosts() {
        let a = RemoteHost::new(sn("10.0.2.0/24"), Ipv4Addr::new(10, 214, 0, 3));
        let b = RemoteHost::new(sn("10.0.3.0/24"), Ipv4Addr::new(10, 214, 0, 4));
        let obs = observed_of(&[a, b]);
        assert!(plan_remotes(&[a, b], &obs).is_empty());
        assert_eq!(
            plan_remotes(&[a], &obs),
            vec![
                Change::DelRoute { subnet: b.subnet },
                Change::DelNeighbour {
                    ip: b.subnet.network()
                },
                Change::DelFdb { mac: b.vtep_mac },
            ]
        );
        assert_eq!(plan_remotes(&[], &obs).len(), 6);
    }

    #[test]
    fn plan_updates_a_host_that_moved() {
        let a = RemoteHost::new(sn("10.0.2.0/24"), Ipv4Addr::new(10, 214, 0, 3));
        let obs = observed_of(&[a]);
        // Same subnet, new underlay address (the host was re-addressed): new MAC, new FDB entry,
        // neighbour replaced, route unchanged, old FDB entry removed.
        let moved = RemoteHost::new(a.subnet, Ipv4Addr::new(10, 214, 0, 9));
        assert_eq!(
            plan_remotes(&[moved], &obs),
            vec![
                Change::DelFdb { mac: a.vtep_mac },
                Change::SetFdb {
                    mac: moved.vtep_mac,
                    dst: moved.underlay_ip
                },
                Change::SetNeighbour {
                    ip: a.subnet.network(),
                    mac: moved.vtep_mac
                },
            ]
        );
    }
}
