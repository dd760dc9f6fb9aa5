//! The container scenarios of `bench-containers`, shared with `bench-swarm`: bulk start,
//! one-task latency, node loss and scale up/down on the network-namespace lab, timed with the
//! manager's own timestamps.

use crate::Summary;
use crate::netlab::NetLab;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one wait for convergence may take.
pub const WAIT: Duration = Duration::from_secs(120);
/// The manager's log line for a node whose heartbeats stopped.
pub const NODE_DOWN_LOG: &str = "node is down: its heartbeats stopped";
/// The command of every benchmark task: a busybox shell that sleeps and exits at once on SIGTERM
/// (a bare `sleep` as PID 1 would ignore it and wait out the grace period).
pub const TASK_COMMAND: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"];

#[derive(Serialize)]
pub struct BulkRun {
    pub total_ms: f64,
    pub tasks: Summary,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// What [`bulk_start`] measured: the runs, every task's create-to-RUNNING, the one-task
/// services' create-to-RUNNING, and the nodes marked down meanwhile.
pub type BulkResults = (Vec<BulkRun>, Vec<Duration>, Vec<Duration>, usize);

/// `network`: attach every task to this overlay network (created here), as containers of a real
/// application are.
pub fn bulk_start(
    lab: &mut NetLab,
    replicas: usize,
    runs: usize,
    singles: usize,
    network: Option<&str>,
) -> Result<BulkResults> {
    let image = lab.busybox();
    if let Some(network) = network {
        lab.cli(&["network", "create", network])?;
    }
    let create = |lab: &NetLab, name: &str, replicas: usize, image: &str| {
        create_on(lab, name, replicas, image, network)
    };
    // Pull the image once, so the runs measure starting containers, not the registry.
    create(lab, "warm", 1, &image)?;
    wait_for(lab, "warm", WAIT, |t| running(t).len() == 1)?;
    remove(lab, "warm")?;

    let mut results = Vec::new();
    let mut samples = Vec::new();
    for run in 0..runs {
        let name = format!("bulk{run}");
        let created = now_ms();
        create(lab, &name, replicas, &image)?;
        let tasks = wait_for(lab, &name, WAIT, |t| running(t).len() == replicas)?;
        let up = running(&tasks);
        let last = up.iter().filter_map(|t| t["timestamp_ms"].as_i64()).max();
        let total_ms = (last.unwrap_or(created) - created) as f64;
        let mut run_samples = Vec::new();
        for t in &up {
            if let (Some(c), Some(r)) = (t["created_at_ms"].as_i64(), t["timestamp_ms"].as_i64()) {
                run_samples.push(Duration::from_millis((r - c).max(0) as u64));
            }
        }
        let tasks = Summary::of(&run_samples);
        println!(
            "bulk run {}: {replicas} RUNNING {total_ms:.0} ms after create; per task p50 {:.0} ms p99 {:.0} ms",
            run + 1,
            tasks.p50_ms,
            tasks.p99_ms
        );
        samples.extend(run_samples);
        results.push(BulkRun { total_ms, tasks });
        remove(lab, &name)?;
        wait_containers_gone(lab, 1)?;
    }
    let mut single = Vec::new();
    for run in 0..singles {
        let name = format!("one{run}");
        create(lab, &name, 1, &image)?;
        let tasks = wait_for(lab, &name, WAIT, |t| running(t).len() == 1)?;
        let t = running(&tasks)[0];
        if let (Some(c), Some(r)) = (t["created_at_ms"].as_i64(), t["timestamp_ms"].as_i64()) {
            single.push(Duration::from_millis((r - c).max(0) as u64));
        }
        remove(lab, &name)?;
        wait_containers_gone(lab, 1)?;
    }
    let s = Summary::of(&single);
    println!(
        "one-task services: {} created one at a time, create to RUNNING p50 {:.0} ms p99 {:.0} ms",
        s.count, s.p50_ms, s.p99_ms
    );
    let false_down = count_log(lab, NODE_DOWN_LOG);
    Ok((results, samples, single, false_down))
}

/// Node-loss runs on a fresh 3-host lab: kill -9 h3's agent, time until 6 replicas RUNNING on
/// h1/h2. Returns the samples and the nodes marked down beyond the killed one.
pub fn node_loss(lab: &mut NetLab, runs: usize) -> Result<(Vec<Duration>, usize)> {
    let image = lab.busybox();
    let names = lab.node_names()?;
    let h3 = names
        .iter()
        .find(|(_, host)| host.as_str() == "h3")
        .map(|(id, _)| id.clone())
        .context("no node h3")?;
    let mut samples = Vec::new();
    for run in 0..runs {
        let name = format!("loss{run}");
        create(lab, &name, 6, &image)?;
        wait_for(lab, &name, WAIT, |t| running(t).len() == 6)?;
        let killed = now_ms();
        lab.kill_agent(3)?;
        let tasks = wait_for(lab, &name, WAIT, |t| {
            let up = running(t);
            up.len() == 6 && up.iter().all(|t| t["node_id"] != h3.as_str())
        })?;
        let last = running(&tasks)
            .iter()
            .filter(|t| t["created_at_ms"].as_i64().unwrap_or(0) >= killed)
            .filter_map(|t| t["timestamp_ms"].as_i64())
            .max()
            .unwrap_or(killed);
        let sample = Duration::from_millis((last - killed).max(0) as u64);
        println!(
            "node loss run {}: replacements RUNNING {} ms after kill -9",
            run + 1,
            sample.as_millis()
        );
        samples.push(sample);
        lab.restart_agent(3)?;
        let deadline = Instant::now() + WAIT;
        while !lab.ready_hosts()?.iter().any(|h| h == "h3") {
            if Instant::now() > deadline {
                bail!("h3 not ready again within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        remove(lab, &name)?;
        for i in 1..=3 {
            wait_containers_gone(lab, i)?;
        }
    }
    let downs = count_log(lab, NODE_DOWN_LOG);
    Ok((samples, downs.saturating_sub(runs)))
}

/// Tears the lab down; when the scenario failed, first copies the daemons' logs to
/// `/tmp/bench-containers-<lab>-logs/` and names that dir in the error.
pub fn keep_logs_on_error<T>(mut lab: NetLab, result: Result<T>) -> Result<T> {
    let result = result.map_err(|e| {
        let kept = PathBuf::from(format!("/tmp/bench-containers-{}-logs", lab.name));
        let _ = std::fs::remove_dir_all(&kept);
        let copied = std::fs::create_dir_all(&kept).and_then(|()| {
            for entry in std::fs::read_dir(lab.dir.join("logs"))? {
                let entry = entry?;
                std::fs::copy(entry.path(), kept.join(entry.file_name()))?;
            }
            Ok(())
        });
        match copied {
            Ok(()) => e.context(format!("logs kept in {}", kept.display())),
            Err(_) => e,
        }
    });
    lab.down();
    result
}

/// `service create -d` of [`TASK_COMMAND`].
pub fn create(lab: &NetLab, name: &str, replicas: usize, image: &str) -> Result<()> {
    create_on(lab, name, replicas, image, None)
}

/// `service create -d` of [`TASK_COMMAND`], on an overlay network if one is given.
pub fn create_on(
    lab: &NetLab,
    name: &str,
    replicas: usize,
    image: &str,
    network: Option<&str>,
) -> Result<()> {
    let replicas = replicas.to_string();
    let mut args = vec![
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        &replicas,
    ];
    if let Some(network) = network {
        args.extend(["--network", network]);
    }
    args.push(image);
    args.extend(TASK_COMMAND);
    lab.cli(&args)?;
    Ok(())
}

pub fn remove(lab: &NetLab, name: &str) -> Result<()> {
    lab.cli(&["service", "rm", name])?;
    Ok(())
}

pub fn running(tasks: &[Value]) -> Vec<&Value> {
    tasks
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .collect()
}

/// Polls `service ps NAME` until `done` accepts the task list.
pub fn wait_for(
    lab: &NetLab,
    name: &str,
    limit: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let started = Instant::now();
    loop {
        let tasks = lab.cli_json(&["service", "ps", name])?;
        let tasks = tasks.as_array().cloned().unwrap_or_default();
        if done(&tasks) {
            return Ok(tasks);
        }
        if started.elapsed() > limit {
            let mut states = std::collections::BTreeMap::new();
            for t in &tasks {
                let key = format!("{} -> {} {}", t["state"], t["desired_state"], t["err"]);
                *states.entry(key).or_insert(0usize) += 1;
            }
            bail!(
                "service {name} did not converge within {limit:?}; tasks (state -> desired, \
                 count): {states:#?}\nlogs:\n{}",
                lab.logs_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until host `i`'s agent has no container left (runc's state dir is empty).
pub fn wait_containers_gone(lab: &NetLab, i: usize) -> Result<()> {
    let root = lab.agent_dir(i).join("runtime/runc");
    let deadline = Instant::now() + WAIT;
    loop {
        let left = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} containers still on h{i} after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many lines of the manager's log contain `needle`.
pub fn count_log(lab: &NetLab, needle: &str) -> usize {
    std::fs::read_to_string(lab.dir.join("logs/manager.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Scale up/down of an existing service: `from` replicas RUNNING, then `service scale` to `to`
/// and back to `from`, `runs` times. Each sample is the time from the scale call to the last
/// task reaching its new state (manager timestamps): RUNNING for a scale-up, stopped for a
/// scale-down. Returns (up, down) samples.
pub fn scale(
    lab: &NetLab,
    from: usize,
    to: usize,
    runs: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let image = lab.busybox();
    let name = "scale";
    create(lab, name, from, &image)?;
    wait_for(lab, name, WAIT, |t| running(t).len() == from)?;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let started = now_ms();
        lab.cli(&["service", "scale", "-d", &format!("{name}={to}")])?;
        let tasks = wait_for(lab, name, WAIT, |t| running(t).len() == to)?;
        let last = running(&tasks)
            .iter()
            .filter(|t| t["created_at_ms"].as_i64().unwrap_or(0) >= started)
            .filter_map(|t| t["timestamp_ms"].as_i64())
            .max()
            .unwrap_or(started);
        let up_ms = (last - started).max(0);
        let started = now_ms();
        lab.cli(&["service", "scale", "-d", &format!("{name}={from}")])?;
        let tasks = wait_for(lab, name, WAIT, |t| {
            t.iter().filter(|t| t["state"] == "running").count() == from
                && t.iter()
                    .all(|t| t["desired_state"] == "running" || t["state"] != "running")
        })?;
        let last = tasks
            .iter()
            .filter(|t| t["desired_state"] != "running")
            .filter_map(|t| t["timestamp_ms"].as_i64())
            .filter(|&ts| ts >= started)
            .max()
            .unwrap_or_else(now_ms);
        let down_ms = (last - started).max(0);
        println!(
            "scale run {}: {from} -> {to} RUNNING {up_ms} ms, {to} -> {from} stopped {down_ms} ms",
            run + 1
        );
        up.push(Duration::from_millis(up_ms as u64));
        down.push(Duration::from_millis(down_ms as u64));
    }
    remove(lab, name)?;
    wait_containers_gone(lab, 1)?;
    Ok((up, down))
}
