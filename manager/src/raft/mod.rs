//! The Raft layer: openraft 0.9 wired to the typed [`Store`](crate::store::Store).
//!
//! - `log_store`: the Raft log, vote and committed index in redb (`<data_dir>/raft.redb`), kept
//!   in memory too and made durable by one writer thread that group-commits with fsync.
//! - `state_machine`: the store in memory, snapshots in `<data_dir>/snapshot.bin`, and the
//!   [`StateHandle`] the API layer reads and watches.
//! - `network`: the client half of the transport (openraft requests as postcard bytes inside
//!   `RaftPayload` over tonic, mTLS from `identity`).
//! - [`transport`]: the server half, plain functions the tonic `Raft` service calls.
//!
//! openraft stays behind this module: the rest of the crate uses the aliases and re-exports here.

mod log_store;
mod network;
mod payload;
mod state_machine;
pub mod transport;

#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;
pub use network::Network;
pub use payload::Payload;
pub use state_machine::{StateHandle, StateMachineStore, StoreGuard, Watched};

pub use openraft::{BasicNode, ChangeMembers, ConfigError, ServerState};

openraft::declare_raft_types!(
    /// openraft's type configuration for the cluster: store commands in (shared, see
    /// [`Payload`]), store responses out, `u64` node ids, nodes known by their Raft address.
    pub TypeConfig:
        D = Payload,
        R = crate::store::Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node (cheap to clone).
pub type Raft = openraft::Raft<TypeConfig>;
/// A Raft node id.
pub type NodeId = u64;
/// What openraft reports about the node: state, leader, log indexes, membership.
pub type Metrics = openraft::RaftMetrics<NodeId, BasicNode>;
/// The reply to a successful `client_write`: log id, store response, new membership if any.
pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
/// Errors of `Raft` calls; `E` is the call's own error (forward-to-leader and the like).
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
/// Why `client_write` / `change_membership` / `add_learner` failed (e.g. not the leader).
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, BasicNode>;
/// Why `ensure_linearizable` / `get_read_log_id` failed (e.g. not the leader).
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, BasicNode>;
/// Names the current leader, when known, in not-the-leader errors.
pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, BasicNode>;
/// Why `initialize` failed.
pub type InitializeError = openraft::error::InitializeError<NodeId, BasicNode>;
/// A fatal Raft error: the node is shutting down.
pub type Fatal = openraft::error::Fatal<NodeId>;

pub use state_machine::StorageOpenError;

/// Timing and log-compaction knobs of a manager's Raft node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTuning {
    /// Leader heartbeat interval. openraft also uses it as the time-to-live of every
    /// AppendEntries RPC, so it must exceed a follower's fsync latency.
    pub heartbeat_ms: u64,
    /// Election timeout range (randomised within it); `election_min_ms` > `heartbeat_ms`.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot every this many applied entries.
    pub snapshot_logs: u64,
    /// Log entries kept after a snapshot, so lagging followers can catch up without one.
    pub max_logs_kept_after_snapshot: u64,
}

/// Time-to-live of one snapshot chunk RPC, which on the last chunk includes the follower
/// installing the snapshot (openraft's default, 200 ms, is short for a large store).
const SNAPSHOT_RPC_TIMEOUT_MS: u64 = 2000;

/// Log entries per AppendEntries RPC (see [`RaftTuning::config`]).
const MAX_PAYLOAD_ENTRIES: u64 = 4;

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 50,
            election_min_ms: 100,
            election_max_ms: 200,
            snapshot_logs: 5000,
            max_logs_kept_after_snapshot: 1000,
        }
    }
}

impl RaftTuning {
    /// The validated openraft configuration.
    // `ConfigError` is openraft's; it is returned once, at startup.
    #[allow(clippy::result_large_err)]
    pub fn config(&self) -> Result<Arc<openraft::Config>, ConfigError> {
        let config = openraft::Config {
            cluster_name: "cluster".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: SNAPSHOT_RPC_TIMEOUT_MS,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: self.max_logs_kept_after_snapshot,
            // Purging is decided once per snapshot (up to its index minus the logs kept): a
            // batch of 1 purges whatever is due at once; for the log store a purge is one range
            // delete.
            purge_batch_size: 1,
            // openraft bounds an AppendEntries RPC by the heartbeat interval. An entry carries
            // up to about 500 task changes (the control loop and the status writer
            // split larger writes), so a payload of 300 of them (the default) cannot make it
            // in time; a few per RPC can, and the next RPC follows at once.
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        };
        Ok(Arc::new(config.validate()?))
    }
}

/// Worker threads of the Raft runtime (see [`start`]).
const RAFT_THREADS: usize = 2;

/// The runtime a Raft node's tasks run on (see [`start`]). Dropping it stops them (in the
/// background, so it may be dropped inside async code).
pub struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Why a Raft node could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the Raft runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Raft(#[from] Fatal),
    #[error("starting Raft was interrupted: {0}")]
    Join(String),
}

/// Starts the Raft node on a runtime of its own: [`RAFT_THREADS`] worker threads that run only
/// openraft's tasks (core, replication streams, state machine worker) and the Raft client
/// connections they open. On a busy leader the API's tasks (1,000 agent sessions, TLS
/// handshakes, the control loops) would otherwise delay heartbeats and the handling of
/// AppendEntries replies past openraft's timeout (the heartbeat interval), and followers would
/// call elections although the leader is alive. The returned [`Raft`] handle works from any
/// runtime; keep the [`RaftRuntime`] for as long as the node runs.
pub async fn start(
    node_id: NodeId,
    config: Arc<openraft::Config>,
    network: Network,
    log_store: LogStore,
    state_machine: StateMachineStore,
) -> Result<(Raft, RaftRuntime), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RAFT_THREADS)
        .thread_name("raft")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let runtime = RaftRuntime(Some(runtime));
    let Some(handle) = runtime.0.as_ref().map(|r| r.handle().clone()) else {
        return Err(StartError::Join("the Raft runtime is gone".into()));
    };
    let raft = handle
        .spawn(Raft::new(node_id, config, network, log_store, state_machine))
        .await
        .map_err(|e| StartError::Join(e.to_string()))??;
    Ok((raft, runtime))
}

/// Opens (or creates) the Raft storage in `data_dir`: the log store, the state machine (loaded
/// from the last snapshot, if any) and the handle to its state.
pub async fn open_storage(
    data_dir: &Path,
) -> Result<(LogStore, StateMachineStore, StateHandle), StorageOpenError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|source| StorageOpenError::Io { path: data_dir.to_path_buf(), source })?;
    let log_path = data_dir.join("raft.redb");
    let log_store = tokio::task::spawn_blocking(move || LogStore::open(&log_path))
        .await
        .map_err(|e| StorageOpenError::Join(e.to_string()))??;
    let dir = data_dir.to_path_buf();
    let state_machine = tokio::task::spawn_blocking(move || StateMachineStore::open(&dir))
        .await
        .map_err(|e| StorageOpenError::Join(e.to_string()))??;
    let handle = state_machine.handle();
    Ok((log_store, state_machine, handle))
}
