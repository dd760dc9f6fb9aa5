use super::*;
use crate::store::{Command, Response, Service, StoreError};

fn spec(name: &str, data: &[u8]) -> pb::SecretSpec {
    pb::SecretSpec { name: name.into(), labels: HashMap::new(), data: data.to_vec() }
}

fn apply(store: &mut Store, op: Op) -> Response {
    store.apply(1, &Command { now_ms: 1, op }).0
}

fn service(name: &str, secrets: &[&str], configs: &[&str]) -> Service {
    let refs = |ids: &[&str]| ids.iter().map(|id| FileRef { id: id.to_string(), ..FileRef::default() }).collect();
    Service {
        meta: Meta { id: format!("svc-{name}"), ..Meta::default() },
        name: name.into(),
        labels: BTreeMap::new(),
        spec: ServiceSpec { secrets: refs(secrets), configs: refs(configs), ..ServiceSpec::default() },
        previous_spec: None,
        job_iteration: 0,
        update_status: None,
    }
}

#[test]
fn names_follow_swarm_rules() {
    assert!(valid_name("db_password.v1-2"));
    assert!(valid_name(&"a".repeat(64)));
    assert!(!valid_name(&"a".repeat(65)));
    assert!(!valid_name(""));
    assert!(!valid_name("-x"));
    assert!(!valid_name("a/b"));
    assert!(!valid_name("a b"));
}

#[test]
fn invalid_specs_name_the_field() {
    let key = DataKey::generate().unwrap();
    let err = blob_from_spec(Kind::Secret, &spec("bad name", b"x"), &key).unwrap_err();
    assert!(err.message().contains("spec.name"), "{}", err.message());
    let err = blob_from_spec(Kind::Config, &spec("big", &vec![0u8; MAX_DATA + 1]), &key).unwrap_err();
    assert!(err.message().contains("spec.data") && err.message().contains("config"), "{}", err.message());
    assert!(blob_from_spec(Kind::Config, &spec("ok", &vec![0u8; MAX_DATA]), &key).is_ok());
    let err = blob_from_spec(Kind::Secret, &spec("empty", b""), &key).unwrap_err();
    assert!(err.message().contains("spec.data"));
    let mut labelled = spec("l", b"x");
    labelled.labels.insert("a=b".into(), "c".into());
    assert!(blob_from_spec(Kind::Secret, &labelled, &key).unwrap_err().message().contains("spec.labels"));
}

#[test]
fn secret_data_is_encrypted_in_what_raft_stores() {
    let key = DataKey::generate().unwrap();
    let plaintext = b"correct-horse-battery-staple";
    let blob = blob_from_spec(Kind::Secret, &spec("pw", plaintext), &key).unwrap();
    let command = Command { now_ms: 1, op: Op::Batch(vec![Change::Create(Object::Secret(blob.clone()))]) };
    let encoded = postcard::to_allocvec(&command).unwrap();
    assert!(!encoded.windows(plaintext.len()).any(|w| w == plaintext), "plaintext in the Raft entry");
    let mut store = Store::default();
    assert_eq!(apply(&mut store, command.op), Response::Ok);
    let snapshot = postcard::to_allocvec(&store).unwrap();
    assert!(!snapshot.windows(plaintext.len()).any(|w| w == plaintext), "plaintext in the snapshot");
    assert_eq!(key.decrypt(&blob.meta.id, &store.secrets[&blob.meta.id].data).unwrap(), plaintext);
    // Never returned by the API; configs are.
    assert!(to_proto(&store, Kind::Secret, &store.secrets[&blob.meta.id]).spec.unwrap().data.is_empty());
    let config = blob_from_spec(Kind::Config, &spec("conf", b"plain"), &key).unwrap();
    assert_eq!(config.data, b"plain");
    assert_eq!(to_proto(&store, Kind::Config, &config).spec.unwrap().data, b"plain");
}

