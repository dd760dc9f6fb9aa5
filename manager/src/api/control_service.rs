//! The `Control` gRPC service: what the `cluster` CLI calls. Admin certificates (and managers,
//! which forward membership calls to the leader) only.

use super::convert::{ManagerView, membership, node_to_proto, reachability};
use super::image_pin::ImageResolver;
use super::log_broker::LogBroker;
use super::{networks, secrets, service_logs, services};
use crate::consensus::{Consensus, MAX_MESSAGE};
use crate::membership as group;
use crate::store::{Availability, Change, Kind, Node, NodeRole, NodeState, Op, Response as StoreResponse, Store, parse_node_id};
use futures::future::join_all;
use identity::{JoinToken, Role, require_role};
use proto::v1 as pb;
use proto::v1::control_client::ControlClient;
use proto::v1::control_server::Control;
use proto::v1::raft_client::RaftClient;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long `info` and `node ls` wait for a manager to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

pub struct ControlService {
    pub consensus: Consensus,
    /// The leader's log broker (the Dispatcher's), for `ServiceLogs`.
    pub logs: Arc<LogBroker>,
    /// Pins service images to digests at create and update.
    pub images: ImageResolver,
}

const CONTROL_ROLES: &[Role] = &[Role::Admin, Role::Manager];

impl ControlService {
    /// Resolves a node reference for a write. The local store is enough when it knows the node
    /// (the write itself names the id and the state machine checks it exists); otherwise a
    /// consistent read makes sure the node is not merely missing from a lagging replica.
    async fn resolve_for_write(&self, reference: &str) -> Result<Node, Status> {
        if let Ok(node) = self.consensus.state.read().find_node(reference) {
            return Ok(node.clone());
        }
        self.find_node(reference).await
    }

    async fn find_node(&self, reference: &str) -> Result<Node, Status> {
        self.consensus
            .read(|store| store.find_node(reference).cloned())
            .await?
            .map_err(Status::not_found)
    }

    /// Pings every member of the Raft group at once; this manager counts as reachable.
    async fn manager_views(&self) -> HashMap<u64, ManagerView> {
        let metrics = self.consensus.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let pings = membership.nodes().map(|(id, node)| {
            let id = *id;
            let addr = node.addr.clone();
            let client = self.consensus.raft_client(id);
            let own = id == self.consensus.node_id;
            async move {
                let reachable = own || ping(client).await;
                (id, addr, reachable)
            }
        });
        join_all(pings)
            .await
            .into_iter()
            .map(|(id, raft_addr, reachable)| {
                let view = ManagerView {
                    leader: metrics.current_leader == Some(id),
                    reachable,
                    voter: voters.contains(&id),
                    raft_addr,
                };
                (id, view)
            })
            .collect()
    }

    async fn nodes_to_proto(&self, nodes: Vec<Node>) -> Vec<pb::Node> {
        let views = if nodes.iter().any(|n| n.role == NodeRole::Manager) { self.manager_views().await } else { HashMap::new() };
        nodes
            .iter()
            .map(|node| {
                let view = parse_node_id(&node.meta.id).and_then(|id| views.get(&id));
                node_to_proto(node, if node.role == NodeRole::Manager { view } else { None })
            })
            .collect()
    }

