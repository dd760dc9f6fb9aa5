//! `bench-scale`: placements/s of a 3-manager cluster with many nodes and many tasks, and the
//! Control API's latency and the leader's memory meanwhile.
//!
//! - Managers: 3 real `cluster-manager` processes on 127.0.0.1 (init + 2 joins with the manager
//!   token), default settings, fsync on; a fresh cluster per run.
//! - Nodes: N simulated agents (default 1,000) in this one process. Simulated agents: real mTLS
//!   gRPC sessions and heartbeats against the real managers; a fake runtime that reports RUNNING
//!   without starting containers. Each joins like a real agent (worker join token, CSR,
//!   `Ca.IssueCertificate`, 64 joins at a time), holds a `Dispatcher.Session` with the leader,
//!   heartbeats at the period the session gives and reports every assignment "running" (or
//!   "shutdown" when its desired state is beyond running), batched per node every 100 ms.
//! - Work: T tasks (default 100,000) as S services (default 100 x 1,000 replicas), created with
//!   `CreateService` calls that do not wait for the tasks. Timed from the first create until
//!   `ListServices` on the leader reports every service with running == replicas; placements/s
//!   = T / that time. It is polled every 2 s for progress, and every 50 ms once the agents have
//!   had a status report accepted (committed) for every task, so that the poll (which counts
//!   every task of every service) neither loads the leader nor rounds the figure up. Meanwhile `GetService` on one service every 50 ms
//!   gives the API latency during the run. At the end, the leader's VmHWM and VmRSS.
//!
//! For real figures use a release build: `cargo build --release -p e2e -p manager --bins &&
//! target/release/bench-scale`. It runs the `cluster-manager` of its own profile dir.

use anyhow::{Result, bail};
use clap::Parser;
use e2e::bench::Figure;
use e2e::bench::scale::{self, Plan, RunResult};
use e2e::{Summary, Tuning};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "bench-scale",
    about = "Placements/s with 1,000 simulated nodes and 100k tasks on 3 managers"
)]
struct Args {
    /// Simulated agents (nodes).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Tasks in all (split evenly over the services).
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Services.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Runs, each on a fresh cluster.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// CI mode: 50 agents, 2,000 tasks as 20 services x 100 replicas, 60 s bound.
    #[arg(long)]
    quick: bool,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 64)]
    join_concurrency: usize,
    /// CreateService calls in flight at once.
    #[arg(long, default_value_t = 8)]
    create_concurrency: usize,
    /// Bound, in seconds, of the joins and of the convergence (each).
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Passed to the managers (default: the manager's own, 50 ms).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Passed to the managers (default: the manager's own, 100 ms).
    #[arg(long)]
    election_min_ms: Option<u64>,
    /// Passed to the managers (default: the manager's own, 200 ms).
    #[arg(long)]
    election_max_ms: Option<u64>,
    /// Where to write the results as JSON (default: <target dir>/bench-scale.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

const DEFAULT_SETTINGS: &str = "fsync on, manager defaults (Raft heartbeat 50 ms, election 100-200 ms; node heartbeat period 1 s, grace 3 s)";
const TARGET_PLACEMENTS_PER_SEC: f64 = 20_000.0;
const ANCHORS: &str = "Nomad C1M about 3,750/s; kube-scheduler 700-1,100 pods/s";
const SIMULATED: &str = "simulated agents: real mTLS gRPC sessions and heartbeats against the real managers; a fake runtime that reports RUNNING without starting containers";

