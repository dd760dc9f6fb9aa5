//! The overlay networks an agent is told about in its session: for every network the node holds
//! a lease of, its own lease, the other hosts' leases (VxLAN routes) and the DNS records
//! (services attached to the network, routable tasks with an address on it: running, live, and
//! healthy when their spec has a health check). The ingress
//! network's view also lists every service publishing ports, with its ports. Pure functions of
//! the store, plus the per-session bookkeeping that decides when they are sent again.

use crate::ipam::{node_ip, task_network_ids, vip_id};
use crate::store::{EndpointMode, Event, Object, PublishMode, ServiceMode, Store, TaskState};
use proto::v1 as pb;
use std::borrow::Borrow;
use std::collections::BTreeMap;

/// The service label naming the stack a service belongs to.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// The views of the networks `node_id` holds a lease of, sorted by network id, each with its
/// peers (by node id), services (by name, then id) and tasks (by id) sorted.
pub fn network_views(store: &Store, node_id: &str) -> Vec<pb::NetworkView> {
    let mut views: BTreeMap<&str, pb::NetworkView> = store
        .subnet_leases
        .values()
        .filter(|l| l.node_id == node_id)
        .filter_map(|lease| {
            let network = store.networks.get(&lease.network_id)?;
            Some((
                network.meta.id.as_str(),
                pb::NetworkView {
                    id: network.meta.id.clone(),
                    name: network.name.clone(),
                    vni: network.vni,
                    subnet: network.subnet.clone(),
                    lease: lease.subnet.clone(),
                    ingress: network.ingress,
                    ..Default::default()
                },
            ))
        })
        .collect();
    if views.is_empty() {
        return Vec::new();
    }
    for lease in store.subnet_leases.values() {
        let Some(view) = views.get_mut(lease.network_id.as_str()) else { continue };
        if lease.node_id == node_id {
            continue;
        }
        let Some(underlay) = store.nodes.get(&lease.node_id).and_then(|n| node_ip(&n.addr)) else { continue };
        view.peers.push(pb::NetworkPeer {
            node_id: lease.node_id.clone(),
            subnet: lease.subnet.clone(),
            underlay_addr: underlay.to_string(),
        });
    }
    for service in store.services.values() {
        for network_id in task_network_ids(store, &service.spec) {
            let Some(view) = views.get_mut(network_id.as_str()) else { continue };
            let vip = match service.spec.endpoint.mode {
                EndpointMode::Vip => store
                    .virtual_ips
                    .get(&vip_id(&service.meta.id, &network_id))
                    .map(|v| v.address.clone())
                    .unwrap_or_default(),
                EndpointMode::Dnsrr => String::new(),
            };
            let aliases = service
                .spec
                .networks
                .iter()
                .find(|a| a.network_id == network_id)
                .map(|a| a.aliases.clone())
                .unwrap_or_default();
            let ports = if view.ingress { ports_to_proto(&service.spec.endpoint.ports) } else { Vec::new() };
            view.services.push(pb::DnsService {
                id: service.meta.id.clone(),
                name: service.name.clone(),
                stack: service.labels.get(STACK_LABEL).cloned().unwrap_or_default(),
                endpoint_mode: match service.spec.endpoint.mode {
                    EndpointMode::Vip => "vip",
                    EndpointMode::Dnsrr => "dnsrr",
                }
                .into(),
                vip,
                aliases,
                ports,
            });
        }
    }
    // A task with a health check is routed to (DNS, VIPs) only once healthy.
    let healthy = |t: &crate::store::Task| !t.spec.has_health_check() || t.status.health == "healthy";
    let routable = store.tasks.values().filter(|t| t.status.state == TaskState::Running && t.is_live() && healthy(t));
    for task in routable {
        let Some(service) = store.services.get(&task.service_id) else { continue };
        let on = task_network_ids(store, &service.spec);
        for (network_id, address) in &task.status.addresses {
            let Some(view) = views.get_mut(network_id.as_str()) else { continue };
            if !on.contains(network_id) {
                continue;
            }
            let mut names = vec![task_name(&service.name, task)];
            if !task.spec.hostname.is_empty() {
                names.push(task.spec.hostname.clone());
            }
            view.tasks.push(pb::DnsTask {
                id: task.meta.id.clone(),
                service_id: service.meta.id.clone(),
                names,
                address: address.clone(),
            });
        }
    }
    views
        .into_values()
        .map(|mut view| {
            view.services.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            view
        })
        .collect()
}

