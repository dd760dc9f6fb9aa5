use super::*;
use crate::store::{
    Availability, ClusterSettings, Command, Network, NetworkAttachment, Node, NodeResources, NodeRole, NodeState, Op,
    Response, ServiceSpec, StoreError, Task, TaskStatus,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn net(text: &str) -> Ipv4Net {
    Ipv4Net::parse(text).unwrap()
}

#[test]
fn parse_accepts_networks_and_names_the_problem_otherwise() {
    assert_eq!(net("10.20.0.0/16").to_string(), "10.20.0.0/16");
    assert_eq!(net("0.0.0.0/0").prefix(), 0);
    assert!(Ipv4Net::parse("10.20.0.0").unwrap_err().contains("not a CIDR"));
    assert!(Ipv4Net::parse("10.300.0.0/16").unwrap_err().contains("not an IPv4 address"));
    assert!(Ipv4Net::parse("10.0.0.0/33").unwrap_err().contains("prefix length"));
    assert!(Ipv4Net::parse("10.20.1.0/16").unwrap_err().contains("did you mean 10.20.0.0/16"));
}

#[test]
fn overlap_and_containment() {
    assert!(net("10.0.0.0/8").overlaps(&net("10.5.0.0/16")));
    assert!(net("10.5.0.0/16").overlaps(&net("10.0.0.0/8")));
    assert!(!net("10.5.0.0/16").overlaps(&net("10.6.0.0/16")));
    assert!(net("10.5.0.0/16").contains("10.5.255.255".parse().unwrap()));
    assert!(!net("10.5.0.0/16").contains("10.6.0.0".parse().unwrap()));
    let subnets: Vec<String> = net("10.5.0.0/22").subnets(24).map(|s| s.to_string()).collect();
    assert_eq!(subnets, ["10.5.0.0/24", "10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"]);
    assert_eq!(net("10.5.0.0/24").subnets(16).count(), 0);
}

#[test]
fn pool_allocation_skips_networks_and_hosts() {
    let pool = net("10.0.0.0/8");
    let hosts: Vec<Ipv4Addr> = vec!["10.0.0.1".parse().unwrap()];
    let first = allocate_subnet(pool, 16, &[], &hosts).unwrap();
    assert_eq!(first.to_string(), "10.1.0.0/16", "10.0.0.0/16 holds a host");
    let second = allocate_subnet(pool, 16, &[first, net("10.2.0.0/24")], &hosts).unwrap();
    assert_eq!(second.to_string(), "10.3.0.0/16");
    let small = net("10.9.0.0/23");
    let taken = [net("10.9.0.0/24"), net("10.9.1.0/24")];
    assert_eq!(allocate_subnet(small, 24, &taken, &[]), None, "exhausted");
}

#[test]
fn user_subnets_are_checked_naming_the_field() {
    let taken = vec![("blue".to_string(), net("10.1.0.0/16"))];
    let hosts: Vec<Ipv4Addr> = vec!["192.168.1.10".parse().unwrap()];
    assert_eq!(check_subnet("10.2.0.0/16", "spec.subnet", &taken, &hosts).unwrap(), net("10.2.0.0/16"));
    let overlap = check_subnet("10.1.128.0/17", "spec.subnet", &taken, &hosts).unwrap_err();
    assert!(overlap.starts_with("spec.subnet: ") && overlap.contains("overlaps network blue"), "{overlap}");
    let small = check_subnet("10.2.0.0/25", "spec.subnet", &taken, &hosts).unwrap_err();
    assert!(small.contains("too small"), "{small}");
    let one = check_subnet("10.2.0.0/24", "spec.subnet", &taken, &hosts).unwrap_err();
    assert!(one.starts_with("spec.subnet: ") && one.contains("at least a /23") && one.contains("virtual IPs"), "{one}");
    assert_eq!(check_subnet("10.2.0.0/23", "spec.subnet", &taken, &hosts).unwrap(), net("10.2.0.0/23"));
    let host = check_subnet("192.168.0.0/16", "spec.subnet", &taken, &hosts).unwrap_err();
    assert!(host.contains("192.168.1.10"), "{host}");
    let bad = check_subnet("banana", "spec.subnet", &taken, &hosts).unwrap_err();
    assert!(bad.starts_with("spec.subnet: "), "{bad}");
}

#[test]
fn pools_are_validated() {
    assert!(validate_pool(DEFAULT_POOL, DEFAULT_MASK_LENGTH).is_ok());
    assert!(validate_pool("10.0.0.0/16", 8).unwrap_err().contains("mask length"));
    assert!(validate_pool("10.0.0.0/16", 25).unwrap_err().contains("mask length"));
    assert!(validate_pool("10.0.0.0/16", 24).unwrap_err().contains("/23"), "a /24 leaves no room for virtual IPs");
    assert!(validate_pool("10.0.0.0/16", 23).is_ok());
    assert!(validate_pool("10.0.0.1/16", 23).unwrap_err().contains("host bits"));
}

#[test]
fn vnis_are_the_lowest_free_from_4096() {
    assert_eq!(allocate_vni([]), Some(4096));
    assert_eq!(allocate_vni([4096, 4097, 4099]), Some(4098));
    assert_eq!(allocate_vni([1, 2]), Some(4096));
}

#[test]
fn node_ips_come_from_manager_and_worker_addresses() {
    assert_eq!(node_ip("10.0.0.1:4242"), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(node_ip("10.0.0.3"), Some("10.0.0.3".parse().unwrap()));
    assert_eq!(node_ip("0.0.0.0:4242"), None);
    assert_eq!(node_ip("[::1]:4242"), None);
}

/// Property: whatever the pool, the mask length, the networks already taken (some given by
/// users) and the hosts, an allocated subnet is inside the pool, of the asked length, overlaps
/// nothing taken and holds no host; and no subnet is missed (if none is returned, every
/// candidate was refused).
#[test]
fn property_allocations_never_overlap() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let pool_prefix: u8 = rng.random_range(8..=20);
        let pool_base = rng.random::<u32>() & (u32::MAX << (32 - u32::from(pool_prefix)));
        let pool = Ipv4Net::new(Ipv4Addr::from(pool_base), pool_prefix).unwrap();
        let mask: u8 = rng.random_range(pool_prefix..=MAX_NETWORK_PREFIX);
        let hosts: Vec<Ipv4Addr> = (0..rng.random_range(0..4))
            .map(|_| Ipv4Addr::from(pool_base | (rng.random::<u32>() & !(u32::MAX << (32 - u32::from(pool_prefix))))))
            .collect();
        let mut taken: Vec<Ipv4Net> = Vec::new();
        for _ in 0..rng.random_range(0..5) {
            let prefix: u8 = rng.random_range(pool_prefix..=MAX_NETWORK_PREFIX);
            let base = (pool_base | (rng.random::<u32>() & !(u32::MAX << (32 - u32::from(pool_prefix)))))
                & (u32::MAX << (32 - u32::from(prefix)));
            let user = Ipv4Net::new(Ipv4Addr::from(base), prefix).unwrap();
            let named: Vec<(String, Ipv4Net)> = taken.iter().map(|t| ("n".to_string(), *t)).collect();
            if check_subnet(&user.to_string(), "spec.subnet", &named, &hosts).is_ok() {
                taken.push(user);
            }
        }
        for _ in 0..40 {
            match allocate_subnet(pool, mask, &taken, &hosts) {
                Some(subnet) => {
                    assert_eq!(subnet.prefix(), mask);
                    assert!(pool.overlaps(&subnet) && pool.contains(subnet.network()));
                    assert!(taken.iter().all(|t| !t.overlaps(&subnet)), "{subnet} overlaps {taken:?}");
                    assert!(hosts.iter().all(|h| !subnet.contains(*h)));
                    taken.push(subnet);
                }
                None => {
                    assert!(pool.subnets(mask).take(1 << 16).all(|c| {
                        taken.iter().any(|t| t.overlaps(&c)) || hosts.iter().any(|h| c.contains(*h))
                    }));
                    break;
                }
            }
        }
        for (i, a) in taken.iter().enumerate() {
            for b in &taken[i + 1..] {
                assert!(!a.overlaps(b), "{a} and {b} overlap");
            }
        }
    }
}