#[derive(Serialize, Debug)]
struct Report {
    benchmark: &'static str,
    profile: &'static str,
    bin_dir: String,
    managers: usize,
    settings: String,
    agents_note: &'static str,
    anchors: &'static str,
    plan: Plan,
    tasks: usize,
    timeout_s: u64,
    runs: Vec<RunResult>,
    figures: Vec<Figure>,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("bench-scale: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(mut args: Args) -> Result<()> {
    if args.quick {
        args.agents = 50;
        args.tasks = 2_000;
        args.services = 20;
        args.timeout_s = args.timeout_s.min(60);
    }
    if args.agents == 0 || args.services == 0 || args.tasks < args.services {
        bail!("need at least one agent, one service and one task per service");
    }
    if !args.tasks.is_multiple_of(args.services) {
        bail!(
            "--tasks {} is not a multiple of --services {}",
            args.tasks,
            args.services
        );
    }
    let plan = Plan {
        agents: args.agents,
        services: args.services,
        replicas: args.tasks / args.services,
        join_concurrency: args.join_concurrency,
        create_concurrency: args.create_concurrency,
        timeout: Duration::from_secs(args.timeout_s),
        tuning: Tuning {
            heartbeat_ms: args.heartbeat_ms,
            election_min_ms: args.election_min_ms,
            election_max_ms: args.election_max_ms,
            ..Tuning::default()
        },
    };
    let settings = if plan.tuning == Tuning::default() {
        DEFAULT_SETTINGS.to_string()
    } else {
        format!(
            "{DEFAULT_SETTINGS}, except {}",
            plan.tuning.args().join(" ")
        )
    };
    let bin_dir = e2e::bins::bin_dir()?;
    if e2e::bench::profile() == "debug" {
        eprintln!(
            "bench-scale: a debug build measures debug binaries; for real figures run target/release/bench-scale"
        );
    }
    eprintln!(
        "bench-scale: {} agents, {} tasks as {} services x {} replicas, {} run(s); {SIMULATED}",
        plan.agents,
        plan.tasks(),
        plan.services,
        plan.replicas,
        args.runs
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs.max(1) {
        runs.push(scale::run_once(&plan, run).await?);
    }
    let report = Report {
        benchmark: "bench-scale",
        profile: e2e::bench::profile(),
        bin_dir: bin_dir.display().to_string(),
        managers: 3,
        settings,
        agents_note: SIMULATED,
        anchors: ANCHORS,
        tasks: plan.tasks(),
        timeout_s: args.timeout_s,
        figures: figures(&plan, &runs),
        plan,
        runs,
    };
    print_table(&report);
    e2e::bench::write_report("bench-scale", args.json, &report)?;
    Ok(())
}

/// min / median / max of `values`, formatted with `fmt`.
fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return "-".into();
    }
    format!(
        "{} run(s): min {} / median {} / max {}",
        v.len(),
        fmt(v[0]),
        fmt(v[(v.len() - 1) / 2]),
        fmt(v[v.len() - 1])
    )
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

fn figures(plan: &Plan, runs: &[RunResult]) -> Vec<Figure> {
    let rates: Vec<f64> = runs.iter().map(|r| r.placements_per_sec).collect();
    let converge: Vec<f64> = runs.iter().map(|r| r.converge_s).collect();
    let ready: Vec<f64> = runs.iter().map(|r| r.ready_s).collect();
    let hwm: Vec<f64> = runs
        .iter()
        .map(|r| r.leader_vm_hwm_kib as f64 / 1024.0)
        .collect();
    let rss: Vec<f64> = runs
        .iter()
        .map(|r| r.leader_vm_rss_kib as f64 / 1024.0)
        .collect();
    // API latency: each run's p50 and p99; the figure is their median over the runs.
    let p50s: Vec<f64> = runs.iter().map(|r| r.api_latency.p50_ms).collect();
    let p99s: Vec<f64> = runs.iter().map(|r| r.api_latency.p99_ms).collect();
    let api_count: usize = runs.iter().map(|r| r.api_latency.count).sum();
    let api_errors: usize = runs.iter().map(|r| r.api_errors).sum();
    let not_ready: usize = runs.iter().map(|r| r.nodes_not_ready_at_end).sum();
    let rate = median(&rates);
    let s = |v: f64| format!("{v:.1} s");
    let mib = |v: f64| format!("{v:.0} MiB");
    let ms = |v: f64| format!("{v:.2} ms");
    let per_s = |v: f64| format!("{v:.0}/s");
    vec![
        Figure {
            what: format!(
                "placements/s, {} simulated nodes, {} tasks, 3 managers",
                plan.agents,
                plan.tasks()
            ),
            value: format!("{rate:.0}/s (median)"),
            target: format!(">= {TARGET_PLACEMENTS_PER_SEC:.0}/s"),
            met: Some(rate >= TARGET_PLACEMENTS_PER_SEC),
            runs: spread(&rates, per_s),
        },
        Figure {
            what: "first create to all running".into(),
            value: format!("{:.2} s (median)", median(&converge)),
            target: "-".into(),
            met: None,
            runs: spread(&converge, s),
        },
        Figure {
            what: "API latency during the run (GetService every 50 ms), p50".into(),
            value: format!("{:.2} ms (median of runs)", median(&p50s)),
            target: "-".into(),
            met: None,
            runs: spread(&p50s, ms),
        },
        Figure {
            what: "API latency during the run, p99".into(),
            value: format!("{:.2} ms (median of runs)", median(&p99s)),
            target: "-".into(),
            met: None,
            runs: format!(
                "{}; {api_count} calls, {api_errors} failed",
                spread(&p99s, ms)
            ),
        },
        Figure {
            what: "leader peak memory (VmHWM)".into(),
            value: format!("{:.0} MiB (max)", hwm.iter().copied().fold(0.0, f64::max)),
            target: "-".into(),
            met: None,
            runs: spread(&hwm, mib),
        },
        Figure {
            what: "leader memory at the end (VmRSS)".into(),
            value: format!("{:.0} MiB (median)", median(&rss)),
            target: "-".into(),
            met: None,
            runs: spread(&rss, mib),
        },
        Figure {
            what: format!("{} nodes joined and READY", plan.agents),
            value: format!("{:.1} s (median)", median(&ready)),
            target: "-".into(),
            met: None,
            runs: format!("{}; {not_ready} not READY at the end", spread(&ready, s)),
        },
    ]
}

fn print_table(report: &Report) {
    println!(
        "\nbench-scale ({} build, 3 managers, {}; {} nodes, {} tasks as {} x {})",
        report.profile,
        report.settings,
        report.plan.agents,
        report.tasks,
        report.plan.services,
        report.plan.replicas
    );
    println!("nodes: {}", report.agents_note);
    println!("anchors: {}", report.anchors);
    let convergence = Summary::of(
        &report
            .runs
            .iter()
            .map(|r| Duration::from_secs_f64(r.converge_s))
            .collect::<Vec<_>>(),
    );
    println!(
        "runs: {} (first create to all running: min {:.0} / median {:.0} / max {:.0} ms)",
        convergence.count, convergence.min_ms, convergence.p50_ms, convergence.max_ms
    );
    e2e::bench::print_figures(&report.figures);
    for r in &report.runs {
        let a = &r.agents;
        println!(
            "run {}: sessions opened {} (ended {}), redirects {}, heartbeats {} ({} failed), \
             {} reports in {} calls ({} failed){}{}",
            r.run,
            a.sessions_opened,
            a.sessions_ended,
            a.redirects,
            a.heartbeats,
            a.heartbeat_failures,
            a.reports,
            a.report_calls,
            a.report_failures,
            match (r.same_leader, r.raft_terms) {
                (true, (a, b)) if a == b => String::new(),
                (true, (a, b)) => format!("; elections during the run (Raft term {a} -> {b})"),
                (false, (a, b)) => {
                    format!("; THE LEADER CHANGED (Raft term {a} -> {b})")
                }
            },
            r.api_first_error
                .as_deref()
                .map(|e| format!("; first API error: {e}"))
                .unwrap_or_default()
        );
    }
}