/// A service's published ports for the ingress network's view (ingress ports published as 0
/// never reach the store: the port is chosen at create/update).
fn ports_to_proto(ports: &[crate::store::PortConfig]) -> Vec<pb::PortConfig> {
    ports
        .iter()
        .map(|p| pb::PortConfig {
            target: u32::from(p.target),
            published: u32::from(p.published),
            protocol: p.protocol.as_str().into(),
            mode: match p.mode {
                PublishMode::Ingress => "ingress",
                PublishMode::Host => "host",
            }
            .into(),
        })
        .collect()
}

/// A task's name: `<service>.<slot>.<task id>`, the node id in place of the slot for global
/// services.
fn task_name(service_name: &str, task: &crate::store::Task) -> String {
    match task.spec.mode {
        ServiceMode::Global | ServiceMode::GlobalJob => {
            format!("{service_name}.{}.{}", task.node_id.as_deref().unwrap_or_default(), task.meta.id)
        }
        ServiceMode::Replicated { .. } | ServiceMode::ReplicatedJob { .. } => {
            format!("{service_name}.{}.{}", task.slot, task.meta.id)
        }
    }
}

/// Whether `event` may change some node's network views.
fn concerns_networks(event: &Event) -> bool {
    let (Event::Created(object) | Event::Updated(object) | Event::Deleted(object)) = event;
    matches!(
        object,
        Object::Task(_)
            | Object::Service(_)
            | Object::Network(_)
            | Object::SubnetLease(_)
            | Object::VirtualIp(_)
            | Object::Node(_)
    )
}

/// What one session has told its agent about networks, so that views are sent only when they
/// change and recomputed only when they may have.
pub struct ViewTracker {
    node_id: String,
    sent: Vec<pb::NetworkView>,
    /// Whether the node held a lease when last looked at (looked at again on lease events of
    /// the node and on resets).
    leased: bool,
}

impl ViewTracker {
    pub fn new(node_id: &str) -> Self {
        ViewTracker { node_id: node_id.to_string(), sent: Vec::new(), leased: false }
    }

    /// The views for the first message of a session, always sent.
    pub fn full(&mut self, store: &Store) -> pb::NetworkViews {
        self.leased = holds_lease(store, &self.node_id);
        self.sent = network_views(store, &self.node_id);
        pb::NetworkViews { networks: self.sent.clone() }
    }

    /// The views to send after `events` (or a reset of the event stream), if they differ from
    /// the last ones sent. Nothing is recomputed when no event concerns networks, nor while the
    /// node holds no lease and was last told of none.
    pub fn refresh<E: Borrow<Event>>(&mut self, store: &Store, events: &[E], reset: bool) -> Option<pb::NetworkViews> {
        if !reset && !events.iter().any(|e| concerns_networks(e.borrow())) {
            return None;
        }
        let own_lease = |event: &E| {
            let (Event::Created(object) | Event::Updated(object) | Event::Deleted(object)) = event.borrow();
            matches!(object, Object::SubnetLease(lease) if lease.node_id == self.node_id)
        };
        if reset || events.iter().any(own_lease) {
            self.leased = holds_lease(store, &self.node_id);
        }
        if !self.leased && self.sent.is_empty() {
            return None;
        }
        let views = network_views(store, &self.node_id);
        if views == self.sent {
            return None;
        }
        self.sent = views;
        Some(pb::NetworkViews { networks: self.sent.clone() })
    }
}

