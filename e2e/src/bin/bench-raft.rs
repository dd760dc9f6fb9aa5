//! `bench-raft`: committed writes/s and leader failover time of a 3-manager cluster (fsync on,
//! default settings), real processes over TCP + mTLS on 127.0.0.1.
//!
//! For real figures use a release build: `cargo build --release --workspace --bins &&
//! target/release/bench-raft`. It runs the `cluster-manager` of its own profile dir.
//!
//! - Writes: `Control.UpdateNode` adding one label on a worker node record, acknowledged once
//!   committed (the leader may carry concurrent writes in one Raft entry); each client overwrites
//!   its own key, so the record stays small. Sent to the leader by 1 and 64 concurrent clients for `--duration` seconds each, after a short warm-up.
//!   64 clients run twice: each with its own channel, and sharing 4 channels (gRPC multiplexes);
//!   both are reported and the better one is compared with the target.
//! - Failover: kill -9 the leader; clients on both survivors retry a write with 200 ms per-call
//!   timeouts; the time from the kill to the first accepted write is one sample. The old leader is
//!   restarted and caught up before the next trial.

use anyhow::{Result, anyhow};
use clap::Parser;
use e2e::bench::Figure;
use e2e::client::{self, Control, describe, write_label};
use e2e::lab::CONVERGE_TIMEOUT;
use e2e::writes::first_accepted_write;
use e2e::{Lab, Summary, Tuning};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(
    name = "bench-raft",
    about = "Committed writes/s and leader failover of a 3-manager cluster"
)]
struct Args {
    /// Seconds of measurement per throughput run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Failover trials.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// CI mode: 2 s runs and 3 failover trials.
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON (default: <target dir>/bench-raft.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Per-call timeout of the clients during failover, in ms.
    #[arg(long, default_value_t = 200)]
    failover_call_ms: u64,
    /// Passed to the managers (default: the manager's own, 50 ms).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Passed to the managers (default: the manager's own, 100 ms).
    #[arg(long)]
    election_min_ms: Option<u64>,
    /// Passed to the managers (default: the manager's own, 200 ms).
    #[arg(long)]
    election_max_ms: Option<u64>,
}

const TARGET_WRITES_PER_SEC: f64 = 20_000.0;
const TARGET_FAILOVER_P50_MS: f64 = 300.0;
const TARGET_FAILOVER_P99_MS: f64 = 600.0;
const SHARED_CHANNELS: usize = 4;
/// The node record the writes go to.
const WRITE_TARGET: &str = "bench-target";

#[derive(Serialize, Debug, Clone)]
struct Throughput {
    clients: usize,
    channels: usize,
    seconds: f64,
    writes: usize,
    errors: usize,
    first_error: Option<String>,
    writes_per_sec: f64,
    latency: Summary,
}

#[derive(Serialize, Debug)]
struct Failover {
    trials: usize,
    failed_trials: usize,
    per_call_timeout_ms: u64,
    samples_ms: Vec<f64>,
    summary: Summary,
    errors: Vec<String>,
}

#[derive(Serialize, Debug)]
struct Report {
    benchmark: &'static str,
    profile: &'static str,
    bin_dir: String,
    managers: usize,
    settings: String,
    write_op: &'static str,
    duration_s: f64,
    throughput: Vec<Throughput>,
    failover: Failover,
    figures: Vec<Figure>,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("bench-raft: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(mut args: Args) -> Result<()> {
    if args.quick {
        args.duration = 2.0;
        args.trials = 3;
    }
    let duration = Duration::from_secs_f64(args.duration);
    let bin_dir = e2e::bins::bin_dir()?;
    if e2e::bench::profile() == "debug" {
        eprintln!(
            "bench-raft: a debug build measures debug binaries; for real figures run target/release/bench-raft"
        );
    }
    let tuning = Tuning {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_min_ms,
        election_max_ms: args.election_max_ms,
        ..Tuning::default()
    };
    let settings = if tuning == Tuning::default() {
        "fsync on, manager defaults (heartbeat 50 ms, election 100-200 ms, fast failover on refused connections, snapshot every 5000 entries)".to_string()
    } else {
        format!(
            "fsync on, manager defaults except {}",
            tuning.args().join(" ")
        )
    };
    eprintln!(
        "bench-raft: starting 3 managers from {} ({settings})",
        bin_dir.display()
    );
    let mut lab = Lab::cluster("bench-raft", 3, tuning).await?;

    // The record the writes go to: a worker node (no agent runs; only its labels change).
    let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    let token = client::join_token(&mut lab.control(leader).await?, "worker", false)
        .await
        .map_err(|s| anyhow!("GetJoinToken: {}", describe(&s)))?;
    client::join_worker(lab.addr(leader), &token, WRITE_TARGET).await?;

    let mut throughput = Vec::new();
    for (clients, channels) in [(1, 1), (64, 64), (64, SHARED_CHANNELS)] {
        let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
        eprintln!("bench-raft: {clients} client(s) on {channels} channel(s) for {duration:?} ...");
        let result = measure_writes(&lab, leader, clients, channels, duration).await?;
        eprintln!(
            "bench-raft:   {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            result.writes_per_sec, result.latency.p50_ms, result.latency.p99_ms, result.errors
        );
        throughput.push(result);
    }

    let failover = measure_failover(
        &mut lab,
        args.trials,
        Duration::from_millis(args.failover_call_ms),
    )
    .await?;

    let report = Report {
        benchmark: "bench-raft",
        profile: e2e::bench::profile(),
        bin_dir: bin_dir.display().to_string(),
        managers: 3,
        settings,
        write_op: "Control.UpdateNode labels_add on a worker node record, sent to the leader; acknowledged once committed (the leader may carry concurrent writes in one Raft entry)",
        duration_s: args.duration,
        figures: figures(&throughput, &failover, args.duration),
        throughput,
        failover,
    };
    print_table(&report);
    e2e::bench::write_report("bench-raft", args.json, &report)?;
    lab.passed();
    Ok(())
}

/// `clients` concurrent writers on `channels` channels to the leader, for a warm-up and then
/// `duration`; only writes completed inside the measured window count.
async fn measure_writes(
    lab: &Lab,
    leader: usize,
    clients: usize,
    channels: usize,
    duration: Duration,
) -> Result<Throughput> {
    let creds = &lab.admin().credentials;
    let mut pool: Vec<Channel> = Vec::new();
    for _ in 0..channels {
        pool.push(client::channel(lab.addr(leader), creds).await?);
    }
    let warmup = (duration / 5).min(Duration::from_secs(1));
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut control: Control = client::control_on(pool[c % channels].clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("c{c}");
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0usize, None);
            let mut n = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= window_end {
                    break;
                }
                n += 1;
                let result = write_label(
                    &mut control,
                    WRITE_TARGET,
                    &key,
                    &n.to_string(),
                    Duration::from_secs(5),
                )
                .await;
                let done = Instant::now();
                match result {
                    Ok(_) if sent >= window_start && done <= window_end => {
                        latencies.push(done - sent)
                    }
                    Ok(_) => {}
                    Err(status) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| describe(&status));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0, None);
    for task in tasks {
        let (l, e, f) = task.await?;
        latencies.extend(l);
        errors += e;
        first_error = first_error.or(f);
    }
    let seconds = duration.as_secs_f64();
    Ok(Throughput {
        clients,
        channels,
        seconds,
        writes: latencies.len(),
        errors,
        first_error,
        writes_per_sec: latencies.len() as f64 / seconds,
        latency: Summary::of(&latencies),
    })
}

/// Kill -9 the leader, time the first accepted write on a survivor; restart and catch up.
async fn measure_failover(lab: &mut Lab, trials: usize, per_call: Duration) -> Result<Failover> {
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for trial in 1..=trials {
        let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
        lab.wait_voters(3, CONVERGE_TIMEOUT).await?;
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        // Connected clients, warmed up by one write each (the followers' way to the leader too).
        let mut clients = Vec::new();
        for &s in &survivors {
            let mut c = lab.control(s).await?;
            write_label(
                &mut c,
                WRITE_TARGET,
                "warm",
                &trial.to_string(),
                Duration::from_secs(5),
            )
            .await
            .map_err(|st| anyhow!("warm-up write on {}: {}", lab.hostname(s), describe(&st)))?;
            clients.push(c);
        }
        let killed_at = Instant::now();
        lab.kill_9(leader)?;
        let outcome = first_accepted_write(
            clients,
            WRITE_TARGET,
            "failover",
            &trial.to_string(),
            per_call,
            killed_at,
            Duration::from_secs(30),
        )
        .await;
        match outcome {
            Ok((elapsed, by)) => {
                eprintln!(
                    "bench-raft: failover {trial}/{trials}: killed {}, write accepted by {} after {:.1} ms",
                    lab.hostname(leader),
                    lab.hostname(survivors[by]),
                    elapsed.as_secs_f64() * 1000.0
                );
                samples.push(elapsed);
            }
            Err(e) => {
                eprintln!("bench-raft: failover {trial}/{trials}: FAILED: {e:#}");
                errors.push(format!("trial {trial}: {e:#}"));
            }
        }
        // Bring the old leader back and let it catch up before the next trial.
        lab.restart(leader)?;
        let new_leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
        let applied = lab.info(new_leader).await?.raft_applied_index;
        lab.wait_applied(leader, applied, Duration::from_secs(60))
            .await?;
    }
    Ok(Failover {
        trials,
        failed_trials: errors.len(),
        per_call_timeout_ms: per_call.as_millis() as u64,
        samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
        summary: Summary::of(&samples),
        errors,
    })
}

fn figures(throughput: &[Throughput], failover: &Failover, duration: f64) -> Vec<Figure> {
    let mut figures = Vec::new();
    let runs = |t: &Throughput| format!("1 run of {duration} s, {} channel(s)", t.channels);
    let value = |t: &Throughput| {
        format!(
            "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            t.writes_per_sec, t.latency.p50_ms, t.latency.p99_ms
        )
    };
    for t in throughput.iter().filter(|t| t.clients == 1) {
        figures.push(Figure {
            what: "writes/s, 1 client".into(),
            value: value(t),
            target: "-".into(),
            met: None,
            runs: runs(t),
        });
    }
    for t in throughput.iter().filter(|t| t.clients == 64) {
        figures.push(Figure {
            what: format!("writes/s, 64 clients, {} channel(s)", t.channels),
            value: value(t),
            target: "(see best)".into(),
            met: None,
            runs: runs(t),
        });
    }
    if let Some(best) = throughput
        .iter()
        .filter(|t| t.clients == 64)
        .max_by(|a, b| a.writes_per_sec.total_cmp(&b.writes_per_sec))
    {
        figures.push(Figure {
            what: "writes/s, 64 clients (best)".into(),
            value: value(best),
            target: format!(">= {TARGET_WRITES_PER_SEC:.0}/s"),
            met: Some(best.writes_per_sec >= TARGET_WRITES_PER_SEC),
            runs: runs(best),
        });
    }
    let s = &failover.summary;
    let runs = format!("{} of {} trials", s.count, failover.trials);
    let ok = s.count > 0 && failover.failed_trials == 0;
    figures.push(Figure {
        what: "failover p50 (kill -9 to first write)".into(),
        value: format!("{:.1} ms", s.p50_ms),
        target: format!("<= {TARGET_FAILOVER_P50_MS:.0} ms"),
        met: Some(ok && s.p50_ms <= TARGET_FAILOVER_P50_MS),
        runs: runs.clone(),
    });
    figures.push(Figure {
        what: "failover p99".into(),
        value: format!("{:.1} ms", s.p99_ms),
        target: format!("<= {TARGET_FAILOVER_P99_MS:.0} ms"),
        met: Some(ok && s.p99_ms <= TARGET_FAILOVER_P99_MS),
        runs: runs.clone(),
    });
    figures.push(Figure {
        what: "failover min / max".into(),
        value: format!("{:.1} / {:.1} ms", s.min_ms, s.max_ms),
        target: "-".into(),
        met: None,
        runs,
    });
    figures
}

fn print_table(report: &Report) {
    println!(
        "\nbench-raft ({} build, 3 managers, {})",
        report.profile, report.settings
    );
    println!("write: {}", report.write_op);
    e2e::bench::print_figures(&report.figures);
    for t in &report.throughput {
        if t.errors > 0 {
            println!(
                "note: {} client(s) on {} channel(s): {} errors, first: {}",
                t.clients,
                t.channels,
                t.errors,
                t.first_error.as_deref().unwrap_or("-")
            );
        }
    }
    for e in &report.failover.errors {
        println!("note: failover {e}");
    }
}
