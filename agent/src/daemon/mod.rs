//! The `cluster-agent` daemon: joins a cluster with a worker token, keeps a session with the
//! leader ([`session`]) and runs the assigned tasks' containers ([`executor`]).
//!
//! Data dir layout: `agent.json` (config), `node.json` (credentials), `images/`, `runtime/`,
//! `containers/<task id>/` (root filesystems, and `image`: the pinned image each was made from),
//! `volumes/<name>/_data`, `network/` (overlay attachments, containers' resolv.conf).

pub mod container;
pub mod executor;
pub mod files;
pub mod health;
pub mod log_publisher;
pub mod plan;
pub mod session;

#[cfg(test)]
mod executor_tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use identity::{Credentials, JoinToken};
use proto::v1::IssueCertificateRequest;
use proto::v1::ca_client::CaClient;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::image::{ImageStore, RegistryClient, RegistryConfig};
use crate::network::{Overlay, OverlaySettings};
use crate::runtime::{ContainerRuntime, Runtime, RuntimeConfig};
use executor::{Executor, ImageGcOptions, Images, StatusQueue, StoreImages};

/// What `join` learned and the command line gave, kept in `agent.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentConfig {
    pub node_id: u64,
    pub hostname: String,
    pub advertise_addr: String,
    /// Managers to open sessions with, tried in order.
    pub manager_addrs: Vec<String>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

impl AgentConfig {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("agent.json")
    }

    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = Self::path(data_dir);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (has this node joined?)", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid agent config", path.display()))
    }

    /// Saves atomically (temporary file, fsync, rename, fsync of the dir).
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let tmp = data_dir.join("agent.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, Self::path(data_dir))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }
}

/// How to join.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    pub token: String,
    pub join_addr: String,
    pub data_dir: PathBuf,
    pub advertise_addr: Option<String>,
    pub hostname: Option<String>,
    pub insecure_registries: Vec<String>,
}

/// The host's name (kernel's nodename).
pub fn default_hostname() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Exchanges the worker token for credentials and saves them with the config in the data dir.
pub async fn join(opts: &JoinOptions) -> Result<AgentConfig> {
    let data_dir = &opts.data_dir;
    if AgentConfig::path(data_dir).exists() {
        bail!(
            "{} already holds a joined node: use `cluster-agent run`",
            data_dir.display()
        );
    }
    let token = JoinToken::parse(&opts.token)?;
    let channel = identity::connect_pinned(&opts.join_addr, &token.ca_digest)
        .await
        .with_context(|| format!("cannot reach a trusted manager at {}", opts.join_addr))?;
    let (csr_pem, key_pem) = identity::generate_csr()?;
    let hostname = opts.hostname.clone().unwrap_or_else(default_hostname);
    let advertise_addr = opts.advertise_addr.clone().unwrap_or_default();
    let request = IssueCertificateRequest {
        token: opts.token.trim().to_string(),
        csr_pem,
        hostname: hostname.clone(),
        advertise_addr: advertise_addr.clone(),
    };
    let issued = tokio::time::timeout(
        Duration::from_secs(15),
        CaClient::new(channel).issue_certificate(request),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "the manager at {} did not answer the join request in time",
            opts.join_addr
        )
    })?
    .map_err(|status| anyhow!("join refused: {}", status.message()))?
    .into_inner();
    if identity::ca_digest(&issued.ca_cert_pem)? != token.ca_digest {
        bail!(
            "the manager at {} returned a root CA that does not match the join token",
            opts.join_addr
        );
    }
    if issued.role != "worker" {
        bail!(
            "this is a {} join token: agents join with the worker token (cluster join-token worker)",
            issued.role
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let creds = Credentials {
        ca_cert_pem: issued.ca_cert_pem,
        cert_pem: issued.cert_pem,
        key_pem,
    };
    creds.save(&data_dir.join("node.json"))?;
    let mut manager_addrs = vec![opts.join_addr.clone()];
    manager_addrs.extend(
        issued
            .manager_addrs
            .into_iter()
            .filter(|a| *a != opts.join_addr),
    );
    let config = AgentConfig {
        node_id: issued.node_id,
        hostname,
        advertise_addr,
        manager_addrs,
        insecure_registries: opts.insecure_registries.clone(),
    };
    config.save(data_dir)?;
    tracing::info!(node = config.node_id, "joined the cluster as a worker");
    Ok(config)
}

/// Settings of a running agent besides the data dir.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// runc binary (default `runc`).
    pub runc_binary: Option<PathBuf>,
    /// Parent cgroup of the containers (default `cluster`, relative to the agent's).
    pub cgroup_parent: Option<PathBuf>,
    /// When unused images are collected.
    pub image_gc: ImageGcOptions,
    /// Where the embedded DNS sends names outside the cluster (none: they are refused).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
}

