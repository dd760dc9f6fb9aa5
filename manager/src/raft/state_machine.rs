//! The Raft state machine: the typed [`Store`] in memory, plus the last applied log id and the
//! last membership. Snapshots are the postcard bytes of all three, written atomically to
//! `<data_dir>/snapshot.bin` (with their `SnapshotMeta`) and kept in memory for followers.
//!
//! The state is not persisted on apply: after a restart it is the last snapshot, and openraft
//! re-applies the committed entries after it (the log store persists the committed log id).

use std::io::{Cursor, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::TypeConfig;
use crate::store::{Event, Response, Store, Task, TasksByNode};

type NodeId = u64;

const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP: &str = "snapshot.bin.tmp";
/// Snapshot file layout: MAGIC, meta length (u64 LE), postcard(SnapshotMeta), snapshot data.
const MAGIC: &[u8; 8] = b"CLSNAP01";
/// Watch events buffered per subscriber; a subscriber further behind gets `Lagged` and must
/// resync from [`StateHandle::read`], as after [`Watched::Reset`].
const WATCH_CAPACITY: usize = 16384;

/// Why the Raft storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot open the Raft log {path}: {source}")]
    Log { path: PathBuf, source: Box<redb::Error> },
    #[error("the Raft log {path} is corrupt: {reason}")]
    CorruptLog { path: PathBuf, reason: String },
    #[error("the snapshot {path} is corrupt: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },
    #[error("opening the Raft storage was interrupted: {0}")]
    Join(String),
}

/// Everything a snapshot holds (its data is the postcard bytes of this).
#[derive(Default, Serialize, Deserialize)]
struct SmData {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    store: Store,
    /// Derived from `store` (rebuilt after a snapshot is loaded), kept up to date on apply.
    #[serde(skip)]
    tasks_by_node: TasksByNode,
}

impl SmData {
    /// `self` with its indexes rebuilt (after deserialising).
    fn indexed(mut self) -> SmData {
        self.tasks_by_node = TasksByNode::build(&self.store);
        self
    }
}

/// What watchers of the store receive. Every subscriber receives a clone of each item: the event
/// is shared, so that a clone costs a reference count and not a deep copy per subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// One change, made by the entry at log `index`.
    Event { index: u64, event: Arc<Event> },
    /// The whole state was replaced (snapshot installed) up to `index`: resync from
    /// [`StateHandle::read`].
    Reset { index: u64 },
}

struct HandleInner {
    data: RwLock<SmData>,
    applied: watch::Sender<u64>,
    events: broadcast::Sender<Watched>,
}

/// Read access to the applied state, shared by the API layer. Cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    inner: Arc<HandleInner>,
}

/// A read lock on the store. Do not hold it across `.await` (it is not `Send`).
pub struct StoreGuard<'a>(RwLockReadGuard<'a, SmData>);

impl Deref for StoreGuard<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0.store
    }
}

impl StoreGuard<'_> {
    /// The tasks placed on `node_id`, in id order, from the tasks-by-node index (no scan of the
    /// task table).
    pub fn tasks_on_node<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.0.tasks_by_node.tasks(&self.0.store, node_id)
    }
}

impl StateHandle {
    fn new(data: SmData) -> StateHandle {
        let applied = data.last_applied.map_or(0, |id| id.index);
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        StateHandle {
            inner: Arc::new(HandleInner { data: RwLock::new(data), applied: watch::channel(applied).0, events }),
        }
    }

    // Poisoning is ignored: a panic while applying kills openraft's state machine task (the node
    // stops applying and reports a fatal error); readers may still look at the last state.
    fn read_data(&self) -> RwLockReadGuard<'_, SmData> {
        self.inner.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_data(&self) -> RwLockWriteGuard<'_, SmData> {
        self.inner.data.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store as of [`applied_index`](Self::applied_index) (or later).
    pub fn read(&self) -> StoreGuard<'_> {
        StoreGuard(self.read_data())
    }

    /// The log index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Returns once the entry at `index` has been applied. Wrap it in a timeout.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.inner.applied.subscribe();
        // The sender lives in `self.inner`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|applied| *applied >= index).await;
    }

    /// Events of every applied entry from now on, and resets after snapshot installs.
    pub fn subscribe(&self) -> broadcast::Receiver<Watched> {
        self.inner.events.subscribe()
    }

    fn publish(&self, watched: Vec<Watched>, applied: Option<u64>) {
        for item in watched {
            // No subscriber is fine.
            let _ = self.inner.events.send(item);
        }
        if let Some(index) = applied {
            self.inner.applied.send_if_modified(|current| {
                let changed = *current != index;
                *current = index;
                changed
            });
        }
    }
}

