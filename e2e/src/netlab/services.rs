//! Services and containers in a lab, as the end-to-end tests drive them: the CLI for services
//! and tasks, `runc exec` for commands inside a task's container.

use super::{CLI_TIMEOUT, NetLab};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A long-running task command that ends at once on SIGTERM (a plain `sleep` as PID 1 ignores
/// it and is killed only after the stop grace period).
pub const SLEEPER: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

/// The A records busybox nslookup printed for a name (the server's own address left out).
pub fn resolved(output: &str) -> std::collections::BTreeSet<String> {
    let answers = output.split_once("Name:").map_or("", |(_, rest)| rest);
    answers
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().trim_start_matches("1: ").to_string())
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .collect()
}

/// Whether a task (as `service ps --format json` gives it) runs and is meant to.
pub fn is_running(task: &Value) -> bool {
    task["desired_state"] == "running" && task["state"] == "running"
}

impl NetLab {
    /// `service create -d ARGS`.
    pub fn create_service(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["service", "create", "-d"];
        full.extend_from_slice(args);
        self.cli(&full).map(drop)
    }

    /// `service inspect SERVICE` of one service, parsed.
    pub fn inspect_service(&self, service: &str) -> Result<Value> {
        let v = self.cli_json(&["service", "inspect", service])?;
        Ok(if v.is_array() { v[0].clone() } else { v })
    }

    /// The host (1-based) whose agent runs `task` (as `service ps --format json` gives it).
    pub fn host_of(&self, task: &Value) -> Result<usize> {
        let names = self.node_names()?;
        let node = task["node_id"].as_str().unwrap_or_default();
        let host = names.get(node).with_context(|| format!("no node {node}"))?;
        host.trim_start_matches('h')
            .parse()
            .with_context(|| format!("{host} is not a lab host"))
    }

    /// The tasks of `service`, as `service ps --format json` gives them.
    pub fn tasks(&self, service: &str) -> Result<Vec<Value>> {
        let v = self.cli_json(&["service", "ps", service])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Polls the tasks of `service` until `check` accepts them; after `timeout`, an error with
    /// the last list and the daemons' logs.
    pub fn wait_tasks(
        &self,
        service: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < timeout {
            if let Ok(list) = self.tasks(service) {
                if check(&list) {
                    eprintln!("{what}: {:.2}s", started.elapsed().as_secs_f64());
                    return Ok(list);
                }
                last = list;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what}; tasks:\n{}\nlogs:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            self.logs_tail(30)
        )
    }

    /// Runs `args` inside the container of task `task_id` on host `i` (`runc exec`), killed
    /// after [`CLI_TIMEOUT`].
    pub fn exec_in_task(&self, i: usize, task_id: &str, args: &[&str]) -> Result<Output> {
        Command::new("timeout")
            .args(["--signal=KILL", &CLI_TIMEOUT.as_secs().to_string(), "runc"])
            .arg("--root")
            .arg(self.agent_dir(i).join("runtime/runc"))
            .args(["exec", task_id])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("runc exec {task_id} on h{i}"))
    }

    /// Like [`NetLab::exec_in_task`], but fails unless the command exits 0; returns stdout.
    pub fn exec_in_task_ok(&self, i: usize, task_id: &str, args: &[&str]) -> Result<String> {
        let out = self.exec_in_task(i, task_id, args)?;
        if !out.status.success() {
            bail!(
                "{args:?} in task {task_id} on h{i} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `program args` in the network namespace of task `task_id`'s container on host `i`
    /// (with the host's tools, e.g. iputils ping), killed after [`CLI_TIMEOUT`].
    pub fn exec_in_task_netns(
        &self,
        i: usize,
        task_id: &str,
        program: &str,
        args: &[&str],
    ) -> Result<Output> {
        let tag = self.node_tag(i)?;
        let netns = format!("/run/netns/cl-{tag}-task-{task_id}");
        Command::new("timeout")
            .args([
                "--signal=KILL",
                &CLI_TIMEOUT.as_secs().to_string(),
                "nsenter",
            ])
            .arg(format!("--net={netns}"))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{program} in {netns}"))
    }

    /// The tag the agent of host `i` puts in the names of its namespaces (its node id in hex).
    pub fn node_tag(&self, i: usize) -> Result<String> {
        let path = self.agent_dir(i).join("agent.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let id = v["node_id"]
            .as_u64()
            .with_context(|| format!("{}: no node_id", path.display()))?;
        Ok(format!("{id:016x}"))
    }
}
