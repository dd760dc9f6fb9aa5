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

use anyhow::{Result, bail};
use clap::Parser;
use e2e::Summary;
use e2e::bench::containers::{BulkRun, bulk_start, keep_logs_on_error, node_loss};
use e2e::netlab::{self, NetLab};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Attach the bulk-start and one-task services to an overlay network (as real applications
    /// are): measures the cost of the network setup per container.
    #[arg(long)]
    network: bool,
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

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    profile: &'static str,
    replicas: usize,
    /// Whether the tasks were attached to an overlay network.
    overlay_network: bool,
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
    let network = args.network.then_some("bench");
    let bulk = bulk_start(
        &mut bulk_lab,
        args.replicas,
        args.runs,
        args.single_runs,
        network,
    );
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
        profile: e2e::bench::profile(),
        replicas: args.replicas,
        overlay_network: args.network,
        bulk_runs,
        bulk_total,
        task_latency,
        single_task,
        node_loss,
        false_down,
        figures,
    };
    print_table(&report);
    e2e::bench::write_report("bench-containers", args.json, &report)?;
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
