use super::*;

fn node(id: &str, hostname: &str) -> Node {
    Node {
        meta: Meta { id: id.into(), ..Meta::default() },
        hostname: hostname.into(),
        role: NodeRole::Worker,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        addr: "10.0.0.1".into(),
        state: NodeState::Unknown,
        resources: NodeResources::default(),
    }
}

fn network(id: &str, name: &str) -> Object {
    Object::Network(Network {
        meta: Meta { id: id.into(), ..Meta::default() },
        name: name.into(),
        labels: BTreeMap::new(),
        subnet: "10.10.0.0/16".into(),
        vni: 4097,
        attachable: false,
        driver: "overlay".into(),
        ingress: false,
    })
}

fn settings() -> ClusterSettings {
    ClusterSettings {
        cluster_id: "c1".into(),
        created_at_ms: 1,
        ca_cert_pem: "cert".into(),
        ca_key_pem: "key".into(),
        worker_token_secret: "w".into(),
        manager_token_secret: "m".into(),
        node_cert_validity_secs: 3600,
        address_pool: Default::default(),
    }
}

fn command(op: Op) -> Command {
    Command { now_ms: 1000, op }
}

#[test]
fn bootstrap_once() {
    let mut store = Store::default();
    let op = Op::Bootstrap { settings: Box::new(settings()), first_manager: Box::new(node("a", "m1")) };
    let (response, events) = store.apply(1, &command(op.clone()));
    assert_eq!(response, Response::Ok);
    assert_eq!(events.len(), 1);
    assert_eq!(store.nodes["a"].meta.version, 1);
    let (response, events) = store.apply(2, &command(op));
    assert_eq!(response, Response::Rejected(StoreError::AlreadyBootstrapped));
    assert!(events.is_empty());
}

#[test]
fn update_node_merges_labels_and_bumps_version() {
    let mut store = Store::default();
    store.apply(1, &command(Op::Bootstrap { settings: Box::new(settings()), first_manager: Box::new(node("a", "m1")) }));
    let op = Op::UpdateNode {
        id: "a".into(),
        availability: Some(Availability::Drain),
        labels_add: BTreeMap::from([("zone".to_string(), "1".to_string())]),
        labels_remove: vec![],
    };
    let (response, _) = store.apply(7, &command(op));
    let Response::Node(updated) = response else { panic!("expected a node") };
    assert_eq!(updated.availability, Availability::Drain);
    assert_eq!(updated.labels["zone"], "1");
    assert_eq!(updated.meta.version, 7);
    let remove = Op::UpdateNode {
        id: "a".into(),
        availability: None,
        labels_add: BTreeMap::new(),
        labels_remove: vec!["zone".into()],
    };
    store.apply(8, &command(remove));
    assert!(store.nodes["a"].labels.is_empty());
    assert_eq!(store.nodes["a"].availability, Availability::Drain);
}

#[test]
fn batch_is_all_or_nothing() {
    let mut store = Store::default();
    store.apply(1, &command(Op::Batch(vec![Change::Create(network("n1", "front"))])));
    // The second change reuses the name: the first must be undone.
    let batch = Op::Batch(vec![
        Change::Create(network("n2", "back")),
        Change::Create(network("n3", "front")),
    ]);
    let (response, events) = store.apply(2, &command(batch));
    assert!(matches!(response, Response::Rejected(StoreError::NameInUse { .. })));
    assert!(events.is_empty());
    assert_eq!(store.networks.len(), 1);
    // A delete followed by a failing update restores the deleted object.
    let batch = Op::Batch(vec![
        Change::Delete { kind: Kind::Network, id: "n1".into(), expected_version: Some(1) },
        Change::Update { object: network("zz", "x"), expected_version: None },
    ]);
    let (response, _) = store.apply(3, &command(batch));
    assert!(matches!(response, Response::Rejected(StoreError::NotFound { .. })));
    assert_eq!(store.networks["n1"].meta.version, 1);
}

#[test]
fn optimistic_versions_are_checked() {
    let mut store = Store::default();
    store.apply(1, &command(Op::Batch(vec![Change::Create(network("n1", "front"))])));
    let stale = Op::Batch(vec![Change::Update { object: network("n1", "renamed"), expected_version: Some(0) }]);
    let (response, _) = store.apply(2, &command(stale));
    assert!(matches!(response, Response::Rejected(StoreError::VersionConflict { expected: 0, actual: 1, .. })));
    let fresh = Op::Batch(vec![Change::Update { object: network("n1", "renamed"), expected_version: Some(1) }]);
    let (response, events) = store.apply(3, &command(fresh));
    assert_eq!(response, Response::Ok);
    assert_eq!(events.len(), 1);
    assert_eq!(store.networks["n1"].name, "renamed");
    assert_eq!(store.networks["n1"].meta.created_at_ms, 1000);
    assert_eq!(store.networks["n1"].meta.version, 3);
}

#[test]
fn find_node_by_id_prefix_and_hostname() {
    let mut store = Store::default();
    store.nodes.insert("00aa".into(), node("00aa", "alpha"));
    store.nodes.insert("00ab".into(), node("00ab", "beta"));
    assert_eq!(store.find_node("alpha").map(|n| n.meta.id.clone()), Ok("00aa".into()));
    assert_eq!(store.find_node("00ab").map(|n| n.meta.id.clone()), Ok("00ab".into()));
    assert!(store.find_node("00a").unwrap_err().contains("ambiguous"));
    assert!(store.find_node("zz").unwrap_err().contains("not found"));
}

#[test]
fn rotate_token_needs_bootstrap() {
    let mut store = Store::default();
    let op = Op::RotateJoinToken { role: NodeRole::Worker, secret: "new".into() };
    assert_eq!(store.apply(1, &command(op.clone())).0, Response::Rejected(StoreError::NotBootstrapped));
    store.apply(2, &command(Op::Bootstrap { settings: Box::new(settings()), first_manager: Box::new(node("a", "m1")) }));
    assert_eq!(store.apply(3, &command(op)).0, Response::Ok);
    assert_eq!(store.settings.as_ref().map(|s| s.worker_token_secret.as_str()), Some("new"));
}

#[test]
fn multi_applies_each_operation_on_its_own() {
    let mut store = Store::default();
    store.apply(1, &command(Op::Bootstrap { settings: Box::new(settings()), first_manager: Box::new(node("a", "m1")) }));
    let label = |key: &str| Op::UpdateNode {
        id: "a".into(),
        availability: None,
        labels_add: BTreeMap::from([(key.to_string(), "1".to_string())]),
        labels_remove: vec![],
    };
    let missing = Op::UpdateNode {
        id: "nope".into(),
        availability: None,
        labels_add: BTreeMap::new(),
        labels_remove: vec![],
    };
    let multi = Op::Multi(vec![label("x"), missing, label("y"), Op::Multi(vec![])]);
    let (response, events) = store.apply(2, &command(multi));
    let Response::Multi(responses) = response else { panic!("expected one response per operation") };
    assert_eq!(responses.len(), 4);
    assert!(matches!(responses[0], Response::Node(_)));
    assert!(matches!(responses[1], Response::Rejected(StoreError::NotFound { .. })));
    assert!(matches!(responses[2], Response::Node(_)));
    assert_eq!(responses[3], Response::Rejected(StoreError::NestedMulti));
    // The refused operation did not stop the others.
    assert_eq!(store.nodes["a"].labels.len(), 2);
    assert_eq!(events.len(), 2);
}