/// Property: per-host leases of one network are distinct /24s inside it until it is full, and
/// never its last /24 (the virtual IPs').
#[test]
fn property_leases_are_distinct() {
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..100 {
        let prefix: u8 = rng.random_range(18..=MAX_NETWORK_PREFIX);
        let network = Ipv4Net::new(Ipv4Addr::new(10, 7, 0, 0), prefix).unwrap();
        let mut taken = Vec::new();
        while let Some(lease) = next_lease(network, &taken) {
            assert_eq!(lease.prefix(), LEASE_PREFIX);
            assert!(network.contains(lease.network()));
            assert!(taken.iter().all(|t: &Ipv4Net| !t.overlaps(&lease)));
            assert_ne!(Some(lease), vip_range(network));
            taken.push(lease);
            if rng.random_bool(0.2) && !taken.is_empty() {
                let i = rng.random_range(0..taken.len());
                taken.remove(i);
            }
        }
        assert!(taken.len() as u64 >= (1 << (LEASE_PREFIX - prefix)) - 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The store's network operations and the lease plan.

fn bootstrapped() -> Store {
    let mut store = Store::default();
    let settings = ClusterSettings {
        cluster_id: "c".into(),
        created_at_ms: 0,
        ca_cert_pem: String::new(),
        ca_key_pem: String::new(),
        worker_token_secret: String::new(),
        manager_token_secret: String::new(),
        node_cert_validity_secs: 3600,
        address_pool: Default::default(),
    };
    let node = node("m1", "10.0.0.1:4242");
    let (response, _) = store.apply(1, &Command { now_ms: 1, op: Op::Bootstrap { settings: Box::new(settings), first_manager: Box::new(node) } });
    assert_eq!(response, Response::Ok);
    store
}

fn node(id: &str, addr: &str) -> Node {
    Node {
        meta: Meta { id: id.into(), ..Meta::default() },
        hostname: format!("host-{id}"),
        role: NodeRole::Manager,
        availability: Availability::Active,
        labels: Default::default(),
        addr: addr.into(),
        state: NodeState::Ready,
        resources: NodeResources::default(),
    }
}

fn network(id: &str, name: &str, subnet: &str) -> Box<Network> {
    Box::new(Network {
        meta: Meta { id: id.into(), ..Meta::default() },
        name: name.into(),
        labels: Default::default(),
        subnet: subnet.into(),
        vni: 0,
        attachable: false,
        driver: String::new(),
        ingress: false,
    })
}

fn apply(store: &mut Store, index: u64, op: Op) -> Response {
    store.apply(index, &Command { now_ms: index as i64, op }).0
}

fn apply_changes(store: &mut Store, index: u64, changes: Vec<Change>) {
    assert_eq!(apply(store, index, Op::Batch(changes)), Response::Ok);
}

#[test]
fn store_allocates_subnets_and_vnis_and_refuses_without_writing() {
    let mut store = bootstrapped();
    assert_eq!(apply(&mut store, 2, Op::CreateNetwork(network("n1", "blue", ""))), Response::Ok);
    assert_eq!(apply(&mut store, 3, Op::CreateNetwork(network("n2", "red", ""))), Response::Ok);
    assert_eq!(apply(&mut store, 4, Op::CreateNetwork(network("n3", "green", "172.20.0.0/16"))), Response::Ok);
    let (blue, red, green) = (&store.networks["n1"], &store.networks["n2"], &store.networks["n3"]);
    assert_eq!(blue.subnet, "10.1.0.0/16", "10.0.0.0/16 holds the manager's address");
    assert_eq!(red.subnet, "10.2.0.0/16");
    assert_eq!(green.subnet, "172.20.0.0/16");
    assert_eq!((blue.vni, red.vni, green.vni), (4096, 4097, 4098));
    assert_eq!(blue.driver, "overlay");
    let before = store.clone();
    let overlap = apply(&mut store, 5, Op::CreateNetwork(network("n4", "pink", "172.20.4.0/23")));
    let Response::Rejected(StoreError::Invalid(message)) = overlap else { panic!("{overlap:?}") };
    assert!(message.contains("spec.subnet") && message.contains("green"), "{message}");
    let name = apply(&mut store, 5, Op::CreateNetwork(network("n4", "blue", "")));
    assert!(matches!(name, Response::Rejected(StoreError::NameInUse { .. })), "{name:?}");
    assert_eq!(store, before, "refusals write nothing");
}

fn service_on(id: &str, networks: &[&str]) -> crate::store::Service {
    crate::store::Service {
        meta: Meta { id: id.into(), ..Meta::default() },
        name: format!("svc-{id}"),
        labels: Default::default(),
        spec: ServiceSpec {
            image: "busybox".into(),
            networks: networks
                .iter()
                .map(|n| NetworkAttachment { network_id: n.to_string(), aliases: Vec::new() })
                .collect(),
            ..ServiceSpec::default()
        },
        previous_spec: None,
        job_iteration: 0,
        update_status: None,
    }
}

fn task_on(id: &str, service: &crate::store::Service, node: &str, state: TaskState) -> Task {
    Task {
        meta: Meta { id: id.into(), ..Meta::default() },
        service_id: service.meta.id.clone(),
        slot: 1,
        node_id: Some(node.into()),
        desired_state: TaskState::Running,
        status: TaskStatus { state, ..TaskStatus::default() },
        spec: service.spec.clone(),
        job_iteration: 0,
        restart: Default::default(),
    }
}

#[test]
fn services_need_existing_networks_and_networks_in_use_stay() {
    let mut store = bootstrapped();
    apply(&mut store, 2, Op::CreateNetwork(network("n1", "blue", "")));
    let missing = apply(&mut store, 3, Op::Batch(vec![Change::Create(Object::Service(service_on("s1", &["nope"])))]));
    let Response::Rejected(StoreError::Invalid(message)) = missing else { panic!("{missing:?}") };
    assert!(message.contains("spec.networks[0]"), "{message}");
    apply_changes(&mut store, 3, vec![Change::Create(Object::Service(service_on("s1", &["n1"])))]);
    let in_use = apply(&mut store, 4, Op::RemoveNetwork { id: "n1".into() });
    let Response::Rejected(StoreError::InUse(message)) = in_use else { panic!("{in_use:?}") };
    assert!(message.contains("svc-s1"), "{message}");
    apply_changes(&mut store, 5, vec![Change::Delete { kind: Kind::Service, id: "s1".into(), expected_version: None }]);
    assert_eq!(apply(&mut store, 6, Op::RemoveNetwork { id: "n1".into() }), Response::Ok);
    assert!(store.networks.is_empty());
}

#[test]
fn leases_follow_assigned_and_running_tasks() {
    let mut store = bootstrapped();
    apply_changes(&mut store, 2, vec![Change::Create(Object::Node(node("w1", "10.0.0.2")))]);
    apply(&mut store, 3, Op::CreateNetwork(network("n1", "blue", "10.50.0.0/22")));
    apply(&mut store, 4, Op::CreateNetwork(network("n2", "red", "")));
    let service = service_on("s1", &["n1", "n2"]);
    apply_changes(&mut store, 5, vec![Change::Create(Object::Service(service.clone()))]);
    let mut pending = task_on("t0", &service, "w1", TaskState::Pending);
    pending.node_id = None;
    apply_changes(
        &mut store,
        6,
        vec![
            Change::Create(Object::Task(task_on("t1", &service, "m1", TaskState::Running))),
            Change::Create(Object::Task(task_on("t2", &service, "w1", TaskState::Assigned))),
            Change::Create(Object::Task(task_on("t3", &service, "w1", TaskState::Running))),
            Change::Create(Object::Task(pending)),
        ],
    );
    let mut ghost = task_on("t9", &service, "gone", TaskState::Running);
    ghost.meta.id = "t9".into();
    apply_changes(&mut store, 6, vec![Change::Create(Object::Task(ghost))]);
    let plan = plan_leases(&store);
    assert_eq!(plan.len(), 4, "two networks on two nodes, none for a node that is gone: {plan:?}");
    apply_changes(&mut store, 7, plan);
    assert!(plan_leases(&store).is_empty(), "converged");
    let blue: BTreeSet<String> =
        store.subnet_leases.values().filter(|l| l.network_id == "n1").map(|l| l.subnet.clone()).collect();
    assert_eq!(blue, BTreeSet::from(["10.50.0.0/24".to_string(), "10.50.1.0/24".to_string()]));
    assert!(store.subnet_leases.contains_key(&lease_id("n2", "w1")));

    // The tasks on w1 end: its leases are released, m1 keeps its own.
    let mut t2 = store.tasks["t2"].clone();
    let mut t3 = store.tasks["t3"].clone();
    t2.status.state = TaskState::Failed;
    t3.desired_state = TaskState::Shutdown;
    apply_changes(
        &mut store,
        8,
        vec![
            Change::Update { object: Object::Task(t2), expected_version: None },
            Change::Update { object: Object::Task(t3), expected_version: None },
        ],
    );
    let plan = plan_leases(&store);
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().all(|c| matches!(c, Change::Delete { kind: Kind::SubnetLease, .. })));
    apply_changes(&mut store, 9, plan);
    let nodes: BTreeSet<&str> = store.subnet_leases.values().map(|l| l.node_id.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["m1"]));
}

#[test]
fn a_full_network_gets_no_more_leases() {
    let mut store = bootstrapped();
    apply_changes(&mut store, 2, vec![Change::Create(Object::Node(node("w1", "10.0.0.2")))]);
    assert_eq!(apply(&mut store, 3, Op::CreateNetwork(network("n1", "tiny", "10.60.0.0/23"))), Response::Ok);
    let service = service_on("s1", &["n1"]);
    apply_changes(&mut store, 4, vec![Change::Create(Object::Service(service.clone()))]);
    apply_changes(
        &mut store,
        5,
        vec![
            Change::Create(Object::Task(task_on("t1", &service, "m1", TaskState::Running))),
            Change::Create(Object::Task(task_on("t2", &service, "w1", TaskState::Running))),
        ],
    );
    let plan = plan_leases(&store);
    assert_eq!(plan.len(), 1, "one /24 only, the other holds the virtual IPs: {plan:?}");
}

#[test]
fn the_last_slash_24_is_for_virtual_ips() {
    assert_eq!(vip_range(net("10.20.0.0/16")), Some(net("10.20.255.0/24")));
    assert_eq!(vip_range(net("10.20.2.0/23")), Some(net("10.20.3.0/24")));
    assert_eq!(vip_range(net("10.20.2.0/25")), None);
    let network = net("10.20.2.0/23");
    assert_eq!(next_lease(network, &[]), Some(net("10.20.2.0/24")));
    assert_eq!(next_lease(network, &[net("10.20.2.0/24")]), None, "the last /24 is never leased");
    let mut taken = BTreeSet::new();
    assert_eq!(next_vip(network, &taken), Some("10.20.3.1".parse().unwrap()), "not the .0");
    taken.insert("10.20.3.1".parse().unwrap());
    assert_eq!(next_vip(network, &taken), Some("10.20.3.2".parse().unwrap()));
    let full: BTreeSet<Ipv4Addr> = (1..=254).map(|i| Ipv4Addr::new(10, 20, 3, i)).collect();
    assert_eq!(next_vip(network, &full), None, "not the .255");
}

fn vips(store: &Store) -> BTreeMap<String, String> {
    store.virtual_ips.values().map(|v| (v.meta.id.clone(), v.address.clone())).collect()
}

#[test]
fn vip_services_get_one_virtual_ip_per_network() {
    let mut store = bootstrapped();
    apply(&mut store, 2, Op::CreateNetwork(network("n1", "blue", "10.50.0.0/22")));
    apply(&mut store, 3, Op::CreateNetwork(network("n2", "red", "10.60.0.0/16")));
    let mut dnsrr = service_on("s3", &["n1"]);
    dnsrr.spec.endpoint.mode = crate::store::EndpointMode::Dnsrr;
    apply_changes(
        &mut store,
        4,
        vec![
            Change::Create(Object::Service(service_on("s1", &["n1", "n2"]))),
            Change::Create(Object::Service(service_on("s2", &["n1"]))),
            Change::Create(Object::Service(dnsrr)),
        ],
    );
    let plan = plan_vips(&store);
    assert_eq!(plan.len(), 3, "{plan:?}");
    apply_changes(&mut store, 5, plan);
    assert!(plan_vips(&store).is_empty(), "converged");
    assert_eq!(
        vips(&store),
        BTreeMap::from([
            (vip_id("s1", "n1"), "10.50.3.1".to_string()),
            (vip_id("s1", "n2"), "10.60.255.1".to_string()),
            (vip_id("s2", "n1"), "10.50.3.2".to_string()),
        ]),
        "dnsrr gets none"
    );
    assert_eq!(store.virtual_ips[&vip_id("s1", "n2")].service_id, "s1");
    assert_eq!(store.virtual_ips[&vip_id("s1", "n2")].network_id, "n2");
}

#[test]
fn virtual_ips_are_released_and_never_handed_out_twice() {
    let mut store = bootstrapped();
    apply(&mut store, 2, Op::CreateNetwork(network("n1", "blue", "10.50.0.0/22")));
    apply(&mut store, 3, Op::CreateNetwork(network("n2", "red", "10.60.0.0/16")));
    let services = ["s1", "s2", "s3", "s4"].map(|id| service_on(id, &["n1", "n2"]));
    apply_changes(&mut store, 4, services.iter().cloned().map(|s| Change::Create(Object::Service(s))).collect());
    let plan = plan_vips(&store);
    apply_changes(&mut store, 5, plan);
    assert_eq!(store.virtual_ips.len(), 8);

    // s1 is removed, s2 detaches n2, s3 switches to dnsrr, and s5 arrives at the same time.
    let mut s2 = store.services["s2"].clone();
    s2.spec.networks.truncate(1);
    let mut s3 = store.services["s3"].clone();
    s3.spec.endpoint.mode = crate::store::EndpointMode::Dnsrr;
    apply_changes(
        &mut store,
        6,
        vec![
            Change::Delete { kind: Kind::Service, id: "s1".into(), expected_version: None },
            Change::Update { object: Object::Service(s2), expected_version: None },
            Change::Update { object: Object::Service(s3), expected_version: None },
            Change::Create(Object::Service(service_on("s5", &["n1"]))),
        ],
    );
    let plan = plan_vips(&store);
    let deleted: BTreeSet<&str> = plan
        .iter()
        .filter_map(|c| match c {
            Change::Delete { kind: Kind::VirtualIp, id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<String> =
        [vip_id("s1", "n1"), vip_id("s1", "n2"), vip_id("s2", "n2"), vip_id("s3", "n1"), vip_id("s3", "n2")].into();
    assert_eq!(deleted, expected.iter().map(String::as_str).collect());
    apply_changes(&mut store, 7, plan);
    assert_eq!(
        store.virtual_ips[&vip_id("s5", "n1")].address,
        "10.50.3.5",
        "the addresses released in the same plan are not reused at once"
    );
    assert!(plan_vips(&store).is_empty(), "converged");

    // Later, a released address is free again (the lowest first).
    apply_changes(&mut store, 8, vec![Change::Create(Object::Service(service_on("s6", &["n1"])))]);
    let plan = plan_vips(&store);
    apply_changes(&mut store, 9, plan);
    assert_eq!(store.virtual_ips[&vip_id("s6", "n1")].address, "10.50.3.1");
    let addresses: BTreeSet<String> =
        store.virtual_ips.values().filter(|v| v.network_id == "n1").map(|v| v.address.clone()).collect();
    assert_eq!(addresses.len(), store.virtual_ips.values().filter(|v| v.network_id == "n1").count(), "distinct");
}

#[test]
fn a_full_vip_range_gives_no_more_and_removing_the_network_drops_them() {
    let mut store = bootstrapped();
    apply(&mut store, 2, Op::CreateNetwork(network("n1", "blue", "10.50.0.0/23")));
    let services: Vec<Change> =
        (0..256).map(|i| Change::Create(Object::Service(service_on(&format!("s{i:03}"), &["n1"])))).collect();
    apply_changes(&mut store, 3, services);
    let plan = plan_vips(&store);
    assert_eq!(plan.len(), 254, "10.50.1.1 to 10.50.1.254 only");
    apply_changes(&mut store, 4, plan);
    assert!(plan_vips(&store).is_empty(), "the rest wait without failing");
    assert!(store.virtual_ips.values().all(|v| v.address.starts_with("10.50.1.")));

    // The services go; removing the network drops any virtual IP still left on it.
    let gone: Vec<Change> = store
        .services
        .keys()
        .map(|id| Change::Delete { kind: Kind::Service, id: id.clone(), expected_version: None })
        .collect();
    apply_changes(&mut store, 5, gone);
    let (response, events) = store.apply(6, &Command { now_ms: 6, op: Op::RemoveNetwork { id: "n1".into() } });
    assert_eq!(response, Response::Ok);
    assert!(store.virtual_ips.is_empty());
    assert_eq!(events.iter().filter(|e| matches!(e, crate::store::Event::Deleted(Object::VirtualIp(_)))).count(), 254);
}

// ---------------------------------------------------------------------------------------------
// The ingress network: the routing mesh for published ports.

fn ingress_network(id: &str) -> Box<Network> {
    let mut network = network(id, "ingress", "");
    network.ingress = true;
    network
}

fn publishing(service: &mut crate::store::Service, ports: &[(u16, crate::store::PublishMode)]) {
    service.spec.endpoint.ports = ports
        .iter()
        .map(|(published, mode)| crate::store::PortConfig { target: 80, published: *published, mode: *mode, ..Default::default() })
        .collect();
}

#[test]
fn a_task_is_on_the_ingress_network_when_its_spec_publishes_ports() {
    use crate::store::PublishMode::{Host, Ingress};
    let mut store = bootstrapped();
    apply(&mut store, 2, Op::CreateNetwork(network("n1", "blue", "")));
    let mut service = service_on("s1", &["n1"]);
    assert_eq!(task_network_ids(&store, &service.spec), ["n1"], "no ingress network yet");
    publishing(&mut service, &[(8080, Ingress)]);
    assert_eq!(task_network_ids(&store, &service.spec), ["n1"], "no ingress network yet");
    apply(&mut store, 3, Op::CreateNetwork(ingress_network("in")));
    assert_eq!(task_network_ids(&store, &service.spec), ["n1", "in"]);
    publishing(&mut service, &[(8080, Host)]);
    assert_eq!(task_network_ids(&store, &service.spec), ["n1", "in"], "host mode too");
    let listed = service_on("s2", &["in", "n1"]);
    let mut listed_spec = listed.spec.clone();
    listed_spec.endpoint.ports = service.spec.endpoint.ports.clone();
    assert_eq!(task_network_ids(&store, &listed_spec), ["in", "n1"], "not twice");
    assert_eq!(task_network_ids(&store, &service_on("s3", &["n1"]).spec), ["n1"], "no ports, no ingress");

    // One ingress network only; it is the routing mesh.
    let mut second = ingress_network("in2");
    second.name = "mesh".into();
    let second = apply(&mut store, 4, Op::CreateNetwork(second));
    let Response::Rejected(StoreError::Invalid(message)) = second else { panic!("{second:?}") };
    assert!(message.contains("already an ingress network"), "{message}");
    assert_eq!(store.networks["in"].subnet, "10.2.0.0/16", "from the pool like any other");
    assert_eq!(store.networks["in"].vni, 4097);
}

#[test]
fn every_ready_node_leases_the_ingress_network_while_an_ingress_port_is_published() {
    use crate::store::PublishMode::{Host, Ingress};
    let mut store = bootstrapped();
    let mut down = node("w2", "10.0.0.3");
    down.state = NodeState::Down;
    apply_changes(
        &mut store,
        2,
        vec![Change::Create(Object::Node(node("w1", "10.0.0.2"))), Change::Create(Object::Node(down))],
    );
    apply(&mut store, 3, Op::CreateNetwork(ingress_network("in")));
    let ingress_leases = |store: &Store| -> BTreeSet<String> {
        needed_leases(store).into_iter().filter(|(n, _)| n == "in").map(|(_, node)| node).collect()
    };
    // Host mode only: just the nodes running its tasks.
    let mut host = service_on("s1", &[]);
    publishing(&mut host, &[(8080, Host)]);
    apply_changes(
        &mut store,
        4,
        vec![
            Change::Create(Object::Service(host.clone())),
            Change::Create(Object::Task(task_on("t1", &host, "w2", TaskState::Running))),
        ],
    );
    assert_eq!(ingress_leases(&store), BTreeSet::from(["w2".to_string()]));
    // An ingress port: every READY node (m1 and w1), and w2 for its task.
    let mut mesh = service_on("s2", &[]);
    publishing(&mut mesh, &[(9090, Ingress)]);
    apply_changes(&mut store, 5, vec![Change::Create(Object::Service(mesh))]);
    let all = BTreeSet::from(["m1".to_string(), "w1".to_string(), "w2".to_string()]);
    assert_eq!(ingress_leases(&store), all);
    let plan = plan_leases(&store);
    assert_eq!(plan.len(), 3, "{plan:?}");
    apply_changes(&mut store, 6, plan);
    assert!(plan_leases(&store).is_empty(), "converged");
    assert!(plan_vips(&store).is_empty(), "no virtual IP on the ingress network");

    // The ingress network cannot go while a service publishes ports.
    let refused = apply(&mut store, 7, Op::RemoveNetwork { id: "in".into() });
    let Response::Rejected(StoreError::InUse(message)) = refused else { panic!("{refused:?}") };
    assert!(message.contains("the routing mesh is in use by services svc-s1, svc-s2"), "{message}");

    // No ingress port left: the leases go but the task's.
    apply_changes(&mut store, 8, vec![Change::Delete { kind: Kind::Service, id: "s2".into(), expected_version: None }]);
    let plan = plan_leases(&store);
    assert_eq!(plan.len(), 2, "{plan:?}");
    apply_changes(&mut store, 9, plan);
    let holders: BTreeSet<&str> = store.subnet_leases.values().map(|l| l.node_id.as_str()).collect();
    assert_eq!(holders, BTreeSet::from(["w2"]));
}

#[test]
fn the_store_refuses_a_port_another_service_holds() {
    use crate::store::PublishMode::{Host, Ingress};
    let mut store = bootstrapped();
    let mut web = service_on("s1", &[]);
    publishing(&mut web, &[(8080, Ingress)]);
    apply_changes(&mut store, 2, vec![Change::Create(Object::Service(web.clone()))]);
    let mut other = service_on("s2", &[]);
    publishing(&mut other, &[(8080, Host)]);
    let refused = apply(&mut store, 3, Op::Batch(vec![Change::Create(Object::Service(other))]));
    let Response::Rejected(StoreError::Invalid(message)) = refused else { panic!("{refused:?}") };
    assert!(message.contains("spec.endpoint.ports[0].published") && message.contains("svc-s1"), "{message}");
    // The service itself may be written again.
    apply_changes(&mut store, 4, vec![Change::Update { object: Object::Service(web), expected_version: None }]);
}

#[test]
fn services_get_no_virtual_ip_on_an_ingress_network_they_list() {
    let mut store = bootstrapped();
    apply(&mut store, 2, Op::CreateNetwork(ingress_network("in")));
    apply(&mut store, 3, Op::CreateNetwork(network("n1", "blue", "")));
    apply_changes(&mut store, 4, vec![Change::Create(Object::Service(service_on("s1", &["in", "n1"])))]);
    let plan = plan_vips(&store);
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert!(matches!(&plan[0], Change::Create(Object::VirtualIp(v)) if v.network_id == "n1"));
}
