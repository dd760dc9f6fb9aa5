//! The manager process: creating a cluster (`init`), joining one (`join`), restarting from a
//! data dir (`restart`), and serving every gRPC service on one mTLS listener.
//!
//! A data dir holds `manager.json` (this file's [`ManagerConfig`]), `node.json` (credentials),
//! `raft.redb` (log and vote), `snapshot.bin`, `secrets.key` (see [`crate::secrets`]), and after
//! `init` also `admin.json` for the CLI.

use crate::api::dispatcher::{DispatcherService, DispatcherTiming};
use crate::api::image_pin::{ImageResolver, RESOLVE_TIMEOUT};
use crate::api::{ca_service::CaService, control_service::ControlService, raft_service::RaftService};
use crate::consensus::{Consensus, MAX_MESSAGE};
use crate::failover::{self, FailoverTiming};
use crate::raft::{self, RaftTuning};
use crate::store::{AddressPool, Availability, ClusterSettings, Meta, Node, NodeRole, NodeState, Op, node_id_string};
use anyhow::{Context, Result, anyhow, bail};
use identity::{AdminConfig, Credentials, JoinToken, RootCa, Role, Subject, Validity};
use openraft::BasicNode;
use proto::v1::ca_client::CaClient;
use proto::v1::ca_server::CaServer;
use proto::v1::control_server::ControlServer;
use proto::v1::dispatcher_server::DispatcherServer;
use proto::v1::raft_client::RaftClient;
use proto::v1::raft_server::RaftServer;
use proto::v1::{IssueCertificateRequest, JoinRaftRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Node certificates last 90 days (Swarm's default).
const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The admin certificate written by `init` lasts a year.
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a joining manager keeps asking to be added to the Raft group.
const JOIN_RAFT_DEADLINE: Duration = Duration::from_secs(60);

/// What a manager remembers about itself across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManagerConfig {
    pub node_id: u64,
    pub listen_addr: String,
    pub advertise_addr: String,
    pub hostname: String,
    /// Managers to ask for Raft membership if the join did not finish.
    pub join_addrs: Vec<String>,
    /// `init` finished bootstrapping, or `join` was accepted into the Raft group.
    pub ready: bool,
    /// Registries (`host[:port]`) asked over plain http when pinning service images.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

impl ManagerConfig {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("manager.json")
    }

    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = Self::path(data_dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid manager config", path.display()))
    }

    fn save(&self, data_dir: &Path) -> Result<()> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join("manager.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }
}

/// Settings given on the command line at every start.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub data_dir: PathBuf,
    pub tuning: RaftTuning,
    pub quorum_timeout: Duration,
    /// Agents' heartbeat period and the grace before a silent node is DOWN.
    pub dispatcher: DispatcherTiming,
    /// Registries (`host[:port]`) reached over plain http to pin service images. `init` and
    /// `join` save them in `manager.json`; at a restart a non-empty list replaces the saved one
    /// and an empty one keeps it.
    pub insecure_registries: Vec<String>,
}

/// Where a new manager listens and what it tells its peers.
#[derive(Clone, Debug)]
pub struct Placement {
    pub listen_addr: String,
    pub advertise_addr: Option<String>,
    pub hostname: Option<String>,
}

impl Placement {
    fn advertise(&self) -> String {
        self.advertise_addr.clone().unwrap_or_else(|| self.listen_addr.clone())
    }
    fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(local_hostname)
    }
}

/// A manager that serves until it is shut down.
pub struct RunningManager {
    pub consensus: Consensus,
    pub config: ManagerConfig,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    failover: JoinHandle<()>,
    /// The control loops, node liveness and status writer: aborted at shutdown.
    background: Vec<JoinHandle<()>>,
    stop: oneshot::Sender<()>,
    /// Where Raft's own tasks run (see [`raft::start`]); dropped after Raft has shut down.
    raft_runtime: raft::RaftRuntime,
}

impl RunningManager {
    /// Serves until the server fails or `shutdown_signal` resolves.
    pub async fn serve_until(self, shutdown_signal: impl std::future::Future<Output = ()>) -> Result<()> {
        let RunningManager { consensus, server, failover, background, stop, raft_runtime, .. } = self;
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => {
                result.context("the server task failed")?.context("the gRPC server failed")?;
            }
            () = shutdown_signal => {
                let _ = stop.send(());
                let _ = server.await;
            }
        }
        failover.abort();
        for task in background {
            task.abort();
        }
        consensus.raft.shutdown().await.map_err(|e| anyhow!("raft shutdown: {e}"))?;
        drop(raft_runtime);
        Ok(())
    }
}

