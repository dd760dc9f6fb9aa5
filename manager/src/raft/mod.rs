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
mod state_machine;
pub mod transport;

#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;
pub use network::Network;
pub use state_machine::{StateHandle, StateMachineStore, StoreGuard, Watched};

pub use openraft::{BasicNode, ChangeMembers, ConfigError, ServerState};

openraft::declare_raft_types!(
    /// openraft's type configuration for the cluster: store commands in, store responses out,
    /// `u64` node ids, nodes known by their Raft address.
    pub TypeConfig:
        D = crate::store::Command,
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
            ..Default::default()
        };
        Ok(Arc::new(config.validate()?))
    }
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
