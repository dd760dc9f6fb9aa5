//! `cluster`: the operator's command-line tool. Talks to any manager over mTLS with the admin
//! credentials that `cluster-manager init` writes.

mod commands;
mod compose;
mod connect;
mod output;
mod parse;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::info::InfoArgs;
use commands::join_token::JoinTokenArgs;
use commands::lab::LabCommand;
use commands::network::NetworkCommand;
use commands::node::NodeCommand;
use commands::service::ServiceCommand;
use commands::stack::StackCommand;
use connect::Target;
use output::Reported;

/// Manage a cluster: nodes, services, join tokens and cluster state; or try one on this machine
/// (`cluster lab`).
#[derive(Debug, Parser)]
#[command(name = "cluster", version, propagate_version = true)]
struct Cli {
    /// Admin config (managers + admin certificate), e.g. DATA_DIR/admin.json.
    #[arg(long, global = true, env = "CLUSTER_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Talk to this manager (HOST:PORT) instead of the ones listed in the config.
    #[arg(long, global = true, value_name = "ADDR")]
    host: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage secrets (data never shown; mounted at /run/secrets in tasks).
    #[command(subcommand)]
    Secret(commands::secret::BlobCommand),
    /// Manage configs (files mounted in tasks).
    #[command(subcommand)]
    Config(commands::secret::BlobCommand),
    /// Deploy and manage stacks of services from compose files.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Show or rotate the tokens nodes join with.
    JoinToken(JoinTokenArgs),
    /// Show the cluster, its Raft state and its managers.
    Info(InfoArgs),
    /// A multi-host cluster on this machine, in network namespaces (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = Target {
        config: cli.config,
        host: cli.host,
    };
    match cli.command {
        Command::Node(command) => commands::node::run(command, &target).await,
        Command::Service(command) => commands::service::run(command, &target).await,
        Command::Network(command) => commands::network::run(command, &target).await,
        Command::Secret(command) => {
            commands::secret::run(commands::secret::Kind::Secret, command, &target).await
        }
        Command::Config(command) => {
            commands::secret::run(commands::secret::Kind::Config, command, &target).await
        }
        Command::Stack(command) => commands::stack::run(command, &target).await,
        Command::JoinToken(args) => commands::join_token::run(args, &target).await,
        Command::Info(args) => commands::info::run(args, &target).await,
        // Blocking work (processes, namespaces, waits): off the runtime's thread.
        Command::Lab(command) => tokio::task::spawn_blocking(move || commands::lab::run(command))
            .await
            .map_err(|e| anyhow::anyhow!("the lab command panicked: {e}"))?,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Reported>() => ExitCode::FAILURE,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Output cut short by a closed pipe (`cluster node ls | head -1`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_global_flags_after_subcommands() {
        let cli = Cli::try_parse_from(["cluster", "node", "ls", "--host", "h:1", "-q"]).unwrap();
        assert_eq!(cli.host.as_deref(), Some("h:1"));
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            vec!["cluster", "node", "update", "--availability", "off", "n1"],
            vec!["cluster", "node", "update", "--label-add", "=v", "n1"],
            vec!["cluster", "node", "ls", "--filter", "role"],
            vec!["cluster", "join-token", "admin"],
            vec!["cluster", "node", "rm"],
            vec!["cluster", "join-token", "-q", "--format", "json", "worker"],
        ];
        for args in bad {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?} parsed");
        }
    }
}
