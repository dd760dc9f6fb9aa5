//! `cluster lab up|down|status`: a multi-host cluster on this machine, each host a network
//! namespace (see `e2e::netlab`): a registry with a busybox image and a manager in h1, an agent
//! in every host. State lives in /tmp/cluster-lab-<name>/, so `down` and `status` work from any
//! process. Needs root, iproute2, runc, docker-registry and busybox-static; the daemons'
//! binaries are taken from this executable's directory first (then as `e2e::bins` finds them).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::{Args, Subcommand};
use e2e::netlab::{self, NetLab};

/// Try clusters of several hosts on this machine.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create the hosts and start a registry, a manager (h1) and an agent per host.
    Up(UpArgs),
    /// Stop every process; remove the containers, mounts, namespaces and the lab's dir.
    Down(NameArgs),
    /// Show the lab's namespaces, processes and nodes.
    Status(NameArgs),
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The lab's name (1-20 characters of [A-Za-z0-9_-]).
    #[arg(long, default_value = "lab")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub lab: NameArgs,
    /// How many hosts (1-250).
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
}

/// This executable: the CLI the lab's hosts are driven with.
fn cluster_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the path of the cluster executable")
}

/// Runs a `lab` subcommand. Blocking (processes, namespaces, waits): call it off the runtime.
pub fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up(args) => up(&args.lab.name, args.hosts),
        LabCommand::Down(args) => {
            NetLab::teardown(&args.name)?;
            println!("lab {} is down", args.name);
            Ok(())
        }
        LabCommand::Status(args) => status(&args.name),
    }
}

fn up(name: &str, hosts: usize) -> anyhow::Result<()> {
    let bin_dir = e2e::bins::bin_dir_beside_exe()?;
    let lab = NetLab::up_detached_with_bins(name, hosts, bin_dir)?;
    let cluster = cluster_exe()?;
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
    Ok(())
}

fn status(name: &str) -> anyhow::Result<()> {
    print!("{}", NetLab::status(name));
    let admin = netlab::lab_dir(name).join("admin.json");
    if admin.exists() {
        // The manager is only reachable from inside the hosts' namespaces.
        let status = Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &netlab::host_ns(name, 1)])
            .arg(cluster_exe()?)
            .arg("--config")
            .arg(&admin)
            .args(["node", "ls"])
            .status()
            .context("cannot run `cluster node ls` in the lab")?;
        if !status.success() {
            eprintln!("lab {name}: `cluster node ls` in h1 failed ({status})");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(subcommand)]
        command: LabCommand,
    }

    fn parse(args: &[&str]) -> LabCommand {
        Wrap::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn defaults_and_flags() {
        match parse(&["up"]) {
            LabCommand::Up(a) => assert_eq!((a.lab.name.as_str(), a.hosts), ("lab", 3)),
            other => panic!("{other:?}"),
        }
        match parse(&["up", "--name", "demo", "--hosts", "5"]) {
            LabCommand::Up(a) => assert_eq!((a.lab.name.as_str(), a.hosts), ("demo", 5)),
            other => panic!("{other:?}"),
        }
        match parse(&["down", "--name", "demo"]) {
            LabCommand::Down(a) => assert_eq!(a.name, "demo"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["status"]), LabCommand::Status(a) if a.name == "lab"));
        assert!(Wrap::try_parse_from(["lab", "down", "--hosts", "2"]).is_err());
    }
}
