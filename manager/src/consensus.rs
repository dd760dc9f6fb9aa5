//! Reads and writes of the replicated store, from any manager.
//!
//! Writes go to the leader (forwarded over the `Raft.Propose` call when this manager follows);
//! reads are linearizable by default: the leader confirms it still leads (read index) and this
//! manager waits until it has applied that index. Both are bounded in time: without quorum the
//! caller gets a clear `Unavailable("no quorum: ...")` instead of hanging.

use crate::batcher::{Batcher, ProposeError};
use crate::raft::{Raft, StateHandle, transport};
use crate::store::{Command, Op, Response, Store};
use proto::v1::raft_client::RaftClient;
use proto::v1::{RaftPayload, ReadIndexRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::Status;
use tonic::transport::Channel;

/// How long a write or a linearizable read may wait for a leader and a quorum.
pub const DEFAULT_QUORUM_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause between attempts while no leader is known.
const LEADER_POLL: Duration = Duration::from_millis(20);

/// Access to the replicated store for the API handlers.
#[derive(Clone)]
pub struct Consensus {
    pub raft: Raft,
    pub state: StateHandle,
    pub node_id: u64,
    creds: identity::Credentials,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    quorum_timeout: Duration,
    batcher: Batcher,
    /// The cluster's key for secret data (see [`crate::secrets`]).
    pub data_key: crate::secrets::DataKey,
}

impl Consensus {
    pub fn new(raft: Raft, state: StateHandle, node_id: u64, creds: identity::Credentials, quorum_timeout: Duration, data_key: crate::secrets::DataKey) -> Self {
        let batcher = Batcher::start(raft.clone());
        Consensus { raft, state, node_id, creds, channels: Arc::default(), quorum_timeout, batcher, data_key }
    }

    /// Commits `op` through Raft and returns the state machine's response. A refusal by the
    /// store (`Response::Rejected`) becomes a `FailedPrecondition`/`NotFound`/`AlreadyExists`.
    pub async fn write(&self, op: Op) -> Result<Response, Status> {
        let command = Command { now_ms: now_ms(), op };
        let response = self.write_command(command).await?;
        match response {
            Response::Rejected(error) => Err(store_error_status(&error)),
            other => Ok(other),
        }
    }

    /// Commits `op` only if this manager leads (never forwarded), so that a manager that lost
    /// leadership cannot land a batch computed on its own view. Refusals come back as
    /// `Response::Rejected`; `FailedPrecondition` when this manager does not lead.
    pub async fn write_as_leader(&self, op: Op) -> Result<Response, Status> {
        let command = Command { now_ms: now_ms(), op };
        match self.write_local(command, self.quorum_timeout).await {
            Ok(result) => result,
            Err(Retry) => Err(Status::failed_precondition("this manager is not the leader")),
        }
    }

    /// Like [`Consensus::write`] but hands back refusals as a `Response::Rejected`.
    pub async fn write_command(&self, command: Command) -> Result<Response, Status> {
        let deadline = Instant::now() + self.quorum_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(no_quorum("the write was not confirmed", self.quorum_timeout));
            }
            let leader = self.raft.current_leader().await;
            let attempt = match leader {
                Some(leader) if leader == self.node_id => self.write_local(command.clone(), remaining).await,
                Some(leader) => self.write_forwarded(leader, &command, remaining).await,
                None => Err(Retry),
            };
            match attempt {
                Ok(result) => return result,
                Err(Retry) => tokio::time::sleep(LEADER_POLL.min(remaining)).await,
            }
        }
    }

    /// On the leader: propose (batched with concurrent writes) and wait for the commit.
    async fn write_local(&self, command: Command, remaining: Duration) -> Attempt<Response> {
        match tokio::time::timeout(remaining, self.batcher.propose(command.op)).await {
            Err(_) => Ok(Err(no_quorum("the write was not confirmed", self.quorum_timeout))),
            Ok(Ok(response)) => Ok(Ok(response)),
            Ok(Err(ProposeError::NotLeader)) => Err(Retry),
            Ok(Err(ProposeError::Failed(error))) => Ok(Err(Status::unavailable(format!("write failed: {error}")))),
        }
    }

    /// On a follower: hand the command to the leader.
    async fn write_forwarded(&self, leader: u64, command: &Command, remaining: Duration) -> Attempt<Response> {
        let Some(mut client) = self.leader_client(leader) else { return Err(Retry) };
        let payload = match transport::encode(command) {
            Ok(data) => RaftPayload { data },
            Err(status) => return Ok(Err(status)),
        };
        match tokio::time::timeout(remaining, client.propose(payload)).await {
            Err(_) => Ok(Err(no_quorum("the write was not confirmed", self.quorum_timeout))),
            Ok(Ok(reply)) => Ok(transport::decode::<Response>(&reply.into_inner().data)),
            // The leader changed or is unreachable: look again.
            Ok(Err(status)) if is_retryable(&status) => Err(Retry),
            Ok(Err(status)) => Ok(Err(status)),
        }
    }

    /// Waits until a read of the local store is linearizable.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        let deadline = Instant::now() + self.quorum_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(no_quorum("could not confirm a leader for a consistent read", self.quorum_timeout));
            }
            let index = match self.raft.current_leader().await {
                Some(leader) if leader == self.node_id => {
                    match tokio::time::timeout(remaining, self.raft.get_read_log_id()).await {
                        Ok(Ok((read_log_id, _))) => Some(read_log_id.map(|id| id.index).unwrap_or(0)),
                        Ok(Err(_)) | Err(_) => None,
                    }
                }
                Some(leader) => match self.leader_client(leader) {
                    Some(mut client) => match tokio::time::timeout(remaining, client.read_index(ReadIndexRequest {})).await {
                        Ok(Ok(reply)) => Some(reply.into_inner().index),
                        Ok(Err(_)) | Err(_) => None,
                    },
                    None => None,
                },
                None => None,
            };
            match index {
                Some(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return tokio::time::timeout(remaining, self.state.wait_applied(index))
                        .await
                        .map_err(|_| no_quorum("this manager did not catch up in time", self.quorum_timeout));
                }
                None => tokio::time::sleep(LEADER_POLL.min(remaining)).await,
            }
        }
    }

    /// A linearizable read: `read` runs on the local store after the barrier.
    pub async fn read<T>(&self, read: impl FnOnce(&Store) -> T) -> Result<T, Status> {
        self.read_barrier().await?;
        Ok(read(&self.state.read()))
    }

    /// The leader's index of committed entries, for `Raft.ReadIndex` on the leader.
    pub async fn leader_read_index(&self) -> Result<u64, Status> {
        match tokio::time::timeout(self.quorum_timeout, self.raft.get_read_log_id()).await {
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.map(|id| id.index).unwrap_or(0)),
            Ok(Err(error)) => Err(Status::unavailable(format!("not the leader: {error}"))),
            Err(_) => Err(no_quorum("could not confirm leadership", self.quorum_timeout)),
        }
    }

    /// The address of a member of the Raft group, from the membership config.
    pub fn member_addr(&self, node_id: u64) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.membership_config.membership().get_node(&node_id).map(|node| node.addr.clone())
    }

    /// A Raft-service client for the manager `node_id` (cached channel).
    pub fn raft_client(&self, node_id: u64) -> Option<RaftClient<Channel>> {
        self.channel(node_id).map(|channel| {
            RaftClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
        })
    }

    fn leader_client(&self, leader: u64) -> Option<RaftClient<Channel>> {
        self.raft_client(leader)
    }

    /// A cached mTLS channel to the manager `node_id`.
    pub fn channel(&self, node_id: u64) -> Option<Channel> {
        let addr = self.member_addr(node_id)?;
        let mut channels = self.channels.lock().ok()?;
        if let Some(channel) = channels.get(&addr) {
            return Some(channel.clone());
        }
        let channel = identity::channel_lazy(&addr, &self.creds).ok()?;
        channels.insert(addr, channel.clone());
        Some(channel)
    }
}

