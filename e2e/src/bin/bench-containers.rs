//! `bench-containers`: real runc containers in the network-namespace lab (`e2e::netlab`), with the
//! managers' and agents' default settings.
//!
//! - Bulk start: on a 1-host lab with the image already pulled, `service create --replicas N`
//!   (default 100); the time from the create call to the last task reported RUNNING, and each
//!   task's create-to-RUNNING time. Timestamps are the manager's (`created_at_ms`, and
//!   `timestamp_ms` of the RUNNING status), so the CLI's polling interval does not count.
//! - Node loss: on a 3-host lab with 6 replicas (2/2/2), kill -9 the agent of h3; the time from
//!   the kill to the last replacement reported RUNNING on h1/h2. h3's agent is restarted (it
//!   re-adopts and stops its old containers) before the next run.
//! - One task: one-replica services created one after another on the same host; each task's
//!   create-to-RUNNING time (manager timestamps).
//! - False DOWN: how often the manager marked a node down that was not killed, counted from its
//!   log, while the machine was busy starting and stopping containers.
//!
//! Needs root, iproute2, runc, docker-registry and busybox-static, and the binaries built next to
//! this one (`cargo build --release --workspace --bins && target/release/bench-containers`).

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::Summary;
use e2e::netlab::{self, NetLab};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "bench-containers",
    about = "Real containers: bulk start, create-to-RUNNING latency, node loss"
)]
struct Args {
    /// Replicas of the bulk-start service.
    #[arg(long, default_value_t = 100)]
    replicas: usize,
    /// Bulk-start runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Node-loss runs.
    #[arg(long, default_value_t = 5)]
    loss_runs: usize,
    /// One-task services created one after another (create-to-RUNNING latency).
    #[arg(long, default_value_t = 20)]
    single_runs: usize,
    /// CI mode: 10 replicas, one run of each (proves the harness works).
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON (default: <target dir>/bench-containers.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

const TARGET_BULK_MS: f64 = 3000.0;
const TARGET_TASK_P99_MS: f64 = 300.0;
const TARGET_NODE_LOSS_MS: f64 = 3000.0;
/// How long one wait for convergence may take.
const WAIT: Duration = Duration::from_secs(120);
/// The manager's log line for a node whose heartbeats stopped.
const NODE_DOWN_LOG: &str = "node is down: its heartbeats stopped";

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    profile: &'static str,
    replicas: usize,
    bulk_runs: Vec<BulkRun>,
    /// Time from create to all RUNNING, over the runs.
    bulk_total: Summary,
    /// Create-to-RUNNING of every task of every bulk run.
    task_latency: Summary,
    /// Create-to-RUNNING of one-task services created one at a time.
    single_task: Summary,
    node_loss: Summary,
    /// Nodes marked down that were not killed, during all runs.
    false_down: usize,
    figures: Vec<Figure>,
}

#[derive(Serialize)]
struct BulkRun {
    total_ms: f64,
    tasks: Summary,
}

#[derive(Serialize)]
struct Figure {
    name: &'static str,
    value: String,
    target: String,
    met: bool,
    runs: String,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-containers: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.replicas = 10;
        args.runs = 1;
        args.loss_runs = 1;
        args.single_runs = 3;
    }
    let missing = netlab::requirements();
    if !missing.is_empty() {
        if std::env::var_os("CI").is_some() {
            bail!("needs {}", missing.join(", "));
        }
        println!("bench-containers: skipped, needs {}", missing.join(", "));
        return Ok(());
    }

    let mut bulk_lab = NetLab::up("bench1", 1)?;
    let bulk = bulk_start(&mut bulk_lab, args.replicas, args.runs, args.single_runs);
    let (bulk_runs, task_samples, single_samples, bulk_false_down) =
        keep_logs_on_error(bulk_lab, bulk)?;
    let mut loss_lab = NetLab::up("bench3", 3)?;
    let loss = node_loss(&mut loss_lab, args.loss_runs);
    let (loss_samples, loss_false_down) = keep_logs_on_error(loss_lab, loss)?;

