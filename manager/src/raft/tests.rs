//! Tests of the Raft layer: encoding, openraft's storage conformance suite, durability across a
//! reopen, snapshots, the state handle, and a 3-node in-process cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;
use crate::store::{ClusterSettings, Command, Event, Object, Op, Response, StoreError};

mod cluster;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn membership(voters: &[u64]) -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> =
        voters.iter().map(|id| (*id, BasicNode { addr: format!("127.0.0.1:{}", 7000 + id) })).collect();
    let set: BTreeSet<u64> = voters.iter().copied().collect();
    Membership::new(vec![set], nodes)
}

fn bootstrap_command(cluster_id: &str) -> Command {
    Command {
        now_ms: 1_000,
        op: Op::Bootstrap {
            settings: Box::new(ClusterSettings {
                cluster_id: cluster_id.into(),
                created_at_ms: 1_000,
                ca_cert_pem: "cert".into(),
                ca_key_pem: "key".into(),
                worker_token_secret: "w".into(),
                manager_token_secret: "m".into(),
                node_cert_validity_secs: 3600,
                address_pool: Default::default(),
            }),
            first_manager: Box::new(crate::store::Node {
                meta: crate::store::Meta { id: "0000000000000001".into(), ..Default::default() },
                hostname: "m1".into(),
                role: crate::store::NodeRole::Manager,
                availability: crate::store::Availability::Active,
                labels: BTreeMap::new(),
                addr: "127.0.0.1:7001".into(),
                state: crate::store::NodeState::Unknown,
                resources: crate::store::NodeResources::default(),
            }),
        },
    }
}

/// A batch creating one secret named `name` (ids are the names).
fn create_secret(name: &str) -> Command {
    Command {
        now_ms: 2_000,
        op: Op::Batch(vec![crate::store::Change::Create(Object::Secret(crate::store::Blob {
            meta: crate::store::Meta { id: name.into(), ..Default::default() },
            name: name.into(),
            labels: BTreeMap::new(),
            data: name.as_bytes().to_vec(),
        }))]),
    }
}

fn normal(term: u64, index: u64, command: Command) -> Entry<TypeConfig> {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(command.into()) }
}

fn roundtrip<T: Serialize + DeserializeOwned + std::fmt::Debug>(value: &T) -> T {
    let bytes = transport::encode(value).expect("encode");
    transport::decode(&bytes).unwrap_or_else(|e| panic!("{value:?} does not round-trip: {e}"))
}

#[test]
fn postcard_round_trips_openraft_types() {
    let entries = vec![
        Entry::<TypeConfig> { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership(&[1, 2, 3])) },
        normal(2, 3, bootstrap_command("c1")),
    ];
    for entry in &entries {
        let back = roundtrip(entry);
        assert_eq!(format!("{back:?}"), format!("{entry:?}"));
    }

    let vote = Vote::new_committed(3, 2);
    assert_eq!(roundtrip(&vote), vote);

    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(1, 0)),
        entries: entries.clone(),
        leader_commit: Some(log_id(1, 1)),
    };
    assert_eq!(format!("{:?}", roundtrip(&append)), format!("{append:?}"));

    let vote_request = VoteRequest::new(Vote::new(4, 3), Some(log_id(2, 3)));
    assert_eq!(roundtrip(&vote_request), vote_request);

    let snapshot_request = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: SnapshotMeta {
            last_log_id: Some(log_id(2, 3)),
            last_membership: StoredMembership::new(Some(log_id(1, 2)), membership(&[1, 2])),
            snapshot_id: "2-3-1".into(),
        },
        offset: 10,
        data: vec![1, 2, 3],
        done: true,
    };
    assert_eq!(roundtrip(&snapshot_request), snapshot_request);

    // Replies as the transport sends them: Result<Resp, RaftError<..>>.
    let ok: Result<AppendEntriesResponse<u64>, RaftError<u64>> = Ok(AppendEntriesResponse::Conflict);
    assert_eq!(roundtrip(&ok), ok);
    let higher: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
        Ok(AppendEntriesResponse::HigherVote(Vote::new(9, 2)));
    assert_eq!(roundtrip(&higher), higher);
    let fatal: Result<VoteResponse<u64>, RaftError<u64>> =
        Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
    assert_eq!(roundtrip(&fatal), fatal);
    let storage_fatal: Result<VoteResponse<u64>, RaftError<u64>> =
        Err(RaftError::Fatal(openraft::error::Fatal::StorageError(StorageError::from(
            openraft::StorageIOError::write_vote(openraft::AnyError::error("disk full")),
        ))));
    assert_eq!(format!("{:?}", roundtrip(&storage_fatal)), format!("{storage_fatal:?}"));
    let vote_ok: Result<VoteResponse<u64>, RaftError<u64>> =
        Ok(VoteResponse::new(Vote::new(4, 3), Some(log_id(2, 3)), true));
    assert_eq!(roundtrip(&vote_ok), vote_ok);
    let mismatch: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> =
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: openraft::SnapshotSegmentId { id: "a".into(), offset: 0 },
            got: openraft::SnapshotSegmentId { id: "b".into(), offset: 5 },
        })));
    assert_eq!(roundtrip(&mismatch), mismatch);

    // Garbage from the network is an error, not a panic.
    assert!(transport::decode::<AppendEntriesRequest<TypeConfig>>(&[0xff; 7]).is_err());
    assert!(transport::decode::<VoteRequest<u64>>(&[]).is_err());
}