/// The largest gRPC message managers exchange (snapshot chunks, batches).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Marks an attempt to repeat after a short pause (no leader known, leader changed).
struct Retry;
type Attempt<T> = Result<Result<T, Status>, Retry>;

fn is_retryable(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
        && !status.message().starts_with("no quorum")
}

/// The "no quorum" error every bounded wait ends in.
pub fn no_quorum(what: &str, waited: Duration) -> Status {
    Status::unavailable(format!(
        "no quorum: {what} within {} ms; a majority of managers must be reachable",
        waited.as_millis()
    ))
}

/// Maps a store refusal to the gRPC status a client understands.
pub fn store_error_status(error: &crate::store::StoreError) -> Status {
    use crate::store::StoreError as E;
    match error {
        E::NotFound { .. } => Status::not_found(error.to_string()),
        E::AlreadyExists { .. } | E::NameInUse { .. } | E::AlreadyBootstrapped => {
            Status::already_exists(error.to_string())
        }
        E::VersionConflict { .. } => Status::aborted(error.to_string()),
        E::NotBootstrapped => Status::failed_precondition(error.to_string()),
        E::NestedMulti | E::Invalid(_) => Status::invalid_argument(error.to_string()),
        E::InUse(_) => Status::failed_precondition(error.to_string()),
        E::Exhausted(_) => Status::resource_exhausted(error.to_string()),
    }
}

/// Milliseconds since the Unix epoch by this manager's clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