    let totals: Vec<Duration> = bulk_runs
        .iter()
        .map(|r| Duration::from_secs_f64(r.total_ms / 1000.0))
        .collect();
    let bulk_total = Summary::of(&totals);
    let task_latency = Summary::of(&task_samples);
    let single_task = Summary::of(&single_samples);
    let node_loss = Summary::of(&loss_samples);
    let false_down = bulk_false_down + loss_false_down;
    let runs = |s: &Summary, what: &str| {
        format!(
            "{} {what} (min {:.0}, median {:.0}, max {:.0} ms)",
            s.count, s.min_ms, s.p50_ms, s.max_ms
        )
    };
    let figures = vec![
        Figure {
            name: "create --replicas N to all RUNNING, one host, warm image",
            value: format!(
                "{:.0} ms (median, N = {})",
                bulk_total.p50_ms, args.replicas
            ),
            target: format!("<= {TARGET_BULK_MS:.0} ms for 100"),
            met: args.replicas >= 100 && bulk_total.p50_ms <= TARGET_BULK_MS,
            runs: runs(&bulk_total, "runs"),
        },
        Figure {
            name: "one-task service create to RUNNING",
            value: format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                single_task.p50_ms, single_task.p99_ms
            ),
            target: format!("p99 <= {TARGET_TASK_P99_MS:.0} ms"),
            met: single_task.p99_ms <= TARGET_TASK_P99_MS,
            runs: runs(&single_task, "services"),
        },
        Figure {
            name: "per-task create to RUNNING within the bulk start",
            value: format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                task_latency.p50_ms, task_latency.p99_ms
            ),
            target: "-".into(),
            met: true,
            runs: format!("{} tasks", task_latency.count),
        },
        Figure {
            name: "node loss (kill -9 agent) to replacements RUNNING",
            value: format!("median {:.0} ms", node_loss.p50_ms),
            target: format!("<= {TARGET_NODE_LOSS_MS:.0} ms"),
            met: node_loss.max_ms <= TARGET_NODE_LOSS_MS,
            runs: runs(&node_loss, "runs"),
        },
        Figure {
            name: "nodes falsely marked DOWN while busy",
            value: false_down.to_string(),
            target: "0".into(),
            met: false_down == 0,
            runs: "all runs".into(),
        },
    ];
    let report = Report {
        benchmark: "bench-containers",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        replicas: args.replicas,
        bulk_runs,
        bulk_total,
        task_latency,
        single_task,
        node_loss,
        false_down,
        figures,
    };
    print_table(&report);
    let path = match args.json {
        Some(path) => path,
        None => e2e::bins::bin_dir()?
            .parent()
            .map(|p| p.join("bench-containers.json"))
            .unwrap_or_else(|| PathBuf::from("bench-containers.json")),
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nJSON: {}", path.display());
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "\nbench-containers ({} build, real runc containers in the lab)",
        report.profile
    );
    println!("| figure | ours | target | met | runs |\n|---|---|---|---|---|");
    for f in &report.figures {
        println!(
            "| {} | {} | {} | {} | {} |",
            f.name,
            f.value,
            f.target,
            if f.met { "yes" } else { "no" },
            f.runs
        );
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Bulk starts on a fresh 1-host lab: per run, the create-to-all-RUNNING time and every task's
/// create-to-RUNNING time; and the nodes marked down meanwhile.
/// What [`bulk_start`] measured: the runs, every task's create-to-RUNNING, the one-task
/// services' create-to-RUNNING, and the nodes marked down meanwhile.
type BulkResults = (Vec<BulkRun>, Vec<Duration>, Vec<Duration>, usize);

fn bulk_start(
    lab: &mut NetLab,
    replicas: usize,
    runs: usize,
    singles: usize,
) -> Result<BulkResults> {
    let image = lab.busybox();
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
fn node_loss(lab: &mut NetLab, runs: usize) -> Result<(Vec<Duration>, usize)> {
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
fn keep_logs_on_error<T>(mut lab: NetLab, result: Result<T>) -> Result<T> {
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

/// `service create -d` of a busybox shell that sleeps and exits at once on SIGTERM (a bare
/// `sleep` as PID 1 would ignore it and wait out the grace period).
fn create(lab: &NetLab, name: &str, replicas: usize, image: &str) -> Result<()> {
    let replicas = replicas.to_string();
    lab.cli(&[
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        &replicas,
        image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 100000 & wait",
    ])?;
    Ok(())
}

fn remove(lab: &NetLab, name: &str) -> Result<()> {
    lab.cli(&["service", "rm", name])?;
    Ok(())
}

fn running(tasks: &[Value]) -> Vec<&Value> {
    tasks
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .collect()
}

/// Polls `service ps NAME` until `done` accepts the task list.
fn wait_for(
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
fn wait_containers_gone(lab: &NetLab, i: usize) -> Result<()> {
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
fn count_log(lab: &NetLab, needle: &str) -> usize {
    std::fs::read_to_string(lab.dir.join("logs/manager.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}