#[test]
fn removal_is_refused_while_a_service_uses_it() {
    let key = DataKey::generate().unwrap();
    let mut store = Store::default();
    let secret = blob_from_spec(Kind::Secret, &spec("pw", b"x"), &key).unwrap();
    let config = blob_from_spec(Kind::Config, &spec("conf", b"y"), &key).unwrap();
    let (sid, cid) = (secret.meta.id.clone(), config.meta.id.clone());
    assert_eq!(apply(&mut store, Op::Batch(vec![Change::Create(Object::Secret(secret)), Change::Create(Object::Config(config))])), Response::Ok);
    // Names are unique per kind.
    let again = blob_from_spec(Kind::Secret, &spec("pw", b"z"), &key).unwrap();
    assert!(matches!(apply(&mut store, Op::Batch(vec![Change::Create(Object::Secret(again))])), Response::Rejected(StoreError::NameInUse { .. })));
    let same_name_config = blob_from_spec(Kind::Config, &spec("pw", b"z"), &key).unwrap();
    assert_eq!(apply(&mut store, Op::Batch(vec![Change::Create(Object::Config(same_name_config))])), Response::Ok);

    let web = service("web", &[&sid], &[&cid]);
    assert_eq!(apply(&mut store, Op::Batch(vec![Change::Create(Object::Service(web))])), Response::Ok);
    let refused = apply(&mut store, Op::Batch(vec![Change::Delete { kind: Kind::Secret, id: sid.clone(), expected_version: None }]));
    match refused {
        Response::Rejected(StoreError::InUse(message)) => assert!(message.contains("in use by service web"), "{message}"),
        other => panic!("{other:?}"),
    }
    let refused = apply(&mut store, Op::Batch(vec![Change::Delete { kind: Kind::Config, id: cid.clone(), expected_version: None }]));
    assert!(matches!(refused, Response::Rejected(StoreError::InUse(_))));
    // A service cannot reference what does not exist.
    let broken = service("broken", &["nope"], &[]);
    match apply(&mut store, Op::Batch(vec![Change::Create(Object::Service(broken))])) {
        Response::Rejected(StoreError::Invalid(message)) => assert!(message.contains("spec.secrets[0].source"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(apply(&mut store, Op::Batch(vec![Change::Delete { kind: Kind::Service, id: "svc-web".into(), expected_version: None }])), Response::Ok);
    assert_eq!(apply(&mut store, Op::Batch(vec![Change::Delete { kind: Kind::Secret, id: sid, expected_version: None }])), Response::Ok);
}

#[test]
fn references_resolve_to_ids_with_default_targets() {
    let key = DataKey::generate().unwrap();
    let mut store = Store::default();
    let secret = blob_from_spec(Kind::Secret, &spec("pw", b"x"), &key).unwrap();
    let config = blob_from_spec(Kind::Config, &spec("nginx.conf", b"y"), &key).unwrap();
    let (sid, cid) = (secret.meta.id.clone(), config.meta.id.clone());
    store.secrets.insert(sid.clone(), secret);
    store.configs.insert(cid.clone(), config);
    let refs = vec![pb::FileReference { source: "pw".into(), ..Default::default() }];
    let mut spec = ServiceSpec { secrets: file_refs("secrets", &refs).unwrap(), ..ServiceSpec::default() };
    spec.configs = file_refs("configs", &[pb::FileReference { source: cid[..6].into(), mode: Some(0o400), ..Default::default() }]).unwrap();
    resolve_files(&store, &mut spec).unwrap();
    assert_eq!(spec.secrets[0], FileRef { id: sid.clone(), name: "pw".into(), target: "pw".into(), uid: 0, gid: 0, mode: 0o444 });
    assert_eq!((spec.configs[0].id.as_str(), spec.configs[0].target.as_str(), spec.configs[0].mode), (cid.as_str(), "/nginx.conf", 0o400));

    let mut unknown = ServiceSpec { secrets: file_refs("secrets", &[pb::FileReference { source: "pw".into(), ..Default::default() }, pb::FileReference { source: "ghost".into(), ..Default::default() }]).unwrap(), ..ServiceSpec::default() };
    let err = resolve_files(&store, &mut unknown).unwrap_err();
    assert!(err.message().contains("spec.secrets[1].source") && err.message().contains("ghost"), "{}", err.message());

    let err = file_refs("secrets", &[pb::FileReference { source: "pw".into(), target: "a/b".into(), ..Default::default() }]).unwrap_err();
    assert!(err.message().contains("spec.secrets[0].target"));
    let err = file_refs("configs", &[pb::FileReference { source: "c".into(), target: "relative".into(), ..Default::default() }]).unwrap_err();
    assert!(err.message().contains("spec.configs[0].target"));
    let err = file_refs("configs", &[pb::FileReference { source: "c".into(), mode: Some(0o17777), ..Default::default() }]).unwrap_err();
    assert!(err.message().contains("spec.configs[0].mode"));
    let mut twice = ServiceSpec { secrets: file_refs("secrets", &[pb::FileReference { source: "pw".into(), ..Default::default() }, pb::FileReference { source: sid.clone(), ..Default::default() }]).unwrap(), ..ServiceSpec::default() };
    assert!(resolve_files(&store, &mut twice).unwrap_err().message().contains("spec.secrets[1].target"));
}
