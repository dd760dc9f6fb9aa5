//! The `Ca` gRPC service: joining nodes exchange a join token and a CSR for a certificate whose
//! role comes from the token; nodes renew their own certificates.

use crate::consensus::Consensus;
use crate::store::{Availability, Change, ClusterSettings, Meta, Node, NodeRole, NodeState, Object, Op, node_id_string};
use identity::{JoinToken, RootCa, Role, Subject, Validity, peer_from_request, secrets_equal};
use proto::v1::ca_server::Ca;
use proto::v1::{
    GetRootCaRequest, GetRootCaResponse, IssueCertificateRequest, IssueCertificateResponse, RenewCertificateRequest,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct CaService {
    pub consensus: Consensus,
}

impl CaService {
    /// The answer to a node that got a certificate.
    fn issued(&self, node_id: u64, role: Role, cert_pem: String, settings: ClusterSettings) -> IssueCertificateResponse {
        IssueCertificateResponse {
            node_id,
            role: role.as_str().to_string(),
            cert_pem,
            ca_cert_pem: settings.ca_cert_pem,
            cluster_id: settings.cluster_id,
            manager_addrs: manager_addrs(&self.consensus),
        }
    }

    async fn settings(&self) -> Result<ClusterSettings, Status> {
        self.consensus
            .read(|store| store.settings.clone())
            .await?
            .ok_or_else(|| Status::failed_precondition("the cluster is not initialised yet"))
    }
}

/// The role a token grants, if its CA digest and secret match this cluster's.
fn role_for_token(settings: &ClusterSettings, token: &JoinToken) -> Result<NodeRole, Status> {
    let digest = identity::ca_digest(&settings.ca_cert_pem).map_err(|e| Status::internal(e.to_string()))?;
    if token.ca_digest != digest {
        return Err(Status::permission_denied("invalid join token: it was issued by another cluster's CA"));
    }
    if secrets_equal(&token.secret, &settings.worker_token_secret) {
        Ok(NodeRole::Worker)
    } else if secrets_equal(&token.secret, &settings.manager_token_secret) {
        Ok(NodeRole::Manager)
    } else {
        Err(Status::permission_denied("invalid join token: the secret does not match (was it rotated?)"))
    }
}

fn validate_advertise_addr(role: NodeRole, addr: &str) -> Result<(), Status> {
    let valid = match role {
        NodeRole::Manager => addr.parse::<std::net::SocketAddr>().is_ok(),
        NodeRole::Worker => addr.parse::<std::net::IpAddr>().is_ok(),
    };
    if valid {
        Ok(())
    } else {
        let expected = if role == NodeRole::Manager { "ip:port" } else { "an ip address" };
        Err(Status::invalid_argument(format!("advertise_addr {addr:?} is not {expected}")))
    }
}

fn issue(settings: &ClusterSettings, csr_pem: &str, node_id: &str, role: Role) -> Result<String, Status> {
    let ca = RootCa::from_pem(&settings.ca_cert_pem, &settings.ca_key_pem).map_err(|e| Status::internal(e.to_string()))?;
    let subject = Subject { node_id: node_id.to_string(), role, cluster_id: settings.cluster_id.clone() };
    let validity = Validity::for_duration(Duration::from_secs(settings.node_cert_validity_secs));
    ca.issue(csr_pem, &subject, validity).map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn get_root_ca(&self, _request: Request<GetRootCaRequest>) -> Result<Response<GetRootCaResponse>, Status> {
        let settings = self.settings().await?;
        Ok(Response::new(GetRootCaResponse { ca_cert_pem: settings.ca_cert_pem }))
    }

    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let request = request.into_inner();
        let token = JoinToken::parse(&request.token).map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        let settings = self.settings().await?;
        let role = role_for_token(&settings, &token)?;
        validate_advertise_addr(role, &request.advertise_addr)?;
        if request.hostname.trim().is_empty() || request.hostname.len() > 253 {
            return Err(Status::invalid_argument("hostname must be 1 to 253 characters"));
        }
        let raft_id = loop {
            let candidate: u64 = rand::random();
            let taken = self.consensus.state.read().nodes.contains_key(&node_id_string(candidate));
            if candidate != 0 && !taken {
                break candidate;
            }
        };
        let node_id = node_id_string(raft_id);
        let cert_role = if role == NodeRole::Manager { Role::Manager } else { Role::Worker };
        // Sign before writing: a bad CSR must leave nothing behind.
        let cert_pem = issue(&settings, &request.csr_pem, &node_id, cert_role)?;
        let node = Node {
            meta: Meta { id: node_id.clone(), ..Meta::default() },
            hostname: request.hostname.trim().to_string(),
            role,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            addr: request.advertise_addr.clone(),
            // READY once its agent opens a session (managers too: the manager process runs no tasks).
            state: NodeState::Unknown,
            resources: crate::store::NodeResources::default(),
        };
        self.consensus.write(Op::Batch(vec![Change::Create(Object::Node(node))])).await?;
        tracing::info!(node = %node_id, role = role.as_str(), hostname = %request.hostname, "node joined");
        Ok(Response::new(self.issued(raft_id, cert_role, cert_pem, settings)))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let caller = peer_from_request(&request)?;
        let settings = self.settings().await?;
        let node = self.consensus.state.read().nodes.get(&caller.node_id).cloned();
        let raft_id = crate::store::parse_node_id(&caller.node_id);
        let (Some(node), Some(raft_id)) = (node, raft_id) else {
            return Err(Status::permission_denied(format!("node {} is no longer part of the cluster", caller.node_id)));
        };
        // The role comes from the store, so a demoted manager renews as a worker.
        let role = if node.role == NodeRole::Manager { Role::Manager } else { Role::Worker };
        let cert_pem = issue(&settings, &request.into_inner().csr_pem, &caller.node_id, role)?;
        Ok(Response::new(self.issued(raft_id, role, cert_pem, settings)))
    }
}

/// The addresses of the managers in the Raft group.
pub fn manager_addrs(consensus: &Consensus) -> Vec<String> {
    let metrics = consensus.raft.metrics().borrow().clone();
    metrics.membership_config.membership().nodes().map(|(_, node)| node.addr.clone()).collect()
}