    /// Membership changes happen on the leader: a follower hands the call over.
    async fn leader_control(&self) -> Result<ControlClient<tonic::transport::Channel>, Status> {
        let leader = self.consensus.raft.current_leader().await.ok_or_else(|| {
            crate::consensus::no_quorum("no leader is known", Duration::ZERO)
        })?;
        let channel = self
            .consensus
            .channel(leader)
            .ok_or_else(|| Status::unavailable("the leader's address is unknown"))?;
        Ok(ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
    }
}

async fn ping(client: Option<RaftClient<tonic::transport::Channel>>) -> bool {
    let Some(mut client) = client else { return false };
    matches!(tokio::time::timeout(PING_TIMEOUT, client.ping(pb::PingRequest {})).await, Ok(Ok(_)))
}

/// Validates a label key: non-empty, no '=' and no whitespace.
fn validate_label_key(key: &str) -> Result<(), Status> {
    if key.is_empty() || key.contains('=') || key.chars().any(char::is_whitespace) {
        return Err(Status::invalid_argument(format!("label key {key:?} is invalid: it must be non-empty, without '=' or spaces")));
    }
    Ok(())
}

fn matches_filters(node: &Node, filters: &HashMap<String, String>) -> Result<bool, Status> {
    for (key, value) in filters {
        let matched = match key.as_str() {
            "role" => node.role.as_str() == value,
            "availability" => node.availability.as_str() == value,
            "id" => node.meta.id.starts_with(value.as_str()),
            "name" | "hostname" => node.hostname.starts_with(value.as_str()),
            "label" | "node.label" => match value.split_once('=') {
                Some((k, v)) => node.labels.get(k).is_some_and(|actual| actual == v),
                None => node.labels.contains_key(value),
            },
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown filter {other:?}: use role, availability, id, name or label"
                )));
            }
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

fn token_role(role: &str) -> Result<NodeRole, Status> {
    match role {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        other => Err(Status::invalid_argument(format!("role {other:?} is invalid: use worker or manager"))),
    }
}