/// The name of the ingress network `init` creates.
pub const INGRESS_NETWORK: &str = "ingress";

/// Creates a new cluster with this manager as its only member.
pub async fn init(options: &StartOptions, placement: &Placement) -> Result<RunningManager> {
    init_with_pool(options, placement, &AddressPool::default()).await
}

/// [`init`] with the default address pool networks are carved from (checked first).
pub async fn init_with_pool(options: &StartOptions, placement: &Placement, pool: &AddressPool) -> Result<RunningManager> {
    crate::ipam::validate_pool(&pool.pool, pool.mask_length).map_err(|e| anyhow!("{e}"))?;
    let data_dir = &options.data_dir;
    refuse_existing(data_dir)?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let cluster_id = random_hex(20);
    let ca = RootCa::generate(&cluster_id)?;
    let raft_id = random_node_id();
    let node_id = node_id_string(raft_id);
    let creds = ca.issue_keypair(
        &Subject { node_id: node_id.clone(), role: Role::Manager, cluster_id: cluster_id.clone() },
        Validity::for_duration(NODE_CERT_VALIDITY),
    )?;
    creds.save(&data_dir.join("node.json"))?;
    let config = ManagerConfig {
        node_id: raft_id,
        listen_addr: placement.listen_addr.clone(),
        advertise_addr: placement.advertise(),
        hostname: placement.hostname(),
        join_addrs: Vec::new(),
        ready: false,
        insecure_registries: options.insecure_registries.clone(),
    };
    config.save(data_dir)?;
    crate::secrets::DataKey::generate()?.save(data_dir)?;

    let running = start(options, config.clone(), creds).await?;
    let members = BTreeMap::from([(raft_id, BasicNode::new(&config.advertise_addr))]);
    running.consensus.raft.initialize(members).await.map_err(|e| anyhow!("cannot initialise Raft: {e}"))?;
    let now = crate::consensus::now_ms();
    let settings = ClusterSettings {
        cluster_id: cluster_id.clone(),
        created_at_ms: now,
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_pem: ca.key_pem().to_string(),
        worker_token_secret: JoinToken::generate_secret(),
        manager_token_secret: JoinToken::generate_secret(),
        node_cert_validity_secs: NODE_CERT_VALIDITY.as_secs(),
        address_pool: pool.clone(),
    };
    let first_manager = Node {
        meta: Meta { id: node_id, ..Meta::default() },
        hostname: config.hostname.clone(),
        role: NodeRole::Manager,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        addr: config.advertise_addr.clone(),
        // READY once an agent on this host opens a session: until then nothing runs tasks here.
        state: NodeState::Unknown,
        resources: crate::store::NodeResources::default(),
    };
    running
        .consensus
        .write(Op::Bootstrap { settings: Box::new(settings), first_manager: Box::new(first_manager) })
        .await
        .map_err(|status| anyhow!("cannot bootstrap the cluster: {}", status.message()))?;
    // The routing mesh for published ports: a network like any other (subnet from the default
    // pool, its own VNI), flagged ingress.
    let ingress = crate::store::Network {
        meta: Meta { id: crate::ids::new_id(), ..Meta::default() },
        name: INGRESS_NETWORK.into(),
        labels: BTreeMap::new(),
        subnet: String::new(),
        vni: 0,
        attachable: false,
        driver: "overlay".into(),
        ingress: true,
    };
    running
        .consensus
        .write(Op::CreateNetwork(Box::new(ingress)))
        .await
        .map_err(|status| anyhow!("cannot create the ingress network: {}", status.message()))?;

    let admin = ca.issue_keypair(
        &Subject { node_id: format!("admin-{}", random_hex(8)), role: Role::Admin, cluster_id },
        Validity::for_duration(ADMIN_CERT_VALIDITY),
    )?;
    AdminConfig { managers: vec![config.advertise_addr.clone()], credentials: admin }.save(&data_dir.join("admin.json"))?;
    let config = ManagerConfig { ready: true, ..config };
    config.save(data_dir)?;
    Ok(RunningManager { config, ..running })
}

