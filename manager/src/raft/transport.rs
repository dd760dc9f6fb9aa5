//! The server half of the Raft transport, called by the tonic `Raft` service: each function
//! decodes openraft's request from the `RaftPayload` bytes (postcard), hands it to the local
//! node, and encodes its `Result<Resp, RaftError>` for the reply.
//!
//! The caller must have checked that the peer is a manager. Bad bytes are `InvalidArgument`;
//! nothing here panics on input from the network.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Raft, TypeConfig};

/// Serialises a Raft payload (postcard).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, tonic::Status> {
    postcard::to_allocvec(value).map_err(|e| tonic::Status::internal(format!("cannot encode Raft payload: {e}")))
}

/// Deserialises a Raft payload (postcard); bad bytes are `InvalidArgument`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, tonic::Status> {
    postcard::from_bytes(bytes).map_err(|e| tonic::Status::invalid_argument(format!("bad Raft payload: {e}")))
}

/// Handles an AppendEntries RPC (also heartbeats).
pub async fn append_entries(raft: &Raft, payload: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let request: AppendEntriesRequest<TypeConfig> = decode(payload)?;
    encode(&raft.append_entries(request).await)
}

/// Handles a Vote RPC.
pub async fn vote(raft: &Raft, payload: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let request: VoteRequest<u64> = decode(payload)?;
    encode(&raft.vote(request).await)
}

/// Handles one chunk of an InstallSnapshot stream; the last chunk installs the snapshot before
/// the reply.
pub async fn install_snapshot(raft: &Raft, payload: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let request: InstallSnapshotRequest<TypeConfig> = decode(payload)?;
    encode(&raft.install_snapshot(request).await)
}
