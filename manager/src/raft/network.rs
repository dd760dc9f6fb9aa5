//! The client half of the Raft transport: openraft's requests, serialised with postcard, inside
//! `RaftPayload` over tonic with mutual TLS. Replies carry `Result<Resp, RaftError>` the same way
//! (see [`super::transport`] for the server half).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode};
use proto::v1::RaftPayload;
use proto::v1::raft_client::RaftClient;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::TypeConfig;

type NodeId = u64;
type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// Replies larger than this are refused (replies are small: responses and errors).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Creates connections to the other managers. Channels are cached per address and shared by
/// every connection to it (tonic multiplexes them over HTTP/2).
#[derive(Clone)]
pub struct Network {
    creds: Arc<identity::Credentials>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    pub fn new(creds: identity::Credentials) -> Network {
        Network { creds: Arc::new(creds), channels: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The cached channel to `addr`, created (lazily connecting) on first use.
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        // The map holds only complete entries, so a poisoned lock is still consistent.
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = identity::channel_lazy(addr, &self.creds).map_err(|e| format!("{addr}: {e}"))?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let client = self
            .channel(&node.addr)
            .map(|channel| RaftClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES));
        Connection { target, node: node.clone(), client }
    }
}

/// A connection to one manager. A channel that could not be set up (bad credentials or
/// address) makes every RPC fail as unreachable.
pub struct Connection {
    target: NodeId,
    node: BasicNode,
    client: Result<RaftClient<Channel>, String>,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Connection {
    /// Sends `request` and decodes the reply, within the RPC's time-to-live.
    async fn call<Req, Resp, E>(&mut self, rpc: Rpc, request: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = postcard::to_allocvec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = match &mut self.client {
            Ok(client) => client,
            Err(message) => return Err(unreachable(message.clone())),
        };
        let payload = RaftPayload { data };
        let sent = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(payload).await,
                Rpc::Vote => client.vote(payload).await,
                Rpc::InstallSnapshot => client.install_snapshot(payload).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, sent).await {
            Err(_) => return Err(unreachable(format!("{rpc:?} to node {} timed out after {ttl:?}", self.target))),
            Ok(Err(status)) => return Err(status_error(status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

fn unreachable<E: std::error::Error>(message: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::from(AnyError::error(message)))
}

/// Transport failures, refusals and timeouts are `Unreachable` (openraft backs off before
/// retrying); replies that show a protocol mismatch are `Network`.
fn status_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument | Code::Unimplemented | Code::Internal | Code::DataLoss | Code::OutOfRange => {
            RPCError::Network(NetworkError::from(AnyError::error(status.to_string())))
        }
        _ => unreachable(status.to_string()),
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}