/// Runs the agent from its data dir until the returned future is dropped.
pub async fn run(data_dir: &Path, opts: &RunOptions) -> Result<()> {
    let config = AgentConfig::load(data_dir)?;
    let creds = Credentials::load(&data_dir.join("node.json"))?;
    if let Err(e) = crate::runtime::exit::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    let mut rc = RuntimeConfig::new(data_dir.join("runtime"));
    if let Some(b) = &opts.runc_binary {
        rc.runc_binary = b.clone();
    }
    if let Some(c) = &opts.cgroup_parent {
        rc.cgroup_parent = c.clone();
    }
    let runtime = Arc::new(Runtime::new(rc)?);
    let registry = RegistryClient::new(RegistryConfig {
        insecure_registries: config.insecure_registries.clone(),
        ..Default::default()
    })?;
    let store = ImageStore::open(data_dir.join("images"), registry)?;
    let images = Arc::new(StoreImages {
        store,
        containers: data_dir.join("containers"),
    });
    let overlay = start_overlay(data_dir, &config, opts).await;
    serve(
        data_dir,
        config,
        creds,
        runtime,
        images,
        opts.image_gc,
        overlay,
    )
    .await
}

/// Overlay networking over the node's advertised address (the underlay). Without an IPv4
/// advertised address the node runs tasks without networks only.
async fn start_overlay(
    data_dir: &Path,
    config: &AgentConfig,
    opts: &RunOptions,
) -> Option<Arc<Overlay>> {
    let Ok(underlay_ip) = config.advertise_addr.parse::<std::net::Ipv4Addr>() else {
        tracing::warn!(
            advertise_addr = %config.advertise_addr,
            "overlay networking disabled: the advertised address is not an IPv4 address"
        );
        return None;
    };
    let underlay_mtu =
        tokio::task::spawn_blocking(move || overlay::dataplane::underlay_mtu(underlay_ip))
            .await
            .ok()
            .and_then(|r| {
                r.inspect_err(
                    |e| tracing::warn!(error = %e, "cannot read the underlay MTU; assuming 1500"),
                )
                .ok()
            })
            .unwrap_or(1500);
    let settings = OverlaySettings {
        node_tag: format!("{:016x}", config.node_id),
        underlay_ip,
        underlay_mtu,
        state_dir: data_dir.join("network"),
        dns: overlay::dns::DnsConfig {
            upstreams: opts.dns_upstreams.clone(),
            ..Default::default()
        },
    };
    match Overlay::new(settings) {
        Ok(overlay) => {
            tracing::info!(%underlay_ip, underlay_mtu, "overlay networking ready");
            tokio::spawn(overlay.clone().run());
            Some(overlay)
        }
        Err(e) => {
            tracing::warn!(error = %e, "overlay networking disabled");
            None
        }
    }
}

/// The session and the executor over a given runtime and image source.
pub async fn serve<R: ContainerRuntime, I: Images>(
    data_dir: &Path,
    config: AgentConfig,
    creds: Credentials,
    runtime: Arc<R>,
    images: Arc<I>,
    image_gc: ImageGcOptions,
    overlay: Option<Arc<Overlay>>,
) -> Result<()> {
    let statuses = StatusQueue::default();
    let (tx, rx) = mpsc::channel(64);
    let logs: Arc<dyn log_publisher::LogSource> = runtime.clone();
    // Secrets and configs of tasks whose container is gone (the agent stopped meanwhile).
    let files = files::TaskFiles::new(data_dir);
    match runtime.list().await {
        Ok(list) => files.cleanup(&list.into_iter().map(|c| c.id).collect()),
        Err(e) => tracing::warn!(error = %e, "cannot list containers to clean up secrets"),
    }
    let images = Arc::new(files::WithFiles {
        images,
        files: files.clone(),
    });
    let mut executor = Executor::new(runtime, images, data_dir.join("volumes"), statuses.clone())
        .with_image_gc(image_gc);
    if let Some(overlay) = &overlay {
        executor = executor.with_overlay(overlay.clone());
    }
    let exec = tokio::spawn(executor.run(rx));
    let dir = data_dir.to_path_buf();
    let saved = config.clone();
    let hook: session::AddrsHook = Arc::new(move |addrs: &[String]| {
        let c = AgentConfig {
            manager_addrs: addrs.to_vec(),
            ..saved.clone()
        };
        if let Err(e) = c.save(&dir) {
            tracing::warn!(error = %e, "cannot save the manager addresses");
        }
    });
    let cfg = session::SessionConfig {
        hostname: config.hostname.clone(),
        advertise_addr: config.advertise_addr.clone(),
        manager_addrs: config.manager_addrs.clone(),
        files: Some(files),
    };
    session::run(cfg, creds, tx, statuses, hook, logs, overlay).await;
    exec.abort();
    Ok(())
}
