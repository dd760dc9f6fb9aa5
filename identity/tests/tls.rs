//! End-to-end mTLS: a real tonic server (the standard health service behind an interceptor that
//! records and checks the caller's identity) on 127.0.0.1, and our client channels.

use identity::{
    Credentials, PeerIdentity, Role, RootCa, Subject, Validity, channel_lazy, connect,
    connect_pinned, generate_csr, install_crypto_provider, peer_from_request, require_role,
    server_tls,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const HOUR: Duration = Duration::from_secs(3600);

/// What the server saw: for each call, the caller's identity (None: no client certificate).
type Seen = Arc<Mutex<Vec<Option<PeerIdentity>>>>;

struct Cluster {
    ca: RootCa,
    cluster_id: String,
}

impl Cluster {
    fn new(cluster_id: &str) -> Self {
        Cluster {
            ca: RootCa::generate(cluster_id).unwrap(),
            cluster_id: cluster_id.to_string(),
        }
    }
    fn subject(&self, node_id: &str, role: Role) -> Subject {
        Subject {
            node_id: node_id.into(),
            role,
            cluster_id: self.cluster_id.clone(),
        }
    }
    /// Credentials the way a joining node gets them: its own key, a CSR, a signed certificate.
    fn creds_via_csr(&self, node_id: &str, role: Role, validity: Validity) -> Credentials {
        let (csr, key_pem) = generate_csr().unwrap();
        let cert_pem = self
            .ca
            .issue(&csr, &self.subject(node_id, role), validity)
            .unwrap();
        Credentials {
            ca_cert_pem: self.ca.cert_pem().to_string(),
            cert_pem,
            key_pem,
        }
    }
    fn creds(&self, node_id: &str, role: Role) -> Credentials {
        self.ca
            .issue_keypair(&self.subject(node_id, role), Validity::for_duration(HOUR))
            .unwrap()
    }
}

/// Starts a health server with `creds`; when `required` is set, calls need one of those roles.
async fn start_server(creds: &Credentials, required: Option<Vec<Role>>) -> (SocketAddr, Seen) {
    install_crypto_provider();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let interceptor = move |req: tonic::Request<()>| {
        record.lock().unwrap().push(peer_from_request(&req).ok());
        if let Some(roles) = &required {
            require_role(&req, roles)?;
        }
        Ok(req)
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let service = tonic::service::interceptor::InterceptedService::new(health, interceptor);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Server::builder()
        .tls_config(server_tls(creds).unwrap())
        .unwrap()
        .add_service(service);
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

async fn check(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = HealthClient::new(channel);
    let request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    tokio::time::timeout(Duration::from_secs(10), client.check(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("test timeout"))?
        .map(|_| ())
}

/// Connecting and calling must fail somewhere: at the handshake or at the first call (with
/// TLS 1.3 the client learns that the server refused its certificate only after the handshake).
async fn assert_refused(addr: SocketAddr, creds: &Credentials, seen: &Seen) {
    let before = seen.lock().unwrap().len();
    match connect(&addr.to_string(), creds).await {
        Err(e) => eprintln!("refused at connect: {e}"),
        Ok(channel) => {
            let status = check(channel)
                .await
                .expect_err("the call should have been refused");
            eprintln!("refused at the call: {status:?}");
            assert_ne!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        }
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "the request must not reach the service"
    );
}

#[tokio::test]
async fn mtls_with_a_manager_certificate() {
    let cluster = Cluster::new("cluster-a");
    let (addr, seen) = start_server(&cluster.creds("m1", Role::Manager), None).await;
    let client = cluster.creds_via_csr("m2", Role::Manager, Validity::for_duration(HOUR));

    let channel = connect(&addr.to_string(), &client).await.unwrap();
    check(channel.clone()).await.unwrap();
    check(channel).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let peer = seen[0]
        .clone()
        .expect("the server must see the client certificate");
    assert_eq!(peer, client.identity().unwrap());
    assert_eq!(peer.node_id, "m2");
    assert_eq!(peer.role, Role::Manager);
    assert_eq!(peer.cluster_id, "cluster-a");
}

#[tokio::test]
async fn lazy_channel_connects_on_first_use() {
    let cluster = Cluster::new("cluster-a");
    let server_creds = cluster.creds("m1", Role::Manager);
    // Nothing listens yet: creating the channel must not fail.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let channel = channel_lazy(&addr.to_string(), &cluster.creds("w1", Role::Worker)).unwrap();
    assert!(check(channel).await.is_err(), "nothing listens there");

    let (addr, seen) = start_server(&server_creds, None).await;
    let channel = channel_lazy(&addr.to_string(), &cluster.creds("w1", Role::Worker)).unwrap();
    check(channel).await.unwrap();
    assert_eq!(seen.lock().unwrap()[0].as_ref().unwrap().role, Role::Worker);
}

#[tokio::test]
async fn pinned_connection_without_a_client_certificate() {
    let cluster = Cluster::new("cluster-a");
    let (addr, seen) = start_server(&cluster.creds("m1", Role::Manager), None).await;

    // Right digest (in upper case too): connects, and the server sees no client certificate.
    let channel = connect_pinned(&addr.to_string(), &cluster.ca.digest())
        .await
        .unwrap();
    check(channel).await.unwrap();
    let channel = connect_pinned(&addr.to_string(), &cluster.ca.digest().to_uppercase())
        .await
        .unwrap();
    check(channel).await.unwrap();
    assert_eq!(seen.lock().unwrap().clone(), vec![None, None]);

    // A handler that needs a certificate says Unauthenticated.
    let (addr2, _) =
        start_server(&cluster.creds("m1", Role::Manager), Some(vec![Role::Admin])).await;
    let channel = connect_pinned(&addr2.to_string(), &cluster.ca.digest())
        .await
        .unwrap();
    let status = check(channel).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "a client certificate is required");
}

#[tokio::test]
async fn pinned_connection_with_a_wrong_digest_fails() {
    let cluster = Cluster::new("cluster-a");
    let (addr, seen) = start_server(&cluster.creds("m1", Role::Manager), None).await;

    let other = Cluster::new("cluster-b");
    let err = connect_pinned(&addr.to_string(), &other.ca.digest())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("does not match the join token"), "{text}");

    let err = connect_pinned(&addr.to_string(), "abc").await.unwrap_err();
    assert!(err.to_string().contains("64 hex"), "{err}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn pinned_connection_checks_the_leaf_against_the_pinned_ca() {
    // The server presents the right CA in its chain but a leaf signed by another CA: refused.
    let cluster = Cluster::new("cluster-a");
    let impostor = Cluster::new("cluster-a");
    let leaf = impostor.creds("m1", Role::Manager);
    let mixed = Credentials {
        ca_cert_pem: cluster.ca.cert_pem().to_string(),
        ..leaf
    };
    let (addr, _) = start_server(&mixed, None).await;
    assert!(
        connect_pinned(&addr.to_string(), &cluster.ca.digest())
            .await
            .is_err()
    );

    // A server whose certificate is a worker's (no manager server name): refused too.
    let (addr, _) = start_server(&cluster.creds("w1", Role::Worker), None).await;
    let err = connect_pinned(&addr.to_string(), &cluster.ca.digest())
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("name"), "{err}");
    assert!(
        connect(&addr.to_string(), &cluster.creds("w2", Role::Worker))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn client_certificate_from_another_cluster_is_refused() {
    let cluster = Cluster::new("cluster-a");
    let (addr, seen) = start_server(&cluster.creds("m1", Role::Manager), None).await;

    // The client trusts cluster A's CA (so it accepts the server) but its own certificate is
    // cluster B's: the server must refuse it.
    let other = Cluster::new("cluster-b");
    let foreign = other.creds("intruder", Role::Admin);
    let creds = Credentials {
        ca_cert_pem: cluster.ca.cert_pem().to_string(),
        ..foreign.clone()
    };
    assert_refused(addr, &creds, &seen).await;

    // With its own CA as roots, the client refuses the server at the handshake.
    let err = connect(&addr.to_string(), &foreign).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect to"), "{err}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let cluster = Cluster::new("cluster-a");
    let (addr, seen) = start_server(&cluster.creds("m1", Role::Manager), None).await;
    let now = SystemTime::now();
    let expired = Validity {
        not_before: now - 2 * HOUR,
        not_after: now - HOUR,
    };
    let creds = cluster.creds_via_csr("w-old", Role::Worker, expired);
    assert_refused(addr, &creds, &seen).await;

    // Not yet valid is refused too.
    let future = Validity {
        not_before: now + HOUR,
        not_after: now + 2 * HOUR,
    };
    let creds = cluster.creds_via_csr("w-new", Role::Worker, future);
    assert_refused(addr, &creds, &seen).await;
}

#[tokio::test]
async fn require_role_refuses_a_worker_where_admin_is_needed() {
    let cluster = Cluster::new("cluster-a");
    let (addr, seen) =
        start_server(&cluster.creds("m1", Role::Manager), Some(vec![Role::Admin])).await;

    let worker = cluster.creds_via_csr("w1", Role::Worker, Validity::for_duration(HOUR));
    let channel = connect(&addr.to_string(), &worker).await.unwrap();
    let status = check(channel).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "permission denied: this call needs an admin certificate, the caller presented a worker certificate"
    );

    let admin = cluster.creds("admin", Role::Admin);
    let channel = connect(&addr.to_string(), &admin).await.unwrap();
    check(channel).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn https_scheme_with_a_custom_connector_is_refused_by_tonic() {
    // Why our endpoints say http://: with https:// and a custom connector tonic wants to do TLS
    // itself and, having no TLS config, refuses. (If this ever changes, nothing breaks.)
    let endpoint = tonic::transport::Endpoint::from_static("https://127.0.0.1:1");
    let connector = tower::service_fn(|_uri: http::Uri| async {
        let (a, _b) = tokio::io::duplex(64);
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(a))
    });
    let err = endpoint
        .connect_with_connector(connector)
        .await
        .unwrap_err();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    assert!(text.contains("HTTPS without TLS"), "{text}");
}
