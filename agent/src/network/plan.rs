//! Pure parts of the agent's overlay networking: which address a new container gets, what the
//! VxLAN device needs for the other hosts, the DNS records and the VIP backends, all derived from
//! the network views the managers push.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use overlay::dataplane::lb::VipService;
use overlay::dataplane::mesh::{Protocol, PublishedPort};
use overlay::dataplane::{RemoteHost, Subnet};
use overlay::dns::{EndpointMode, NetworkId, ServiceNetwork, ServiceRecord, TaskRecord};
use proto::v1::{NetworkView, ServiceSpec};

/// The label Docker puts on the objects of a stack: its value is the stack's name.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// The address of the host itself in its lease (the last one before broadcast, `.254` of a
/// /24): on the ingress network, the host's end of the routing mesh.
pub fn host_address(lease: Subnet) -> Ipv4Addr {
    let size = 1u64 << (32 - u32::from(lease.prefix));
    Ipv4Addr::from((u64::from(u32::from(lease.network())) + size - 2) as u32)
}

/// The next free container address of `lease` after `last` (the one given out before),
/// wrapping around: not the network address, not the gateway (`.1`), not the host's address
/// ([`host_address`]), not the broadcast address, and not in `used`. `None` when the lease is
/// full. Addresses go round rather than the lowest free one being reused at once: a stopped
/// container's address stays in the neighbour caches of the hosts for a while, and a new
/// container behind it would be unreachable until they expire.
pub fn next_address(
    lease: Subnet,
    used: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(lease.gateway()) + 1;
    let host = u32::from(host_address(lease));
    let start = last
        .map(u32::from)
        .filter(|l| (first..host).contains(l))
        .map_or(first, |l| l + 1);
    (start..host)
        .chain(first..start)
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
}

/// The views of the networks a task joins: those of its spec, and the ingress network when it
/// publishes ports. `Err`: the networks this node has no view (no lease) of yet.
pub fn task_views(
    spec: &ServiceSpec,
    views: &[NetworkView],
) -> Result<Vec<NetworkView>, Vec<String>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for attachment in &spec.networks {
        match views.iter().find(|v| v.id == attachment.target) {
            Some(v) => found.push(v.clone()),
            None => missing.push(attachment.target.clone()),
        }
    }
    let publishes = spec.endpoint.as_ref().is_some_and(|e| !e.ports.is_empty());
    if publishes && !found.iter().any(|v| v.ingress) {
        match views.iter().find(|v| v.ingress) {
            Some(v) => found.push(v.clone()),
            None => missing.push("ingress".into()),
        }
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(missing)
    }
}

/// The ports this host publishes, from the ingress network's view: ingress-mode ports go to
/// every task of their service, host-mode ports only to the tasks in this host's `lease`.
pub fn published_ports(ingress: &NetworkView, lease: Subnet) -> Vec<PublishedPort> {
    let mut out = Vec::new();
    for service in &ingress.services {
        let tasks: Vec<Ipv4Addr> = ingress
            .tasks
            .iter()
            .filter(|t| t.service_id == service.id)
            .filter_map(|t| t.address.parse().ok())
            .collect();
        for port in &service.ports {
            let protocol = match port.protocol.as_str() {
                "" | "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => continue,
            };
            let (Ok(published), Ok(target)) =
                (u16::try_from(port.published), u16::try_from(port.target))
            else {
                continue;
            };
            if published == 0 {
                continue;
            }
            let backends = tasks
                .iter()
                .copied()
                .filter(|a| port.mode != "host" || lease.contains(*a))
                .collect();
            out.push(PublishedPort {
                protocol,
                published,
                target,
                backends,
            });
        }
    }
    out.sort();
    out
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
                aliases: s.aliases.clone(),
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
        assert_eq!(next_address(lease, &used, None), Some(Ipv4Addr::new(10, 0, 3, 2)));
        used.insert(Ipv4Addr::new(10, 0, 3, 2));
        used.insert(Ipv4Addr::new(10, 0, 3, 4));
        assert_eq!(next_address(lease, &used, None), Some(Ipv4Addr::new(10, 0, 3, 3)));
        let full: BTreeSet<Ipv4Addr> = (2..=253).map(|i| Ipv4Addr::new(10, 0, 3, i)).collect();
        assert_eq!(
            next_address(lease, &full, None),
            None,
            "never .254 (the host) nor .255"
        );
        // Round robin: a freed address is not handed out again at once; wraps at the end.
        let after = |last: u8| next_address(lease, &used, Some(Ipv4Addr::new(10, 0, 3, last)));
        assert_eq!(after(3), Some(Ipv4Addr::new(10, 0, 3, 5)));
        assert_eq!(after(253), Some(Ipv4Addr::new(10, 0, 3, 3)));
        assert_eq!(after(254), Some(Ipv4Addr::new(10, 0, 3, 3)), "out of range: from the start");
        assert_eq!(host_address(lease), Ipv4Addr::new(10, 0, 3, 254));
    }

    fn view() -> NetworkView {
        NetworkView {
            id: "n1".into(),
            name: "backend".into(),
            vni: 4096,
            subnet: "10.0.0.0/16".into(),
            lease: "10.0.1.0/24".into(),
            ingress: false,
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
                    ..Default::default()
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
    fn publishing_tasks_join_the_ingress_network() {
        use proto::v1::{EndpointSpec, NetworkAttachment, PortConfig};
        let mut ingress = view();
        ingress.id = "ing".into();
        ingress.ingress = true;
        let mut spec = ServiceSpec {
            networks: vec![NetworkAttachment {
                target: "n1".into(),
                aliases: vec![],
            }],
            ..Default::default()
        };
        let ids = |r: Result<Vec<NetworkView>, Vec<String>>| -> Vec<String> {
            r.map(|v| v.into_iter().map(|v| v.id).collect())
                .unwrap_or_else(|m| m)
        };
        assert_eq!(ids(task_views(&spec, &[view(), ingress.clone()])), ["n1"]);
        spec.endpoint = Some(EndpointSpec {
            mode: String::new(),
            ports: vec![PortConfig {
                target: 80,
                published: 8080,
                ..Default::default()
            }],
        });
        assert_eq!(ids(task_views(&spec, &[view(), ingress])), ["n1", "ing"]);
        assert_eq!(
            task_views(&spec, &[view()]).map(|_| ()),
            Err(vec!["ingress".to_string()])
        );
    }

    #[test]
    fn ports_go_to_every_task_or_to_local_ones() {
        use proto::v1::PortConfig;
        let mut ingress = view();
        ingress.ingress = true;
        ingress.services[0].ports = vec![
            PortConfig {
                target: 80,
                published: 8080,
                protocol: "tcp".into(),
                mode: "ingress".into(),
            },
            PortConfig {
                target: 80,
                published: 9090,
                protocol: "tcp".into(),
                mode: "host".into(),
            },
        ];
        let ports = published_ports(&ingress, sn("10.0.1.0/24"));
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].published, 8080);
        assert_eq!(
            ports[0].backends,
            vec![Ipv4Addr::new(10, 0, 2, 5), Ipv4Addr::new(10, 0, 1, 2)]
        );
        assert_eq!(
            ports[1].backends,
            vec![Ipv4Addr::new(10, 0, 1, 2)],
            "host mode: local tasks"
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