/// Opens fresh storage in a temporary directory for openraft's conformance suite; the directory
/// lives as long as the guard.
struct TempStorage;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStorage {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm, _) = open_storage(dir.path())
            .await
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::error(e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(TempStorage).expect("openraft storage suite");
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm, _handle) = open_storage(dir.path()).await.unwrap();
        log.blocking_append(vec![
            Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership(&[1, 2, 3])) },
        ])
        .await
        .unwrap();
        log.blocking_append((3..=6).map(|i| normal(2, i, create_secret(&format!("s{i}"))))).await.unwrap();
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(2, 4))).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
        log.truncate(log_id(2, 6)).await.unwrap();
        // Readable at once, from memory.
        assert_eq!(log.try_get_log_entries(0..100).await.unwrap().len(), 4);
        // Dropping the last handle flushes the queue and stops the writer thread.
    }
    let (mut log, _sm, _handle) = open_storage(dir.path()).await.unwrap();
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![2, 3, 4, 5]);
    assert!(matches!(&entries[0].payload, EntryPayload::Membership(m) if m == &membership(&[1, 2, 3])));
    assert!(matches!(&entries[1].payload, EntryPayload::Normal(c) if **c == create_secret("s3")));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
}

#[tokio::test]
async fn purge_everything_keeps_last_log_id() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm, _handle) = open_storage(dir.path()).await.unwrap();
        log.blocking_append((1..=3).map(|i| normal(1, i, create_secret(&format!("s{i}"))))).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
    }
    let (mut log, _sm, _handle) = open_storage(dir.path()).await.unwrap();
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
}

#[tokio::test]
async fn snapshot_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (before, meta) = {
        let (_log, mut sm, handle) = open_storage(dir.path()).await.unwrap();
        sm.apply(vec![
            Entry { log_id: log_id(1, 1), payload: EntryPayload::Membership(membership(&[1])) },
            normal(1, 2, bootstrap_command("c1")),
            normal(1, 3, create_secret("a")),
            normal(1, 4, create_secret("b")),
        ])
        .await
        .unwrap();
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 4)));
        assert!(snapshot.meta.snapshot_id.starts_with("1-4-"), "{}", snapshot.meta.snapshot_id);
        // Applied after the snapshot: gone after the reopen (the log would replay it).
        sm.apply(vec![normal(1, 5, create_secret("c"))]).await.unwrap();
        let before = handle.read().clone();
        assert!(before.secrets.contains_key("c"));
        (before, snapshot.meta)
    };
    let (_log, mut sm, handle) = open_storage(dir.path()).await.unwrap();
    let store = handle.read().clone();
    assert_eq!(store.settings, before.settings);
    assert_eq!(store.nodes, before.nodes);
    assert_eq!(store.secrets.keys().collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(store.secrets["a"], before.secrets["a"]);
    assert_eq!(handle.applied_index(), 4);
    let (applied, stored_membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(stored_membership.membership(), &membership(&[1]));
    let current = sm.get_current_snapshot().await.unwrap().expect("snapshot loaded");
    assert_eq!(current.meta, meta);
}

#[tokio::test]
async fn installing_a_snapshot_replaces_the_state_and_resets_watchers() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let (_l1, mut source, source_handle) = open_storage(source_dir.path()).await.unwrap();
    source.apply(vec![normal(1, 1, bootstrap_command("c1")), normal(1, 2, create_secret("a"))]).await.unwrap();
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let (_l2, mut target, handle) = open_storage(target_dir.path()).await.unwrap();
    target.apply(vec![normal(1, 1, create_secret("old"))]).await.unwrap();
    let mut watch = handle.subscribe();
    let mut received = target.begin_receiving_snapshot().await.unwrap();
    *received = Cursor::new(snapshot.snapshot.into_inner());
    target.install_snapshot(&snapshot.meta, received).await.unwrap();

    assert_eq!(*handle.read(), *source_handle.read());
    assert_eq!(handle.applied_index(), 2);
    assert_eq!(watch.try_recv().unwrap(), Watched::Reset { index: 2 });
    drop((_l2, target, handle));
    let (_l2, _target, handle) = open_storage(target_dir.path()).await.unwrap();
    assert_eq!(*handle.read(), *source_handle.read());

    // Bytes that are not a snapshot are refused and change nothing.
    let (_l3, mut other, other_handle) = open_storage(tempfile::tempdir().unwrap().path()).await.unwrap();
    let garbage = Box::new(Cursor::new(vec![7u8; 3]));
    assert!(other.install_snapshot(&snapshot.meta, garbage).await.is_err());
    assert_eq!(other_handle.applied_index(), 0);
}

