//! Pure parts of the agent's overlay networking: which address a new container gets, what the
//! VxLAN device needs for the other hosts, the DNS records and the VIP backends, all derived from
//! the network views the managers push.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use overlay::dataplane::lb::VipService;
use overlay::dataplane::{RemoteHost, Subnet};
use overlay::dns::{EndpointMode, NetworkId, ServiceNetwork, ServiceRecord, TaskRecord};
use proto::v1::NetworkView;

/// The label Docker puts on the objects of a stack: its value is the stack's name.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// The first free container address of `lease`: not the network address, not the gateway
/// (`.1`), not the broadcast address, and not in `used`. `None` when the lease is full.
pub fn next_address(lease: Subnet, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(lease.gateway()) + 1;
    let size = 1u64 << (32 - u32::from(lease.prefix));
    let broadcast = (u64::from(u32::from(lease.network())) + size - 1) as u32;
    (first..broadcast)
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
}

/// The other hosts of a network, as the VxLAN device needs them. Peers with an unparsable subnet
/// or address, or the node's own underlay address, are left out.
pub fn remote_hosts(view: &NetworkView, own_underlay: Ipv4Addr) -> Vec<RemoteHost> {
    let mut hosts: Vec<RemoteHost> = view
        .peers
        .iter()
        .filter_map(|p| {
            let subnet: Subnet = p.subnet.parse().ok()?;
            let ip: Ipv4Addr = p.underlay_addr.parse().ok()?;
            (ip != own_underlay).then(|| RemoteHost::new(subnet, ip))
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The DNS records of every network the node takes part in: services merged across networks
/// (one record with a VIP per network), routable tasks with their address on each network.
pub fn dns_records(views: &[NetworkView]) -> (Vec<ServiceRecord>, Vec<TaskRecord>) {
    let mut services: BTreeMap<String, ServiceRecord> = BTreeMap::new();
    let mut tasks: BTreeMap<String, TaskRecord> = BTreeMap::new();
    for view in views {
        let network: NetworkId = view.id.as_str().into();
        for s in &view.services {
            let record = services
                .entry(s.id.clone())
                .or_insert_with(|| ServiceRecord {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    stack: (!s.stack.is_empty()).then(|| s.stack.clone()),
                    mode: if s.endpoint_mode == "dnsrr" {
                        EndpointMode::Dnsrr
                    } else {
                        EndpointMode::Vip
                    },
                    networks: Vec::new(),
                });
            record.networks.push(ServiceNetwork {
                network: network.clone(),
                vip: s.vip.parse::<IpAddr>().ok(),
            });
        }
        for t in &view.tasks {
            let Ok(addr) = t.address.parse::<IpAddr>() else {
                continue;
            };
            let record = tasks.entry(t.id.clone()).or_insert_with(|| TaskRecord {
                id: t.id.clone(),
                service_id: t.service_id.clone(),
                names: t.names.clone(),
                addrs: Vec::new(),
            });
            record.addrs.push((network.clone(), addr));
        }
    }
    (
        services.into_values().collect(),
        tasks.into_values().collect(),
    )
}

/// The VIPs of a network's services and the addresses of their routable tasks there.
pub fn vip_services(view: &NetworkView) -> Vec<VipService> {
    let mut out: Vec<VipService> = view
        .services
        .iter()
        .filter(|s| s.endpoint_mode != "dnsrr")
        .filter_map(|s| {
            let vip: Ipv4Addr = s.vip.parse().ok()?;
            let mut backends: Vec<Ipv4Addr> = view
                .tasks
                .iter()
                .filter(|t| t.service_id == s.id)
                .filter_map(|t| t.address.parse().ok())
                .collect();
            backends.sort();
            backends.dedup();
            Some(VipService { vip, backends })
        })
        .collect();
    out.sort_by_key(|s| s.vip);
    out
}

/// The resolv.conf of a container: the embedded DNS server at the gateway of its first network.
/// `ndots:0` as Docker does, so single-label service names go straight to it.
pub fn resolv_conf(nameserver: Ipv4Addr) -> String {
    format!("nameserver {nameserver}\noptions ndots:0\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{DnsService, DnsTask, NetworkPeer};

    fn sn(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_skip_gateway_used_and_broadcast() {
        let lease = sn("10.0.3.0/24");
        let mut used = BTreeSet::new();
        assert_eq!(next_address(lease, &used), Some(Ipv4Addr::new(10, 0, 3, 2)));
        used.insert(Ipv4Addr::new(10, 0, 3, 2));
        used.insert(Ipv4Addr::new(10, 0, 3, 4));
        assert_eq!(next_address(lease, &used), Some(Ipv4Addr::new(10, 0, 3, 3)));
        let full: BTreeSet<Ipv4Addr> = (2..=254).map(|i| Ipv4Addr::new(10, 0, 3, i)).collect();
        assert_eq!(next_address(lease, &full), None, "never .255");
    }

    fn view() -> NetworkView {
        NetworkView {
            id: "n1".into(),
            name: "backend".into(),
            vni: 4096,
            subnet: "10.0.0.0/16".into(),
            lease: "10.0.1.0/24".into(),
            peers: vec![
                NetworkPeer {
                    node_id: "b".into(),
                    subnet: "10.0.2.0/24".into(),
                    underlay_addr: "192.168.0.2".into(),
                },
                NetworkPeer {
                    node_id: "me".into(),
                    subnet: "10.0.1.0/24".into(),
                    underlay_addr: "192.168.0.1".into(),
                },
                NetworkPeer {
                    node_id: "bad".into(),
                    subnet: "nonsense".into(),
                    underlay_addr: "192.168.0.3".into(),
                },
            ],
            services: vec![
                DnsService {
                    id: "s1".into(),
                    name: "web".into(),
                    stack: "shop".into(),
                    endpoint_mode: "vip".into(),
                    vip: "10.0.255.2".into(),
                    aliases: vec![],
                },
                DnsService {
                    id: "s2".into(),
                    name: "db".into(),
                    endpoint_mode: "dnsrr".into(),
                    ..Default::default()
                },
            ],
            tasks: vec![
                DnsTask {
                    id: "t2".into(),
                    service_id: "s1".into(),
                    names: vec!["web.2.t2".into()],
                    address: "10.0.2.5".into(),
                },
                DnsTask {
                    id: "t1".into(),
                    service_id: "s1".into(),
                    names: vec!["web.1.t1".into()],
                    address: "10.0.1.2".into(),
                },
                DnsTask {
                    id: "t3".into(),
                    service_id: "s2".into(),
                    names: vec!["db.1.t3".into()],
                    address: "10.0.2.6".into(),
                },
            ],
        }
    }

    #[test]
    fn remotes_leave_out_self_and_garbage() {
        let hosts = remote_hosts(&view(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(
            hosts,
            vec![RemoteHost::new(
                sn("10.0.2.0/24"),
                Ipv4Addr::new(192, 168, 0, 2)
            )]
        );
    }

    #[test]
    fn dns_records_merge_networks() {
        let mut other = view();
        other.id = "n2".into();
        other.services.truncate(1);
        other.services[0].vip = "10.1.255.2".into();
        other.tasks.truncate(1);
        other.tasks[0].address = "10.1.2.5".into();
        let (services, tasks) = dns_records(&[view(), other]);
        assert_eq!(services.len(), 2);
        let web = services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.stack.as_deref(), Some("shop"));
        assert_eq!(web.mode, EndpointMode::Vip);
        assert_eq!(web.networks.len(), 2);
        let db = services.iter().find(|s| s.name == "db").unwrap();
        assert_eq!((db.mode, db.networks[0].vip), (EndpointMode::Dnsrr, None));
        let t2 = tasks.iter().find(|t| t.id == "t2").unwrap();
        assert_eq!(t2.addrs.len(), 2, "one address per network");
        assert_eq!(tasks.len(), 3);
    }

    #[test]
    fn vips_balance_over_the_services_tasks() {
        let vips = vip_services(&view());
        assert_eq!(vips.len(), 1, "dnsrr services have no VIP");
        assert_eq!(vips[0].vip, Ipv4Addr::new(10, 0, 255, 2));
        assert_eq!(
            vips[0].backends,
            vec![Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 2, 5)]
        );
    }

    #[test]
    fn resolv_conf_points_at_the_gateway() {
        assert_eq!(
            resolv_conf(Ipv4Addr::new(10, 0, 1, 1)),
            "nameserver 10.0.1.1\noptions ndots:0\n"
        );
    }
}
