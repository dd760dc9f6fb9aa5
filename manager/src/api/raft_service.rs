//! The `Raft` gRPC service: replication among managers, forwarded writes and reads, joining
//! managers, and liveness probes. Every call needs a manager certificate.

use crate::consensus::Consensus;
use crate::membership;
use crate::raft::transport;
use crate::store::{Command, NodeRole, parse_node_id};
use identity::{Role, require_role};
use proto::v1::raft_server::Raft as RaftApi;
use proto::v1::{
    JoinRaftRequest, JoinRaftResponse, PingRequest, PingResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
};
use tonic::{Request, Response, Status};

pub struct RaftService {
    pub consensus: Consensus,
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_role(&request, &[Role::Manager])?;
        let data = transport::append_entries(&self.consensus.raft, &request.into_inner().data).await?;
        Ok(Response::new(RaftPayload { data }))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_role(&request, &[Role::Manager])?;
        let data = transport::vote(&self.consensus.raft, &request.into_inner().data).await?;
        Ok(Response::new(RaftPayload { data }))
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_role(&request, &[Role::Manager])?;
        let data = transport::install_snapshot(&self.consensus.raft, &request.into_inner().data).await?;
        Ok(Response::new(RaftPayload { data }))
    }

    /// A follower's write, committed here if this manager leads. Never forwarded again.
    async fn propose(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_role(&request, &[Role::Manager])?;
        let command: Command = transport::decode(&request.into_inner().data)?;
        if !membership::is_leader(&self.consensus) {
            return Err(Status::unavailable("not the leader"));
        }
        let response = self.consensus.write_command(command).await?;
        Ok(Response::new(RaftPayload { data: transport::encode(&response)? }))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        require_role(&request, &[Role::Manager])?;
        let index = self.consensus.leader_read_index().await?;
        Ok(Response::new(ReadIndexResponse { index }))
    }

    /// Adds the calling manager (identified by its certificate) to the Raft group.
    async fn join_raft(&self, request: Request<JoinRaftRequest>) -> Result<Response<JoinRaftResponse>, Status> {
        let caller = require_role(&request, &[Role::Manager])?;
        let id = parse_node_id(&caller.node_id)
            .ok_or_else(|| Status::invalid_argument(format!("malformed node id {:?} in certificate", caller.node_id)))?;
        let raft_addr = request.into_inner().raft_addr;
        if raft_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!("raft_addr {raft_addr:?} is not host:port")));
        }
        if !membership::is_leader(&self.consensus) {
            return Err(membership::not_leader(&self.consensus));
        }
        let is_manager = self
            .consensus
            .read(|store| store.nodes.get(&caller.node_id).map(|node| node.role == NodeRole::Manager))
            .await?;
        match is_manager {
            Some(true) => {}
            Some(false) => return Err(Status::permission_denied("this node is not a manager in the store")),
            None => return Err(Status::not_found(format!("node {} is not part of the cluster", caller.node_id))),
        }
        // The secrets key goes only to a manager the store knows, over this mTLS call.
        let data_key = self
            .consensus
            .data_key
            .bytes()
            .ok_or_else(|| Status::unavailable("this manager has no secrets key to hand over"))?;
        let voters = membership::add_manager(&self.consensus, id, &raft_addr).await?;
        Ok(Response::new(JoinRaftResponse { voters: voters.into_iter().collect(), data_key: data_key.to_vec() }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        require_role(&request, &[Role::Manager, Role::Admin])?;
        Ok(Response::new(PingResponse {
            node_id: self.consensus.node_id,
            last_applied: self.consensus.state.applied_index(),
        }))
    }
}