#[tokio::test]
async fn state_handle_publishes_applied_index_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, handle) = open_storage(dir.path()).await.unwrap();
    let mut watch = handle.subscribe();
    assert_eq!(handle.applied_index(), 0);

    let waiter = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.wait_applied(4).await })
    };
    let responses = sm
        .apply(vec![
            normal(1, 1, bootstrap_command("c1")),
            Entry { log_id: log_id(1, 2), payload: EntryPayload::Blank },
            normal(1, 3, create_secret("a")),
        ])
        .await
        .unwrap();
    assert_eq!(responses, vec![Response::Ok, Response::Ok, Response::Ok]);
    assert_eq!(handle.applied_index(), 3);
    assert!(!waiter.is_finished());

    let responses = sm.apply(vec![normal(1, 4, create_secret("a"))]).await.unwrap();
    assert!(matches!(&responses[..], [Response::Rejected(StoreError::AlreadyExists { .. })]));
    tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("wait_applied(4) returns").unwrap();
    tokio::time::timeout(Duration::from_secs(1), handle.wait_applied(2)).await.expect("already applied");

    match watch.try_recv().unwrap() {
        Watched::Event { index: 1, event } if matches!(&*event, Event::Created(Object::Node(node)) if node.meta.version == 1) => {}
        other => panic!("unexpected {other:?}"),
    }
    match watch.try_recv().unwrap() {
        Watched::Event { index: 3, event } if matches!(&*event, Event::Created(Object::Secret(secret)) if secret.name == "a") => {}
        other => panic!("unexpected {other:?}"),
    }
    // The rejected command produced no event.
    assert!(watch.try_recv().is_err());
    assert!(handle.read().secrets.contains_key("a"));
}


#[tokio::test]
async fn a_failed_write_fails_its_callers_and_stops_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm, _handle) = open_storage(dir.path()).await.unwrap();
    log.blocking_append([normal(1, 1, create_secret("a"))]).await.unwrap();
    // The failure lands in the same transaction as (or one before) the next writes.
    log.inject_failure();
    assert!(log.blocking_append([normal(1, 2, create_secret("b"))]).await.is_err());
    assert!(log.save_vote(&Vote::new(2, 1)).await.is_err());
    assert!(log.save_committed(Some(log_id(1, 1))).await.is_err());
    assert!(log.blocking_append([normal(1, 3, create_secret("c"))]).await.is_err());
    drop(log);
    // What was committed before the failure is intact.
    let (mut log, _sm, _handle) = open_storage(dir.path()).await.unwrap();
    let indexes: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![1]);
    assert_eq!(log.read_vote().await.unwrap(), None);
}

#[test]
fn tuning_builds_a_validated_config() {
    let config = RaftTuning::default().config().unwrap();
    assert_eq!(config.heartbeat_interval, 50);
    assert_eq!((config.election_timeout_min, config.election_timeout_max), (100, 200));
    assert!(matches!(config.snapshot_policy, openraft::SnapshotPolicy::LogsSinceLast(5000)));
    assert_eq!(config.max_in_snapshot_log_to_keep, 1000);
    let bad = RaftTuning { heartbeat_ms: 200, election_min_ms: 150, ..RaftTuning::default() };
    assert!(bad.config().is_err());
    let bad = RaftTuning { election_min_ms: 300, election_max_ms: 300, ..RaftTuning::default() };
    assert!(bad.config().is_err());
}