/// The current snapshot: its meta and data.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The Raft state machine over the store.
pub struct StateMachineStore {
    handle: StateHandle,
    dir: PathBuf,
    /// Held while a snapshot file is written, so writes never interleave.
    snapshot: Arc<tokio::sync::Mutex<Option<StoredSnapshot>>>,
    counter: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the state machine in `dir`: the last snapshot if there is one, else empty. Blocking.
    pub(crate) fn open(dir: &Path) -> Result<StateMachineStore, StorageOpenError> {
        let path = dir.join(SNAPSHOT_FILE);
        let corrupt = |reason: String| StorageOpenError::CorruptSnapshot { path: path.clone(), reason };
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_TMP));
        let (data, snapshot) = match std::fs::read(&path) {
            Ok(bytes) => {
                let (meta, data) = parse_snapshot_file(&bytes).map_err(corrupt)?;
                let sm: SmData = postcard::from_bytes(data).map_err(|e| corrupt(e.to_string()))?;
                if sm.last_applied != meta.last_log_id {
                    return Err(corrupt("data and meta disagree on the last log id".into()));
                }
                (sm.indexed(), Some(StoredSnapshot { meta, data: data.to_vec() }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (SmData::default(), None),
            Err(source) => return Err(StorageOpenError::Io { path, source }),
        };
        Ok(StateMachineStore {
            handle: StateHandle::new(data),
            dir: dir.to_path_buf(),
            snapshot: Arc::new(tokio::sync::Mutex::new(snapshot)),
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The handle to the applied state.
    pub fn handle(&self) -> StateHandle {
        self.handle.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let data = self.handle.read_data();
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut responses = Vec::new();
        let mut watched = Vec::new();
        let mut applied = None;
        {
            let mut data = self.handle.write_data();
            for entry in entries {
                let index = entry.log_id.index;
                data.last_applied = Some(entry.log_id);
                applied = Some(index);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(command) => {
                        let (response, events) = data.store.apply(index, &command);
                        for event in &events {
                            data.tasks_by_node.apply(event);
                        }
                        watched.extend(events.into_iter().map(|event| Watched::Event { index, event: Arc::new(event) }));
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        data.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Ok
                    }
                };
                responses.push(response);
            }
        }
        self.handle.publish(watched, applied);
        Ok(responses)
    }

    /// Serialises the state now (under the read lock, so it is consistent); the builder only
    /// writes it out, in a task of its own while applying goes on.
    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let prepared = {
            let data = self.handle.read_data();
            postcard::to_allocvec(&*data).map(|bytes| {
                let meta = SnapshotMeta {
                    last_log_id: data.last_applied,
                    last_membership: data.last_membership.clone(),
                    snapshot_id: snapshot_id(data.last_applied, counter),
                };
                StoredSnapshot { meta, data: bytes }
            })
        };
        SnapshotBuilder {
            prepared: Some(prepared.map_err(|e| AnyError::new(&e))),
            dir: self.dir.clone(),
            current: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let fail = |e: AnyError| StorageIOError::read_snapshot(Some(meta.signature()), e);
        let data: SmData = postcard::from_bytes(&bytes).map_err(|e| fail(AnyError::new(&e)))?;
        if data.last_applied != meta.last_log_id {
            return Err(fail(AnyError::error("snapshot data and meta disagree on the last log id")).into());
        }
        let index = data.last_applied.map_or(0, |id| id.index);
        persist(&self.dir, &self.snapshot, StoredSnapshot { meta: meta.clone(), data: bytes }).await?;
        let data = data.indexed();
        *self.handle.write_data() = data;
        self.handle.publish(vec![Watched::Reset { index }], Some(index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.snapshot.lock().await.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        }))
    }
}

/// Writes out a snapshot prepared by [`StateMachineStore::get_snapshot_builder`].
pub struct SnapshotBuilder {
    prepared: Option<Result<StoredSnapshot, AnyError>>,
    dir: PathBuf,
    current: Arc<tokio::sync::Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let prepared = match self.prepared.take() {
            Some(Ok(prepared)) => prepared,
            Some(Err(error)) => return Err(StorageIOError::write_snapshot(None, error).into()),
            None => {
                return Err(StorageIOError::write_snapshot(None, AnyError::error("snapshot builder used twice")).into());
            }
        };
        let snapshot =
            Snapshot { meta: prepared.meta.clone(), snapshot: Box::new(Cursor::new(prepared.data.clone())) };
        persist(&self.dir, &self.current, prepared).await?;
        Ok(snapshot)
    }
}

fn snapshot_id(last: Option<LogId<NodeId>>, counter: u64) -> String {
    match last {
        Some(id) => format!("{}-{}-{counter}", id.leader_id.term, id.index),
        None => format!("0-0-{counter}"),
    }
}

/// Makes `snapshot` the current one, on disk then in memory, unless the current one is newer
/// (a snapshot installed while this one was being built).
async fn persist(
    dir: &Path,
    current: &tokio::sync::Mutex<Option<StoredSnapshot>>,
    snapshot: StoredSnapshot,
) -> Result<(), StorageError<NodeId>> {
    let mut current = current.lock().await;
    if current.as_ref().is_some_and(|existing| existing.meta.last_log_id > snapshot.meta.last_log_id) {
        return Ok(());
    }
    let signature = snapshot.meta.signature();
    let meta =
        postcard::to_allocvec(&snapshot.meta).map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
    let dir = dir.to_path_buf();
    let written = tokio::task::spawn_blocking(move || {
        let result = write_snapshot_file(&dir, &meta, &snapshot.data);
        (snapshot, result)
    })
    .await;
    match written {
        Ok((snapshot, Ok(()))) => {
            *current = Some(snapshot);
            Ok(())
        }
        Ok((_, Err(e))) => Err(StorageIOError::write_snapshot(Some(signature), &e).into()),
        Err(e) => Err(StorageIOError::write_snapshot(Some(signature), &e).into()),
    }
}

/// Writes the snapshot file atomically: temporary file, fsync, rename, fsync of the directory.
fn write_snapshot_file(dir: &Path, meta: &[u8], data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&(meta.len() as u64).to_le_bytes())?;
        file.write_all(meta)?;
        file.write_all(data)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Splits a snapshot file into its meta and its data.
fn parse_snapshot_file(bytes: &[u8]) -> Result<(SnapshotMeta<NodeId, BasicNode>, &[u8]), String> {
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a snapshot file")?;
    let (len, rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| "meta length too large")?;
    if rest.len() < len {
        return Err("truncated".into());
    }
    let (meta, data) = rest.split_at(len);
    let meta = postcard::from_bytes(meta).map_err(|e| format!("meta: {e}"))?;
    Ok((meta, data))
}
