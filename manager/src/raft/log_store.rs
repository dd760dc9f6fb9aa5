//! The Raft log store: log entries, vote, committed log id and last purged log id in redb
//! (`<data_dir>/raft.redb`).
//!
//! The unpurged log also lives in memory, so reads never touch the disk and entries are readable
//! as soon as `append` returns. Durability comes from one writer thread: it takes the ordered
//! operations queued on its channel, writes all of them in a single redb write transaction with
//! fsync, and only after the commit fires the append callbacks and wakes the `save_vote` callers.
//! While one transaction commits, the next batch queues up (group commit).
//!
//! Memory is updated and the operation queued under the same lock, so disk order = memory order.
//! After a failed write the log is dead: the failed batch and everything queued later complete
//! with an error, and later calls return errors at once (openraft then stops the node).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use std::time::Duration;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{StorageOpenError, TypeConfig};

type NodeId = u64;

/// Log index -> postcard bytes of the `Entry`.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Metadata key -> postcard bytes of the value.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// Operations the writer thread makes durable, in the order they were queued.
enum Op {
    Append { entries: Vec<(u64, Vec<u8>)>, done: LogFlushed<TypeConfig> },
    /// Delete entries with index >= `since`.
    Truncate { since: u64 },
    /// Delete entries with index <= `upto` and record the last purged log id.
    Purge { upto: u64, last_purged: Vec<u8> },
    SaveVote { vote: Vec<u8>, done: tokio::sync::oneshot::Sender<Result<(), String>> },
    SaveCommitted { committed: Option<Vec<u8>> },
    /// Makes the transaction it is in fail, to test the failure path.
    #[cfg(test)]
    InjectFailure,
}

/// The in-memory copy of everything on disk (plus what is queued for it).
#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

struct Shared {
    mem: Mutex<Mem>,
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Op>>,
    /// Set by the writer when a write failed.
    failed: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Shared {
    /// Closes the channel and waits for the writer to flush what is queued and close the
    /// database, so the directory can be reopened at once.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The Raft log storage. Clones share the same log (a clone is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens (or creates) the log at `path`, loads it into memory and starts the writer thread.
    /// Blocking.
    pub(crate) fn open(path: &Path) -> Result<LogStore, StorageOpenError> {
        let corrupt = |reason: String| StorageOpenError::CorruptLog { path: path.to_path_buf(), reason };
        let db_error = |e: redb::Error| StorageOpenError::Log { path: path.to_path_buf(), source: Box::new(e) };
        let db = Database::create(path).map_err(|e| db_error(e.into()))?;
        // Create the tables so that reads on a fresh database succeed.
        let txn = db.begin_write().map_err(|e| db_error(e.into()))?;
        txn.open_table(LOGS).map_err(|e| db_error(e.into()))?;
        txn.open_table(META).map_err(|e| db_error(e.into()))?;
        txn.commit().map_err(|e| db_error(e.into()))?;

        let mut mem = Mem::default();
        let read = db.begin_read().map_err(|e| db_error(e.into()))?;
        let meta = read.open_table(META).map_err(|e| db_error(e.into()))?;
        let get_meta = |key: &str| -> Result<Option<Vec<u8>>, StorageOpenError> {
            Ok(meta.get(key).map_err(|e| db_error(e.into()))?.map(|v| v.value().to_vec()))
        };
        if let Some(bytes) = get_meta(KEY_VOTE)? {
            mem.vote = Some(postcard::from_bytes(&bytes).map_err(|e| corrupt(format!("vote: {e}")))?);
        }
        if let Some(bytes) = get_meta(KEY_COMMITTED)? {
            mem.committed = Some(postcard::from_bytes(&bytes).map_err(|e| corrupt(format!("committed: {e}")))?);
        }
        if let Some(bytes) = get_meta(KEY_LAST_PURGED)? {
            mem.last_purged = Some(postcard::from_bytes(&bytes).map_err(|e| corrupt(format!("last purged: {e}")))?);
        }
        let logs = read.open_table(LOGS).map_err(|e| db_error(e.into()))?;
        for item in logs.iter().map_err(|e| db_error(e.into()))? {
            let (key, value) = item.map_err(|e| db_error(e.into()))?;
            let index = key.value();
            let entry: Entry<TypeConfig> =
                postcard::from_bytes(value.value()).map_err(|e| corrupt(format!("entry {index}: {e}")))?;
            if entry.get_log_id().index != index {
                return Err(corrupt(format!("entry stored at {index} has log id {}", entry.get_log_id())));
            }
            mem.entries.insert(index, entry);
        }
        drop(logs);
        drop(meta);
        drop(read);

        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let writer_failed = failed.clone();
        let writer = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run_writer(db, rx, &writer_failed))
            .map_err(|source| StorageOpenError::Io { path: path.to_path_buf(), source })?;
        Ok(LogStore { shared: Arc::new(Shared { mem: Mutex::new(mem), tx: Some(tx), failed, writer: Some(writer) }) })
    }

    /// Makes the writer's next transaction fail, as a disk error would.
    #[cfg(test)]
    pub(crate) fn inject_failure(&self) {
        let _mem = self.mem();
        let _ = self.send(Op::InjectFailure);
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        // A panic while holding the lock cannot leave `Mem` half-updated in a way we rely on:
        // every update is a single insert/remove/assignment.
        self.shared.mem.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `op` for the writer. Call with the memory lock held, to keep disk order = memory
    /// order.
    fn send(&self, op: Op) -> Result<(), Op> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(op);
        }
        match &self.shared.tx {
            Some(tx) => tx.send(op).map_err(|mpsc::SendError(op)| op),
            None => Err(op),
        }
    }
}