fn holds_lease(store: &Store, node_id: &str) -> bool {
    store.subnet_leases.values().any(|l| l.node_id == node_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        Availability, EndpointSpec, Meta, Network, NetworkAttachment, Node, NodeResources, NodeRole, NodeState,
        RestartInfo, Service, ServiceSpec, SubnetLease, Task, TaskStatus, VirtualIp,
    };

    fn node(id: &str, addr: &str) -> Node {
        Node {
            meta: Meta { id: id.into(), ..Meta::default() },
            hostname: format!("host-{id}"),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: Default::default(),
            addr: addr.into(),
            state: NodeState::Ready,
            resources: NodeResources::default(),
        }
    }

    fn network(id: &str, subnet: &str, vni: u32) -> Network {
        Network {
            meta: Meta { id: id.into(), ..Meta::default() },
            name: format!("net-{id}"),
            labels: Default::default(),
            subnet: subnet.into(),
            vni,
            attachable: false,
            driver: "overlay".into(),
            ingress: false,
        }
    }

    fn lease(network_id: &str, node_id: &str, subnet: &str) -> SubnetLease {
        SubnetLease {
            meta: Meta { id: crate::ipam::lease_id(network_id, node_id), ..Meta::default() },
            network_id: network_id.into(),
            node_id: node_id.into(),
            subnet: subnet.into(),
        }
    }

    fn service(id: &str, name: &str, networks: &[(&str, &[&str])], spec: ServiceSpec) -> Service {
        Service {
            meta: Meta { id: id.into(), ..Meta::default() },
            name: name.into(),
            labels: Default::default(),
            spec: ServiceSpec {
                networks: networks
                    .iter()
                    .map(|(n, aliases)| NetworkAttachment {
                        network_id: n.to_string(),
                        aliases: aliases.iter().map(|a| a.to_string()).collect(),
                    })
                    .collect(),
                ..spec
            },
            previous_spec: None,
            job_iteration: 0,
            update_status: None,
        }
    }

    fn task(id: &str, service: &Service, slot: u64, node: &str, state: TaskState, addresses: &[(&str, &str)]) -> Task {
        Task {
            meta: Meta { id: id.into(), ..Meta::default() },
            service_id: service.meta.id.clone(),
            slot,
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                addresses: addresses.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect(),
                ..TaskStatus::default()
            },
            spec: service.spec.clone(),
            job_iteration: 0,
            restart: RestartInfo::default(),
        }
    }

    /// Nodes a (10.1.0.1:4242), b (10.1.0.2), c (unparsable address) and d (no lease); networks
    /// n1 (a, b, c lease it) and n2 (b only); services web (vip, on n1 with an alias, in stack
    /// shop), db (dnsrr, on n1 and n2) and lone (n2 only).
    fn cluster() -> Store {
        let mut store = Store::default();
        for n in [node("a", "10.1.0.1:4242"), node("b", "10.1.0.2"), node("c", "somewhere"), node("d", "10.1.0.4")] {
            store.nodes.insert(n.meta.id.clone(), n);
        }
        for n in [network("n1", "10.20.0.0/16", 4096), network("n2", "10.30.0.0/16", 4097)] {
            store.networks.insert(n.meta.id.clone(), n);
        }
        for l in [
            lease("n1", "a", "10.20.0.0/24"),
            lease("n1", "b", "10.20.1.0/24"),
            lease("n1", "c", "10.20.2.0/24"),
            lease("n2", "b", "10.30.0.0/24"),
        ] {
            store.subnet_leases.insert(l.meta.id.clone(), l);
        }
        let mut web = service(
            "s-web",
            "web",
            &[("n1", &["www"])],
            ServiceSpec { hostname: "webhost".into(), ..ServiceSpec::default() },
        );
        web.labels.insert(STACK_LABEL.into(), "shop".into());
        let dnsrr = EndpointSpec { mode: EndpointMode::Dnsrr, ..EndpointSpec::default() };
        let db = service(
            "s-db",
            "db",
            &[("n1", &[]), ("n2", &[])],
            ServiceSpec { mode: ServiceMode::Global, endpoint: dnsrr, ..ServiceSpec::default() },
        );
        let lone = service("s-lone", "lone", &[("n2", &[])], ServiceSpec::default());
        let vip = VirtualIp {
            meta: Meta { id: vip_id("s-web", "n1"), ..Meta::default() },
            service_id: "s-web".into(),
            network_id: "n1".into(),
            address: "10.20.255.1".into(),
        };
        store.virtual_ips.insert(vip.meta.id.clone(), vip);
        let tasks = [
            task("t2", &web, 2, "b", TaskState::Running, &[("n1", "10.20.1.2")]),
            task("t1", &web, 1, "a", TaskState::Running, &[("n1", "10.20.0.2")]),
            task("t3", &web, 3, "b", TaskState::Starting, &[("n1", "10.20.1.3")]),
            task("t4", &web, 4, "b", TaskState::Running, &[]),
            task("t5", &db, 0, "b", TaskState::Running, &[("n1", "10.20.1.5"), ("n2", "10.30.0.5")]),
            task("t6", &lone, 1, "b", TaskState::Running, &[("n2", "10.30.0.6")]),
        ];
        let mut stopping = task("t7", &web, 5, "a", TaskState::Running, &[("n1", "10.20.0.7")]);
        stopping.desired_state = TaskState::Shutdown;
        for t in tasks.into_iter().chain([stopping]) {
            store.tasks.insert(t.meta.id.clone(), t);
        }
        store.services.extend([web, db, lone].map(|s| (s.meta.id.clone(), s)));
        store
    }

    #[test]
    fn a_node_sees_the_networks_it_holds_a_lease_of() {
        let store = cluster();
        let ids = |node: &str| network_views(&store, node).into_iter().map(|v| v.id).collect::<Vec<_>>();
        assert_eq!(ids("a"), ["n1"]);
        assert_eq!(ids("b"), ["n1", "n2"]);
        assert!(ids("d").is_empty(), "no lease, no view");
        assert!(ids("nobody").is_empty());
    }

    #[test]
    fn a_view_holds_the_lease_the_peers_and_the_dns_records() {
        let store = cluster();
        let views = network_views(&store, "a");
        let view = &views[0];
        assert_eq!((view.name.as_str(), view.vni, view.subnet.as_str()), ("net-n1", 4096, "10.20.0.0/16"));
        assert_eq!(view.lease, "10.20.0.0/24");
        let peers: Vec<(&str, &str, &str)> =
            view.peers.iter().map(|p| (p.node_id.as_str(), p.subnet.as_str(), p.underlay_addr.as_str())).collect();
        assert_eq!(peers, [("b", "10.20.1.0/24", "10.1.0.2")], "c has no usable underlay address");

        let services: Vec<(&str, &str, &str, &str, Vec<String>)> = view
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.stack.as_str(), s.endpoint_mode.as_str(), s.vip.as_str(), s.aliases.clone()))
            .collect();
        assert_eq!(
            services,
            [("db", "", "dnsrr", "", vec![]), ("web", "shop", "vip", "10.20.255.1", vec!["www".to_string()]),]
        );

        let tasks: Vec<(&str, &str, Vec<String>)> =
            view.tasks.iter().map(|t| (t.id.as_str(), t.address.as_str(), t.names.clone())).collect();
        assert_eq!(
            tasks,
            [
                ("t1", "10.20.0.2", vec!["web.1.t1".to_string(), "webhost".to_string()]),
                ("t2", "10.20.1.2", vec!["web.2.t2".to_string(), "webhost".to_string()]),
                ("t5", "10.20.1.5", vec!["db.b.t5".to_string()]),
            ],
            "running, live and addressed on n1 only"
        );
        assert_eq!(view.tasks[2].service_id, "s-db");
    }

    #[test]
    fn each_network_has_its_own_records() {
        let store = cluster();
        let views = network_views(&store, "b");
        let n2 = &views[1];
        assert_eq!(n2.lease, "10.30.0.0/24");
        assert!(n2.peers.is_empty());
        let services: Vec<&str> = n2.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(services, ["db", "lone"]);
        assert_eq!(n2.services[1].vip, "", "no virtual IP allocated yet");
        let tasks: Vec<(&str, &str)> = n2.tasks.iter().map(|t| (t.id.as_str(), t.address.as_str())).collect();
        assert_eq!(tasks, [("t5", "10.30.0.5"), ("t6", "10.30.0.6")]);
        let n1_peers: Vec<&str> = views[0].peers.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(n1_peers, ["a"]);
    }

    /// [`cluster`] plus the ingress network (leased to a and d), web publishing 8080 in
    /// ingress mode and 9090 in host mode, and lone (not publishing) attached to it explicitly.
    fn cluster_with_ingress() -> Store {
        use crate::store::{PortConfig, Protocol};
        let mut store = cluster();
        let mut ingress = network("in", "10.0.0.0/16", 4100);
        ingress.name = "ingress".into();
        ingress.ingress = true;
        store.networks.insert(ingress.meta.id.clone(), ingress);
        for l in [lease("in", "a", "10.0.0.0/24"), lease("in", "d", "10.0.1.0/24")] {
            store.subnet_leases.insert(l.meta.id.clone(), l);
        }
        let web = store.services.get_mut("s-web").unwrap();
        web.spec.endpoint.ports = vec![
            PortConfig { target: 80, published: 8080, protocol: Protocol::Tcp, mode: PublishMode::Ingress },
            PortConfig { target: 53, published: 9090, protocol: Protocol::Udp, mode: PublishMode::Host },
        ];
        let lone = store.services.get_mut("s-lone").unwrap();
        lone.spec.networks.push(NetworkAttachment { network_id: "in".into(), aliases: vec!["solo".into()] });
        let t1 = store.tasks.get_mut("t1").unwrap();
        t1.status.addresses.insert("in".into(), "10.0.0.2".into());
        let t6 = store.tasks.get_mut("t6").unwrap();
        t6.status.addresses.insert("in".into(), "10.0.1.6".into());
        store
    }

    #[test]
    fn the_ingress_view_lists_the_publishing_services_with_their_ports() {
        let store = cluster_with_ingress();
        let views = network_views(&store, "d");
        assert_eq!(views.len(), 1, "a lease of the ingress network only");
        let view = &views[0];
        assert!(view.ingress);
        assert_eq!((view.name.as_str(), view.lease.as_str()), ("ingress", "10.0.1.0/24"));
        let peers: Vec<&str> = view.peers.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(peers, ["a"]);
        let services: Vec<(&str, &str, Vec<String>)> =
            view.services.iter().map(|s| (s.name.as_str(), s.vip.as_str(), s.aliases.clone())).collect();
        assert_eq!(services, [("lone", "", vec!["solo".to_string()]), ("web", "", vec![])], "no VIP on ingress");
        let ports: Vec<(u32, u32, &str, &str)> = view.services[1]
            .ports
            .iter()
            .map(|p| (p.target, p.published, p.protocol.as_str(), p.mode.as_str()))
            .collect();
        assert_eq!(ports, [(80, 8080, "tcp", "ingress"), (53, 9090, "udp", "host")]);
        assert!(view.services[0].ports.is_empty());
        let tasks: Vec<(&str, &str)> = view.tasks.iter().map(|t| (t.id.as_str(), t.address.as_str())).collect();
        assert_eq!(tasks, [("t1", "10.0.0.2"), ("t6", "10.0.1.6")]);

        // Other networks' views carry no ports and are not ingress.
        let views = network_views(&store, "a");
        let ids: Vec<&str> = views.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["in", "n1"]);
        assert!(!views[1].ingress);
        assert!(views[1].services.iter().all(|s| s.ports.is_empty()));
    }

    #[test]
    fn views_are_sent_first_then_only_when_they_change() {
        let mut store = cluster();
        let mut tracker = ViewTracker::new("a");
        assert_eq!(tracker.full(&store).networks.len(), 1);
        let unrelated = Event::Created(Object::Secret(crate::store::Blob {
            meta: Meta::default(),
            name: "s".into(),
            labels: Default::default(),
            data: Vec::new(),
        }));
        assert_eq!(tracker.refresh(&store, &[unrelated], false), None);
        let t3 = store.tasks["t3"].clone();
        assert_eq!(tracker.refresh(&store, &[Event::Updated(Object::Task(t3.clone()))], false), None, "no change");
        store.tasks.get_mut("t3").unwrap().status.state = TaskState::Running;
        let t3 = store.tasks["t3"].clone();
        let sent = tracker.refresh(&store, &[Event::Updated(Object::Task(t3.clone()))], false).expect("a new record");
        assert_eq!(sent.networks[0].tasks.len(), 4);
        assert_eq!(tracker.refresh(&store, &[] as &[Event], true), None, "a reset with nothing new sends nothing");

        // The lease goes: the agent is told once that it has no networks left.
        let gone = store.subnet_leases.remove(&crate::ipam::lease_id("n1", "a")).unwrap();
        let sent = tracker.refresh(&store, &[Event::Deleted(Object::SubnetLease(gone))], false);
        assert_eq!(sent, Some(pb::NetworkViews { networks: Vec::new() }));
        assert_eq!(tracker.refresh(&store, &[Event::Updated(Object::Task(t3))], false), None);
    }

    #[test]
    fn a_node_without_leases_is_not_recomputed() {
        let mut store = cluster();
        let mut tracker = ViewTracker::new("d");
        assert!(tracker.full(&store).networks.is_empty());
        let t1 = Event::Updated(Object::Task(store.tasks["t1"].clone()));
        assert_eq!(tracker.refresh(&store, std::slice::from_ref(&t1), false), None);
        let new = lease("n1", "d", "10.20.3.0/24");
        store.subnet_leases.insert(new.meta.id.clone(), new.clone());
        let sent = tracker.refresh(&store, &[Event::Created(Object::SubnetLease(new))], false).expect("a view");
        assert_eq!(sent.networks[0].lease, "10.20.3.0/24");
        assert_eq!(sent.networks[0].peers.len(), 2);
    }

    #[test]
    fn tasks_with_a_health_check_are_listed_only_once_healthy() {
        use crate::store::HealthCheck;
        let mut store = cluster();
        let check = |test: &[&str]| HealthCheck { test: test.iter().map(|t| t.to_string()).collect(), interval_ms: 1, timeout_ms: 1, retries: 1, start_period_ms: 0 };
        let ids = |store: &Store| network_views(store, "a")[0].tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&store), ["t1", "t2", "t5"]);
        store.tasks.get_mut("t1").unwrap().spec.healthcheck = Some(check(&["CMD", "true"]));
        store.tasks.get_mut("t2").unwrap().spec.healthcheck = Some(check(&["NONE"]));
        store.tasks.get_mut("t5").unwrap().spec.healthcheck = Some(check(&["CMD-SHELL", "true"]));
        assert_eq!(ids(&store), ["t2"], "NONE is no check; no health reported yet is not healthy");
        for (id, health) in [("t1", "starting"), ("t5", "healthy")] {
            store.tasks.get_mut(id).unwrap().status.health = health.into();
        }
        assert_eq!(ids(&store), ["t2", "t5"]);
        store.tasks.get_mut("t1").unwrap().status.health = "healthy".into();
        store.tasks.get_mut("t5").unwrap().status.health = "unhealthy".into();
        assert_eq!(ids(&store), ["t1", "t2"]);
    }
}
