//! `cluster-agent`: the worker daemon. `join` a cluster with a worker token, or `run` again from
//! the data dir.

use std::path::PathBuf;

use agent::daemon::{self, JoinOptions, RunOptions};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cluster-agent", about = "The cluster's worker agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Joins a cluster with a worker token, then runs.
    Join {
        #[arg(long)]
        token: String,
        /// A manager's address (host:port).
        #[arg(long)]
        join_addr: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        /// A registry (host:port) reached over plain HTTP; repeatable.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Runs a node that has joined, from its data dir.
    Run {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    #[arg(long)]
    data_dir: PathBuf,
    /// The runc binary.
    #[arg(long)]
    runc: Option<PathBuf>,
    /// Parent cgroup of the containers.
    #[arg(long)]
    cgroup_parent: Option<PathBuf>,
    /// A DNS server (ip:port) the embedded DNS forwards names outside the cluster to; repeatable.
    /// None given: such names are refused.
    #[arg(long = "dns-upstream")]
    dns_upstreams: Vec<std::net::SocketAddr>,
}

impl Common {
    fn run_options(&self) -> RunOptions {
        RunOptions {
            runc_binary: self.runc.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            dns_upstreams: self.dns_upstreams.clone(),
            ..Default::default()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn")),
        )
        .init();
    identity::install_crypto_provider();
    let cli = Cli::parse();
    let common = match cli.command {
        Command::Join {
            token,
            join_addr,
            advertise_addr,
            hostname,
            insecure_registries,
            common,
        } => {
            let opts = JoinOptions {
                token,
                join_addr,
                data_dir: common.data_dir.clone(),
                advertise_addr,
                hostname,
                insecure_registries,
            };
            daemon::join(&opts).await?;
            common
        }
        Command::Run { common } => common,
    };
    let run_options = common.run_options();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = daemon::run(&common.data_dir, &run_options) => r,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; containers keep running");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::info!("terminated; containers keep running");
            Ok(())
        }
    }
}