fn node_of(response: StoreResponse) -> Result<Node, Status> {
    match response {
        StoreResponse::Node(node) => Ok(node),
        other => Err(Status::internal(format!("unexpected store response {other:?}"))),
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn list_nodes(&self, request: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        let filters = request.into_inner().filters;
        let nodes: Vec<Node> = self.consensus.read(|store| store.nodes.values().cloned().collect()).await?;
        let mut selected = Vec::new();
        for node in nodes {
            if matches_filters(&node, &filters)? {
                selected.push(node);
            }
        }
        Ok(Response::new(pb::ListNodesResponse { nodes: self.nodes_to_proto(selected).await }))
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        let node = self.find_node(&request.into_inner().reference).await?;
        Ok(Response::new(self.nodes_to_proto(vec![node]).await.remove(0)))
    }

    async fn update_node(&self, request: Request<pb::UpdateNodeRequest>) -> Result<Response<pb::Node>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        let request = request.into_inner();
        let availability = match request.availability.as_str() {
            "" => None,
            text => Some(Availability::parse(text).ok_or_else(|| {
                Status::invalid_argument(format!("availability {text:?} is invalid: use active, pause or drain"))
            })?),
        };
        for key in request.labels_add.keys().chain(request.labels_remove.iter()) {
            validate_label_key(key)?;
        }
        let node = self.resolve_for_write(&request.reference).await?;
        let op = Op::UpdateNode {
            id: node.meta.id,
            availability,
            labels_add: request.labels_add.into_iter().collect::<BTreeMap<_, _>>(),
            labels_remove: request.labels_remove,
        };
        let updated = node_of(self.consensus.write(op).await?)?;
        Ok(Response::new(self.nodes_to_proto(vec![updated]).await.remove(0)))
    }

    /// Records that the node should be a manager. The agent on that host acts on it (agents
    /// issue); until then the node keeps its worker certificate.
    async fn promote_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        let node = self.find_node(&request.into_inner().reference).await?;
        if node.role == NodeRole::Manager {
            return Err(Status::failed_precondition(format!("node {} is already a manager", node.meta.id)));
        }
        let updated = node_of(self.consensus.write(Op::SetNodeRole { id: node.meta.id, role: NodeRole::Manager }).await?)?;
        Ok(Response::new(self.nodes_to_proto(vec![updated]).await.remove(0)))
    }

    /// Removes a manager from the Raft group and makes it a worker. Refused for the last manager.
    async fn demote_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        if !group::is_leader(&self.consensus) {
            let mut leader = self.leader_control().await?;
            return leader.demote_node(request.into_inner()).await;
        }
        let node = self.find_node(&request.into_inner().reference).await?;
        if node.role != NodeRole::Manager {
            return Err(Status::failed_precondition(format!("node {} is not a manager", node.meta.id)));
        }
        let raft_id = parse_node_id(&node.meta.id)
            .ok_or_else(|| Status::internal(format!("manager {} has no Raft id", node.meta.id)))?;
        let voters = group::voters(&self.consensus);
        if voters.contains(&raft_id) && voters.len() == 1 {
            return Err(Status::failed_precondition(
                "cannot demote the last manager: the cluster would have no managers left",
            ));
        }
        // The role is written first: a leader that demotes itself leaves the Raft group and may
        // not learn who leads next, so it could not write afterwards. If leaving fails, the role
        // is put back.
        let id = node.meta.id;
        let updated = node_of(self.consensus.write(Op::SetNodeRole { id: id.clone(), role: NodeRole::Worker }).await?)?;
        if let Err(error) = group::remove_manager(&self.consensus, raft_id).await {
            let _ = self.consensus.write(Op::SetNodeRole { id, role: NodeRole::Manager }).await;
            return Err(error);
        }
        Ok(Response::new(self.nodes_to_proto(vec![updated]).await.remove(0)))
    }

    async fn remove_node(&self, request: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        let request = request.into_inner();
        let node = self.find_node(&request.reference).await?;
        if node.role == NodeRole::Manager {
            return Err(Status::failed_precondition(format!(
                "node {} is a manager: demote it before removing it",
                node.meta.id
            )));
        }
        if node.state == NodeState::Ready && !request.force {
            return Err(Status::failed_precondition(format!(
                "node {} is ready: stop its agent first, or use --force",
                node.meta.id
            )));
        }
        let id = node.meta.id.clone();
        let change = Change::Delete { kind: Kind::Node, id: id.clone(), expected_version: Some(node.meta.version) };
        self.consensus.write(Op::Batch(vec![change])).await?;
        Ok(Response::new(pb::RemoveNodeResponse { id }))
    }

    async fn get_join_token(&self, request: Request<pb::GetJoinTokenRequest>) -> Result<Response<pb::JoinTokenResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        let request = request.into_inner();
        let role = token_role(&request.role)?;
        if request.rotate {
            self.consensus.write(Op::RotateJoinToken { role, secret: JoinToken::generate_secret() }).await?;
        }
        let settings = self
            .consensus
            .read(|store| store.settings.clone())
            .await?
            .ok_or_else(|| Status::failed_precondition("the cluster is not initialised yet"))?;
        let digest = identity::ca_digest(&settings.ca_cert_pem).map_err(|e| Status::internal(e.to_string()))?;
        let secret = match role {
            NodeRole::Worker => &settings.worker_token_secret,
            NodeRole::Manager => &settings.manager_token_secret,
        };
        Ok(Response::new(pb::JoinTokenResponse {
            role: role.as_str().to_string(),
            token: JoinToken::format(&digest, secret),
            manager_addrs: super::ca_service::manager_addrs(&self.consensus),
        }))
    }

    async fn info(&self, request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        let (settings, hostnames, node_count) = self
            .consensus
            .read(|store: &Store| {
                let hostnames: HashMap<String, String> =
                    store.nodes.values().map(|n| (n.meta.id.clone(), n.hostname.clone())).collect();
                (store.settings.clone(), hostnames, store.nodes.len())
            })
            .await?;
        let settings = settings.ok_or_else(|| Status::failed_precondition("the cluster is not initialised yet"))?;
        let views = self.manager_views().await;
        let metrics = self.consensus.raft.metrics().borrow().clone();
        let matched: HashMap<u64, u64> = metrics
            .replication
            .as_ref()
            .map(|replication| replication.iter().map(|(id, log)| (*id, log.map(|l| l.index).unwrap_or(0))).collect())
            .unwrap_or_default();
        let mut managers: Vec<pb::ManagerInfo> = views
            .iter()
            .map(|(id, view)| pb::ManagerInfo {
                id: *id,
                hostname: hostnames.get(&crate::store::node_id_string(*id)).cloned().unwrap_or_default(),
                addr: view.raft_addr.clone(),
                leader: view.leader,
                reachability: reachability(view.reachable).to_string(),
                membership: membership(view.voter).to_string(),
                matched_index: matched.get(id).copied().unwrap_or(0),
            })
            .collect();
        managers.sort_by_key(|m| m.id);
        let leader_id = metrics.current_leader.unwrap_or(0);
        Ok(Response::new(pb::InfoResponse {
            cluster_id: settings.cluster_id.clone(),
            created_at_ms: settings.created_at_ms,
            leader_id,
            leader_addr: views.get(&leader_id).map(|v| v.raft_addr.clone()).unwrap_or_default(),
            managers,
            raft_term: metrics.current_term,
            raft_last_log_index: metrics.last_log_index.unwrap_or(0),
            raft_commit_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            raft_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            raft_snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
            node_count: node_count as u32,
            answered_by: self.consensus.node_id,
            ca_digest: identity::ca_digest(&settings.ca_cert_pem).unwrap_or_default(),
            raft_purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
            default_addr_pool: settings.address_pool.pool.clone(),
            default_addr_pool_mask_length: u32::from(settings.address_pool.mask_length),
        }))
    }

    async fn create_service(&self, request: Request<pb::CreateServiceRequest>) -> Result<Response<pb::Service>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        services::create(&self.consensus, &self.images, request.into_inner()).await.map(Response::new)
    }

    async fn update_service(&self, request: Request<pb::UpdateServiceRequest>) -> Result<Response<pb::Service>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        services::update(&self.consensus, &self.images, request.into_inner()).await.map(Response::new)
    }

    async fn remove_service(
        &self,
        request: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        services::remove(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    async fn get_service(&self, request: Request<pb::GetServiceRequest>) -> Result<Response<pb::Service>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        services::get(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        services::list(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    async fn list_tasks(&self, request: Request<pb::ListTasksRequest>) -> Result<Response<pb::ListTasksResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        services::list_tasks(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    type ServiceLogsStream = service_logs::LogsStream;

    async fn service_logs(
        &self,
        request: Request<pb::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        service_logs::serve(&self.consensus, &self.logs, request).await.map(Response::new)
    }

    async fn create_network(&self, request: Request<pb::CreateNetworkRequest>) -> Result<Response<pb::Network>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        networks::create(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    async fn get_network(&self, request: Request<pb::GetNetworkRequest>) -> Result<Response<pb::Network>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        networks::get(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    async fn list_networks(
        &self,
        request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        networks::list(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    async fn remove_network(
        &self,
        request: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        networks::remove(&self.consensus, request.into_inner()).await.map(Response::new)
    }

    // Secrets and configs (see `super::secrets`).
    async fn create_secret(&self, request: Request<pb::CreateSecretRequest>) -> Result<Response<pb::Secret>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::create(&self.consensus, Kind::Secret, request.into_inner()).await.map(Response::new)
    }
    async fn get_secret(&self, request: Request<pb::GetSecretRequest>) -> Result<Response<pb::Secret>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::get(&self.consensus, Kind::Secret, request.into_inner()).await.map(Response::new)
    }
    async fn list_secrets(&self, request: Request<pb::ListSecretsRequest>) -> Result<Response<pb::ListSecretsResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::list(&self.consensus, Kind::Secret, request.into_inner()).await.map(Response::new)
    }
    async fn remove_secret(&self, request: Request<pb::RemoveSecretRequest>) -> Result<Response<pb::RemoveSecretResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::remove(&self.consensus, Kind::Secret, request.into_inner()).await.map(Response::new)
    }
    async fn create_config(&self, request: Request<pb::CreateSecretRequest>) -> Result<Response<pb::Secret>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::create(&self.consensus, Kind::Config, request.into_inner()).await.map(Response::new)
    }
    async fn get_config(&self, request: Request<pb::GetSecretRequest>) -> Result<Response<pb::Secret>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::get(&self.consensus, Kind::Config, request.into_inner()).await.map(Response::new)
    }
    async fn list_configs(&self, request: Request<pb::ListSecretsRequest>) -> Result<Response<pb::ListSecretsResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::list(&self.consensus, Kind::Config, request.into_inner()).await.map(Response::new)
    }
    async fn remove_config(&self, request: Request<pb::RemoveSecretRequest>) -> Result<Response<pb::RemoveSecretResponse>, Status> {
        require_role(&request, CONTROL_ROLES)?;
        secrets::remove(&self.consensus, Kind::Config, request.into_inner()).await.map(Response::new)
    }
}
