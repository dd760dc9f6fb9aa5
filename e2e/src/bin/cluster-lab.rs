//! `cluster-lab up|down|status --name N`: a multi-host lab in network namespaces (see
//! `e2e::netlab`). State lives in /tmp/cluster-lab-<name>/, so `down` and `status` work from
//! any process. Needs root, iproute2, runc, docker-registry and busybox-static, and the
//! binaries built next to this one (`cargo build --workspace --bins`).

use clap::{Parser, Subcommand};
use e2e::netlab::{self, NetLab};

#[derive(Parser)]
#[command(
    name = "cluster-lab",
    about = "A multi-host cluster in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the hosts and starts a registry, a manager (h1) and an agent per host.
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 3)]
        hosts: usize,
    },
    /// Stops every process, removes containers, mounts, namespaces and the lab dir.
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Shows the lab's namespaces, processes and nodes.
    Status {
        #[arg(long, default_value = "lab")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { name, hosts } => {
            let lab = NetLab::up_detached(&name, hosts)?;
            let cluster = e2e::bins::binary(e2e::bins::CLI_BIN)?;
            println!(
                "lab {name} is up: {hosts} hosts, 10.213.{}.1..{hosts}",
                lab.k
            );
            println!("manager  {}", lab.manager_addr());
            println!("registry {} (image {})", lab.registry_addr(), lab.busybox());
            println!("dir      {}", lab.dir.display());
            println!(
                "try:     ip netns exec {} {} --config {} node ls",
                lab.ns(1),
                cluster.display(),
                lab.admin_path().display()
            );
            lab.detach();
        }
        Command::Down { name } => {
            NetLab::teardown(&name)?;
            println!("lab {name} is down");
        }
        Command::Status { name } => {
            print!("{}", NetLab::status(&name));
            let admin = netlab::lab_dir(&name).join("admin.json");
            if admin.exists() {
                let cluster = e2e::bins::binary(e2e::bins::CLI_BIN)?;
                let _ = std::process::Command::new("timeout")
                    .args(["10", "ip", "netns", "exec", &netlab::host_ns(&name, 1)])
                    .arg(cluster)
                    .arg("--config")
                    .arg(admin)
                    .args(["node", "ls"])
                    .status();
            }
        }
    }
    Ok(())
}