fn writer_gone() -> AnyError {
    AnyError::error("the Raft log is unusable after a failed write")
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    postcard::to_allocvec(value).map_err(|e| AnyError::new(&e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.mem().entries.range(range).map(|(_, entry)| entry.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = self.mem();
        let last_purged_log_id = mem.last_purged;
        let last_log_id = mem.entries.last_key_value().map(|(_, e)| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Returns once the vote is on disk.
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(vote).map_err(StorageIOError::write_vote)?;
        let (done, wait) = tokio::sync::oneshot::channel();
        {
            let mut mem = self.mem();
            self.send(Op::SaveVote { vote: bytes, done })
                .map_err(|_| StorageIOError::write_vote(writer_gone()))?;
            mem.vote = Some(*vote);
        }
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StorageIOError::write_vote(AnyError::error(message)).into()),
            Err(_) => Err(StorageIOError::write_vote(writer_gone()).into()),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.mem().vote)
    }

    /// Queued like every write; not awaited (openraft does not need it durable at once).
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let bytes = match &committed {
            Some(log_id) => Some(encode(log_id).map_err(StorageIOError::write)?),
            None => None,
        };
        let mut mem = self.mem();
        self.send(Op::SaveCommitted { committed: bytes }).map_err(|_| StorageIOError::write(writer_gone()))?;
        mem.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.mem().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let bytes = encode(entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let mut mem = self.mem();
        self.send(Op::Append { entries: encoded, done: callback })
            .map_err(|_| StorageIOError::write_logs(writer_gone()))?;
        for entry in entries {
            mem.entries.insert(entry.log_id.index, entry);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut mem = self.mem();
        self.send(Op::Truncate { since: log_id.index }).map_err(|_| StorageIOError::write_logs(writer_gone()))?;
        mem.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(&log_id).map_err(StorageIOError::write_logs)?;
        let mut mem = self.mem();
        self.send(Op::Purge { upto: log_id.index, last_purged: bytes })
            .map_err(|_| StorageIOError::write_logs(writer_gone()))?;
        let kept = match log_id.index.checked_add(1) {
            Some(next) => mem.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        mem.entries = kept;
        mem.last_purged = Some(log_id);
        Ok(())
    }
}

/// At most this many operations go into one write transaction.
const MAX_BATCH: usize = 4096;

/// How long the writer waits for one more operation while it sees concurrent load.
const GROUP_COMMIT_LINGER: Duration = Duration::from_micros(300);

/// The writer thread: group-commits queued operations until the channel closes. After a failed
/// write it fails every operation until then.
fn run_writer(db: Database, rx: mpsc::Receiver<Op>, failed: &AtomicBool) {
    let mut previous_batch_len = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Under concurrent load (the previous batch held several operations) wait a moment for
        // more: every commit costs an fsync and redb's page flush, so larger batches buy
        // throughput. A lone writer never waits.
        let linger = if previous_batch_len > 1 { GROUP_COMMIT_LINGER } else { Duration::ZERO };
        while batch.len() < MAX_BATCH {
            let next = if linger.is_zero() { rx.try_recv().ok() } else { rx.recv_timeout(linger).ok() };
            match next {
                Some(op) => batch.push(op),
                None => break,
            }
        }
        previous_batch_len = batch.len();
        match write_batch(&db, &batch) {
            Ok(()) => complete(batch, None),
            Err(error) => {
                let message = format!("writing the Raft log failed: {error}");
                tracing::error!("{message}");
                // Set before reporting, so that callers who saw the error cannot queue more.
                failed.store(true, Ordering::SeqCst);
                drop(db);
                complete(batch, Some(&message));
                for op in rx.iter() {
                    complete(vec![op], Some(&message));
                }
                return;
            }
        }
    }
}

/// Writes `batch` in one transaction and commits it with fsync.
fn write_batch(db: &Database, batch: &[Op]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut logs = txn.open_table(LOGS)?;
        let mut meta = txn.open_table(META)?;
        for op in batch {
            match op {
                Op::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        logs.insert(*index, bytes.as_slice())?;
                    }
                }
                Op::Truncate { since } => logs.retain_in(*since.., |_, _| false)?,
                Op::Purge { upto, last_purged } => {
                    logs.retain_in(..=*upto, |_, _| false)?;
                    meta.insert(KEY_LAST_PURGED, last_purged.as_slice())?;
                }
                Op::SaveVote { vote, .. } => {
                    meta.insert(KEY_VOTE, vote.as_slice())?;
                }
                Op::SaveCommitted { committed: Some(bytes) } => {
                    meta.insert(KEY_COMMITTED, bytes.as_slice())?;
                }
                Op::SaveCommitted { committed: None } => {
                    meta.remove(KEY_COMMITTED)?;
                }
                #[cfg(test)]
                Op::InjectFailure => return Err(redb::Error::Io(std::io::Error::other("injected failure"))),
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Reports the outcome of `ops` to their waiters, in order.
fn complete(ops: Vec<Op>, error: Option<&str>) {
    for op in ops {
        match op {
            Op::Append { done, .. } => {
                done.log_io_completed(match error {
                    None => Ok(()),
                    Some(message) => Err(std::io::Error::other(message.to_string())),
                });
            }
            Op::SaveVote { done, .. } => {
                let _ = done.send(match error {
                    None => Ok(()),
                    Some(message) => Err(message.to_string()),
                });
            }
            Op::Truncate { .. } | Op::Purge { .. } | Op::SaveCommitted { .. } => {}
            #[cfg(test)]
            Op::InjectFailure => {}
        }
    }
}
