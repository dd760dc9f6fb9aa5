//! gRPC clients for the tests: admin (Control), joining nodes (Ca), with per-call timeouts.

use anyhow::{Context, Result, anyhow, bail};
use identity::Credentials;
use proto::v1 as pb;
use proto::v1::ca_client::CaClient;
use proto::v1::control_client::ControlClient;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A Control API client.
pub type Control = ControlClient<Channel>;

/// How long tests wait for one call unless they say otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting (TCP + TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest response the tests accept (nodes with thousands of labels).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Installs the rustls crypto provider once per process.
pub fn init_crypto() {
    identity::install_crypto_provider();
}

/// Runs one gRPC call with a client-side timeout (a timeout becomes `DeadlineExceeded`).
pub async fn call<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "e2e: no answer within {timeout:?}"
        ))),
    }
}

/// An mTLS channel to `addr` with `creds`.
pub async fn channel(addr: &str, creds: &Credentials) -> Result<Channel> {
    init_crypto();
    tokio::time::timeout(CONNECT_TIMEOUT, identity::connect(addr, creds))
        .await
        .map_err(|_| anyhow!("connecting to {addr} took more than {CONNECT_TIMEOUT:?}"))?
        .map_err(anyhow::Error::from)
}

/// A Control client on a channel.
pub fn control_on(channel: Channel) -> Control {
    ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
}

/// A Control client for `addr` with `creds` (admin credentials, usually).
pub async fn control(addr: &str, creds: &Credentials) -> Result<Control> {
    Ok(control_on(channel(addr, creds).await?))
}

/// A Ca client for a joining node: no client certificate, the server pinned by `ca_digest`.
pub async fn ca_pinned(addr: &str, ca_digest: &str) -> Result<CaClient<Channel>> {
    init_crypto();
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, identity::connect_pinned(addr, ca_digest))
        .await
        .map_err(|_| anyhow!("connecting to {addr} took more than {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("pinning CA {ca_digest}"))?;
    Ok(CaClient::new(channel))
}

/// Adds (or changes) one label on a node: one committed write.
pub async fn write_label(
    client: &mut Control,
    node: &str,
    key: &str,
    value: &str,
    timeout: Duration,
) -> Result<pb::Node, Status> {
    let request = pb::UpdateNodeRequest {
        reference: node.to_string(),
        labels_add: [(key.to_string(), value.to_string())].into_iter().collect(),
        ..Default::default()
    };
    call(timeout, client.update_node(request)).await
}

/// A node's labels (a linearizable read on the manager asked).
pub async fn node_labels(
    client: &mut Control,
    node: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, Status> {
    let node = call(
        timeout,
        client.get_node(pb::GetNodeRequest {
            reference: node.to_string(),
        }),
    )
    .await?;
    Ok(node.labels.into_iter().collect())
}

/// `Control.Info`.
pub async fn info(client: &mut Control, timeout: Duration) -> Result<pb::InfoResponse, Status> {
    call(timeout, client.info(pb::InfoRequest {})).await
}

/// All nodes.
pub async fn list_nodes(client: &mut Control, timeout: Duration) -> Result<Vec<pb::Node>, Status> {
    Ok(
        call(timeout, client.list_nodes(pb::ListNodesRequest::default()))
            .await?
            .nodes,
    )
}

/// The join token for `role` ("worker" or "manager"), rotated first if `rotate`.
pub async fn join_token(client: &mut Control, role: &str, rotate: bool) -> Result<String, Status> {
    let request = pb::GetJoinTokenRequest {
        role: role.to_string(),
        rotate,
    };
    Ok(call(CALL_TIMEOUT, client.get_join_token(request))
        .await?
        .token)
}

/// Asks the manager at `addr` for a certificate with `token` (pinning the CA digest in the token,
/// or `pin` if given). A connection failure is the outer error, a refusal the inner one.
pub async fn request_certificate(
    addr: &str,
    token: &str,
    pin: Option<&str>,
    hostname: &str,
    advertise_addr: &str,
) -> Result<(Result<pb::IssueCertificateResponse, Status>, String)> {
    let digest = match pin {
        Some(pin) => pin.to_string(),
        None => {
            identity::JoinToken::parse(token)
                .context("parsing the join token")?
                .ca_digest
        }
    };
    let mut ca = ca_pinned(addr, &digest).await?;
    let (csr_pem, key_pem) = identity::generate_csr()?;
    let request = pb::IssueCertificateRequest {
        token: token.to_string(),
        csr_pem,
        hostname: hostname.to_string(),
        advertise_addr: advertise_addr.to_string(),
    };
    Ok((
        call(CALL_TIMEOUT, ca.issue_certificate(request)).await,
        key_pem,
    ))
}

/// Joins a worker node record (no agent runs) and returns its credentials and node id.
pub async fn join_worker(addr: &str, token: &str, hostname: &str) -> Result<(Credentials, String)> {
    let (issued, key_pem) = request_certificate(addr, token, None, hostname, "127.0.0.9").await?;
    let issued = issued.map_err(|s| {
        anyhow!(
            "IssueCertificate refused the worker: {:?} {}",
            s.code(),
            s.message()
        )
    })?;
    if issued.role != "worker" {
        bail!("expected a worker certificate, got role {:?}", issued.role);
    }
    let creds = Credentials {
        ca_cert_pem: issued.ca_cert_pem,
        cert_pem: issued.cert_pem,
        key_pem,
    };
    Ok((creds, format!("{:016x}", issued.node_id)))
}

/// Whether an error means "try again elsewhere or later" (no leader, unreachable, timeout).
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}

/// `code: message` for assertions.
pub fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
