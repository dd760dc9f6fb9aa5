//! `cluster-manager`: create a cluster, join one as a manager, or restart from a data dir.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use manager::api::dispatcher::DispatcherTiming;
use manager::daemon::{self, Placement, StartOptions};
use manager::raft::RaftTuning;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "cluster-manager", version, about = "A manager of a cluster: Raft, control API, CA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new cluster with this manager as its first member; writes admin.json for the CLI.
    Init {
        #[command(flatten)]
        place: PlaceArgs,
        /// The address pool overlay networks without --subnet are carved from (IPv4 CIDR).
        #[arg(long, default_value = manager::ipam::DEFAULT_POOL)]
        default_addr_pool: String,
        /// The prefix length of each network carved from the pool (at most 23: every host gets
        /// a /24 of each network it uses, and its last /24 holds the services' virtual IPs).
        #[arg(long, default_value_t = manager::ipam::DEFAULT_MASK_LENGTH)]
        default_addr_pool_mask_length: u8,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Join an existing cluster as a manager.
    Join {
        /// The manager join token (`cluster join-token manager`).
        #[arg(long, env = "CLUSTER_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The address (host:port) of a manager of the cluster.
        #[arg(long)]
        join_addr: String,
        #[command(flatten)]
        place: PlaceArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Restart a manager from its data dir.
    Run {
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Args)]
struct PlaceArgs {
    /// Where to listen for API and Raft traffic (ip:port).
    #[arg(long, default_value = "0.0.0.0:4242")]
    listen_addr: String,
    /// The address peers and clients reach this manager at (ip:port); defaults to --listen-addr.
    #[arg(long)]
    advertise_addr: Option<String>,
    /// The hostname this node is listed under; defaults to the system's.
    #[arg(long)]
    hostname: Option<String>,
}

#[derive(Args)]
struct CommonArgs {
    /// Where the Raft log, snapshots and credentials live.
    #[arg(long, default_value = "/var/lib/cluster/manager")]
    data_dir: PathBuf,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Raft election timeout, lower bound.
    #[arg(long, default_value_t = 100)]
    election_min_ms: u64,
    /// Raft election timeout, upper bound.
    #[arg(long, default_value_t = 200)]
    election_max_ms: u64,
    /// Take a snapshot (and compact the log) every this many entries.
    #[arg(long, default_value_t = 5000)]
    snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    #[arg(long, default_value_t = 1000)]
    logs_kept: u64,
    /// How long a write or consistent read waits for a quorum before failing with "no quorum".
    #[arg(long, default_value_t = 5000)]
    quorum_timeout_ms: u64,
    /// How often agents send heartbeats.
    #[arg(long, default_value_t = 1000)]
    agent_heartbeat_ms: u64,
    /// How long an agent may stay silent before its node is DOWN and its tasks are replaced
    /// (default: 3 heartbeat periods).
    #[arg(long)]
    node_down_after_ms: Option<u64>,
    /// A registry (host:port) reached over plain http when pinning service images to digests;
    /// repeatable. Saved in the data dir: `run` keeps the saved list unless this flag is given.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = parse_registry_host)]
    insecure_registries: Vec<String>,
}

/// Checks one `--insecure-registry` value.
fn parse_registry_host(value: &str) -> Result<String, String> {
    registry::validate_registry_host(value).map(|()| value.to_string())
}

impl CommonArgs {
    fn options(&self) -> StartOptions {
        StartOptions {
            data_dir: self.data_dir.clone(),
            tuning: RaftTuning {
                heartbeat_ms: self.heartbeat_ms,
                election_min_ms: self.election_min_ms,
                election_max_ms: self.election_max_ms,
                snapshot_logs: self.snapshot_logs,
                max_logs_kept_after_snapshot: self.logs_kept,
            },
            quorum_timeout: Duration::from_millis(self.quorum_timeout_ms),
            dispatcher: DispatcherTiming {
                heartbeat_period: Duration::from_millis(self.agent_heartbeat_ms.max(1)),
                grace: Duration::from_millis(self.node_down_after_ms.unwrap_or(3 * self.agent_heartbeat_ms.max(1))),
            },
            insecure_registries: self.insecure_registries.clone(),
        }
    }
}

impl PlaceArgs {
    fn placement(&self) -> Placement {
        Placement {
            listen_addr: self.listen_addr.clone(),
            advertise_addr: self.advertise_addr.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

#[tokio::main]
async fn main() {
    identity::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = run(Cli::parse()).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let running = match &cli.command {
        Command::Init { place, common, default_addr_pool, default_addr_pool_mask_length } => {
            let pool = manager::store::AddressPool {
                pool: default_addr_pool.clone(),
                mask_length: *default_addr_pool_mask_length,
            };
            let running = daemon::init_with_pool(&common.options(), &place.placement(), &pool).await?;
            let admin = common.data_dir.join("admin.json");
            println!("Cluster initialised: this manager is {:016x}.", running.config.node_id);
            println!("Admin credentials: {}", admin.display());
            println!("    export CLUSTER_CONFIG={}", admin.display());
            println!("To add a manager or a worker, run `cluster join-token manager` or `cluster join-token worker`.");
            running
        }
        Command::Join { token, join_addr, place, common } => {
            let running = daemon::join(&common.options(), &place.placement(), token, join_addr).await?;
            println!("This node joined the cluster as manager {:016x}.", running.config.node_id);
            running
        }
        Command::Run { common } => daemon::restart(&common.options()).await?,
    };
    running.serve_until(shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