/// Joins an existing cluster as a manager through the manager at `join_addr`.
pub async fn join(options: &StartOptions, placement: &Placement, token_text: &str, join_addr: &str) -> Result<RunningManager> {
    let data_dir = &options.data_dir;
    refuse_existing(data_dir)?;
    let token = JoinToken::parse(token_text)?;
    let channel = identity::connect_pinned(join_addr, &token.ca_digest)
        .await
        .with_context(|| format!("cannot reach a trusted manager at {join_addr}"))?;
    let (csr_pem, key_pem) = identity::generate_csr()?;
    let request = IssueCertificateRequest {
        token: token_text.trim().to_string(),
        csr_pem,
        hostname: placement.hostname(),
        advertise_addr: placement.advertise(),
    };
    let issued = tokio::time::timeout(Duration::from_secs(15), CaClient::new(channel).issue_certificate(request))
        .await
        .map_err(|_| anyhow!("the manager at {join_addr} did not answer the join request in time"))?
        .map_err(|status| anyhow!("join refused: {}", status.message()))?
        .into_inner();
    if identity::ca_digest(&issued.ca_cert_pem)? != token.ca_digest {
        bail!("the manager at {join_addr} returned a root CA that does not match the join token");
    }
    if issued.role != NodeRole::Manager.as_str() {
        bail!("this is a {} join token: managers join with the manager token (cluster join-token manager)", issued.role);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let creds = Credentials { ca_cert_pem: issued.ca_cert_pem, cert_pem: issued.cert_pem, key_pem };
    creds.save(&data_dir.join("node.json"))?;
    let mut join_addrs = vec![join_addr.to_string()];
    join_addrs.extend(issued.manager_addrs.into_iter().filter(|a| a != join_addr));
    let config = ManagerConfig {
        node_id: issued.node_id,
        listen_addr: placement.listen_addr.clone(),
        advertise_addr: placement.advertise(),
        hostname: placement.hostname(),
        join_addrs,
        ready: false,
        insecure_registries: options.insecure_registries.clone(),
    };
    config.save(data_dir)?;
    let running = start(options, config, creds.clone()).await?;
    finish_join(running, &creds, data_dir).await
}

/// Restarts a manager from its data dir.
pub async fn restart(options: &StartOptions) -> Result<RunningManager> {
    let data_dir = &options.data_dir;
    let mut config = ManagerConfig::load(data_dir)?;
    if !options.insecure_registries.is_empty() && options.insecure_registries != config.insecure_registries {
        config.insecure_registries = options.insecure_registries.clone();
        config.save(data_dir)?;
    }
    let creds = Credentials::load(&data_dir.join("node.json"))?;
    if !config.ready && config.join_addrs.is_empty() {
        bail!(
            "initialisation of {} did not finish; remove the data dir and run `cluster-manager init` again",
            data_dir.display()
        );
    }
    let running = start(options, config.clone(), creds.clone()).await?;
    if config.ready { Ok(running) } else { finish_join(running, &creds, data_dir).await }
}

/// Asks the managers (following leader hints) to add this one to the Raft group.
async fn finish_join(running: RunningManager, creds: &Credentials, data_dir: &Path) -> Result<RunningManager> {
    let deadline = Instant::now() + JOIN_RAFT_DEADLINE;
    let mut candidates = running.config.join_addrs.clone();
    let mut last_error = String::from("no manager address to join through");
    let mut attempt = 0usize;
    while Instant::now() < deadline && !candidates.is_empty() {
        let addr = candidates[attempt % candidates.len()].clone();
        attempt += 1;
        match ask_to_join(&addr, creds, &running.config.advertise_addr).await {
            Ok(data_key) => {
                // Saved before `ready`: a restart before this point joins (and asks) again.
                running.consensus.data_key.set(data_key);
                running.consensus.data_key.save(data_dir)?;
                let config = ManagerConfig { ready: true, ..running.config.clone() };
                config.save(data_dir)?;
                tracing::info!(via = %addr, "joined the Raft group");
                return Ok(RunningManager { config, ..running });
            }
            Err(JoinAttempt::Leader(leader)) => {
                if !candidates.contains(&leader) {
                    candidates.push(leader.clone());
                }
                attempt = candidates.iter().position(|a| *a == leader).unwrap_or(0);
            }
            Err(JoinAttempt::Failed(error)) => {
                last_error = error;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    bail!("could not join the Raft group: {last_error}")
}

enum JoinAttempt {
    /// The manager asked is not the leader; the leader is at this address.
    Leader(String),
    Failed(String),
}

/// Joins and returns the cluster's secrets key (see [`crate::secrets`]).
async fn ask_to_join(addr: &str, creds: &Credentials, raft_addr: &str) -> Result<[u8; crate::secrets::KEY_LEN], JoinAttempt> {
    let channel = identity::connect(addr, creds).await.map_err(|e| JoinAttempt::Failed(format!("{addr}: {e}")))?;
    let request = JoinRaftRequest { raft_addr: raft_addr.to_string() };
    // Adding a learner waits until it has caught up, which may take a snapshot transfer.
    match tokio::time::timeout(Duration::from_secs(30), RaftClient::new(channel).join_raft(request)).await {
        Err(_) => Err(JoinAttempt::Failed(format!("{addr}: no answer in time"))),
        Ok(Ok(response)) => <[u8; crate::secrets::KEY_LEN]>::try_from(response.into_inner().data_key.as_slice())
            .map_err(|_| JoinAttempt::Failed(format!("{addr}: the answer holds no valid secrets key"))),
        Ok(Err(status)) => match status.metadata().get("leader-addr").and_then(|v| v.to_str().ok()) {
            Some(leader) if leader != addr => Err(JoinAttempt::Leader(leader.to_string())),
            _ => Err(JoinAttempt::Failed(format!("{addr}: {}", status.message()))),
        },
    }
}

/// Opens the storage, starts Raft and serves the gRPC services.
async fn start(options: &StartOptions, config: ManagerConfig, creds: Credentials) -> Result<RunningManager> {
    let (log_store, state_machine, state) = raft::open_storage(&options.data_dir)
        .await
        .with_context(|| format!("cannot open the Raft storage in {}", options.data_dir.display()))?;
    let raft_config = options.tuning.config().map_err(|e| anyhow!("invalid Raft settings: {e}"))?;
    let network = raft::Network::new(creds.clone());
    let (raft, raft_runtime) = raft::start(config.node_id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| anyhow!("cannot start Raft: {e}"))?;
    let mut data_key = crate::secrets::DataKey::load(&options.data_dir)?;
    if !data_key.is_set() && config.ready {
        // A data dir from before secrets existed (see `crate::secrets`).
        tracing::warn!("no secrets key in the data dir: generating one (managers of a group must share it)");
        data_key = crate::secrets::DataKey::generate()?;
        data_key.save(&options.data_dir)?;
    }
    let consensus = Consensus::new(raft, state, config.node_id, creds.clone(), options.quorum_timeout, data_key);

    let listener = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    // Nagle's algorithm with delayed ACKs adds up to 40 ms to small replies: tonic's own
    // `tcp_nodelay` only applies to listeners it binds itself, so set it on every accepted stream.
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    let tls = identity::server_tls(&creds)?;
    let (dispatcher, mut background) = DispatcherService::start(consensus.clone(), options.dispatcher);
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .context("invalid TLS configuration")?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(
            RaftServer::new(RaftService { consensus: consensus.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(ControlServer::new(ControlService {
            consensus: consensus.clone(),
            logs: dispatcher.log_broker(),
            images: ImageResolver::new(config.insecure_registries.clone(), RESOLVE_TIMEOUT),
        }))
        .add_service(CaServer::new(CaService { consensus: consensus.clone() }))
        .add_service(DispatcherServer::new(dispatcher).max_encoding_message_size(MAX_MESSAGE));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    let timing = FailoverTiming {
        probe_every: Duration::from_millis(options.tuning.heartbeat_ms.max(10)),
        lease: Duration::from_millis(options.tuning.election_max_ms),
        stagger: Duration::from_millis(options.tuning.heartbeat_ms.max(25)),
    };
    let failover = tokio::spawn(failover::watch_leader(consensus.clone(), timing));
    let control = tokio::spawn(crate::control_loop::run(consensus.clone()));
    background.push(control);
    tracing::info!(node = %node_id_string(config.node_id), listen = %config.listen_addr, "manager serving");
    Ok(RunningManager { consensus, config, server, failover, background, stop, raft_runtime })
}

fn refuse_existing(data_dir: &Path) -> Result<()> {
    if data_dir.join("manager.json").exists() || data_dir.join("raft.redb").exists() {
        bail!(
            "{} already holds a manager; restart it with `cluster-manager run --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(())
}

fn random_node_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(raw)
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::ManagerConfig;

    #[test]
    fn a_config_saved_before_insecure_registries_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"node_id": 7, "listen_addr": "127.0.0.1:4242", "advertise_addr": "127.0.0.1:4242",
                      "hostname": "m1", "join_addrs": [], "ready": true}"#;
        std::fs::write(dir.path().join("manager.json"), old).unwrap();
        let config = ManagerConfig::load(dir.path()).unwrap();
        assert!(config.insecure_registries.is_empty());
        let config = ManagerConfig { insecure_registries: vec!["reg.local:5000".into()], ..config };
        config.save(dir.path()).unwrap();
        assert_eq!(ManagerConfig::load(dir.path()).unwrap().insecure_registries, ["reg.local:5000"]);
    }
}
