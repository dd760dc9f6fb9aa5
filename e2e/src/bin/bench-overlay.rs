//! `bench-overlay`: the overlay network in a 2-host lab (`e2e::netlab`), with the agents' default
//! settings.
//!
//! - Throughput: one TCP stream from a container on h1 to a container on h2 over the overlay
//!   (VxLAN), and one between the same two hosts' own addresses (the underlay), alternated in
//!   the same run; the figure is overlay / underlay (medians).
//! - DNS update: a one-task service on h2 is scaled 0 -> 1 while a container on h1 asks its DNS
//!   server for `tasks.<service>` every 2 ms; the figure is the time from the task's RUNNING (the
//!   manager's timestamp) to the first answer on h1.
//!
//! Needs root, iproute2, runc, nftables, docker-registry and busybox-static, and the binaries
//! built next to this one (`cargo build --release --workspace --bins && target/release/bench-overlay`).

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::Summary;
use e2e::bench::Figure;
use e2e::bench::containers::keep_logs_on_error;
use e2e::bench::network::{tcp_throughput, wait_until_answered};
use e2e::netlab::services::{SLEEPER, is_running};
use e2e::netlab::{self, NetLab};
use serde::Serialize;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "bench-overlay",
    about = "Overlay throughput vs underlay, DNS update latency"
)]
struct Args {
    /// Throughput runs (each: one overlay and one underlay stream).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds per stream.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// DNS update runs (scale 0 -> 1).
    #[arg(long, default_value_t = 10)]
    dns_runs: usize,
    /// CI mode: one 1-second run of each stream, two DNS runs (proves the harness works).
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON (default: <target dir>/bench-overlay.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

const TARGET_RATIO: f64 = 0.9;
const TARGET_DNS_MS: f64 = 100.0;
const PORT: u16 = 5201;

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    profile: &'static str,
    seconds_per_stream: u64,
    underlay_gbit_s: Vec<f64>,
    overlay_gbit_s: Vec<f64>,
    ratio: f64,
    dns_update: Summary,
    figures: Vec<Figure>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-overlay: {e:#}");
        std::process::exit(1);
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The running task of a one-task service on `network_id`: (id, address).
fn running_task(lab: &NetLab, service: &str, network_id: &str) -> Result<(String, Ipv4Addr, i64)> {
    let list = lab.wait_tasks(
        service,
        &format!("{service} running"),
        Duration::from_secs(60),
        |l| {
            l.iter()
                .any(|t| is_running(t) && address(t, network_id).is_some())
        },
    )?;
    let t = list
        .iter()
        .find(|t| is_running(t))
        .context("no running task")?;
    let id = t["id"].as_str().context("task id")?.to_string();
    let addr = address(t, network_id).context("task address")?;
    Ok((id, addr, t["timestamp_ms"].as_i64().unwrap_or_default()))
}

fn address(task: &Value, network_id: &str) -> Option<Ipv4Addr> {
    task["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["network_id"] == network_id)?["address"]
        .as_str()?
        .parse()
        .ok()
}

fn task_netns(lab: &NetLab, host: usize, task_id: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(format!(
        "/run/netns/cl-{}-task-{task_id}",
        lab.node_tag(host)?
    )))
}

fn run() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.runs = 1;
        args.seconds = 1;
        args.dns_runs = 2;
    }
    let missing = netlab::requirements();
    if !missing.is_empty() {
        if std::env::var_os("CI").is_some() {
            bail!("needs {}", missing.join(", "));
        }
        println!("bench-overlay: skipped, needs {}", missing.join(", "));
        return Ok(());
    }
    let lab = NetLab::up("bovl", 2)?;
    let result = measure(&lab, &args);
    let (underlay, overlay, dns) = keep_logs_on_error(lab, result)?;
    let ratio = median(&overlay) / median(&underlay).max(1e-9);
    let dns_update = Summary::of(&dns);
    let span = |v: &[f64]| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        format!(
            "{} streams (min {min:.2}, median {:.2}, max {max:.2} Gbit/s)",
            v.len(),
            median(v)
        )
    };
    let figures = vec![
        Figure {
            what: "cross-host TCP throughput, overlay / underlay".into(),
            value: format!(
                "{ratio:.2} ({:.2} / {:.2} Gbit/s)",
                median(&overlay),
                median(&underlay)
            ),
            target: format!(">= {TARGET_RATIO}"),
            met: Some(ratio >= TARGET_RATIO),
            runs: format!("overlay {}; underlay {}", span(&overlay), span(&underlay)),
        },
        Figure {
            what: "task RUNNING to its DNS record answered on another host".into(),
            value: format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                dns_update.p50_ms, dns_update.p99_ms
            ),
            target: format!("<= {TARGET_DNS_MS:.0} ms"),
            met: Some(dns_update.p99_ms <= TARGET_DNS_MS),
            runs: format!(
                "{} runs (min {:.0}, median {:.0}, max {:.0} ms)",
                dns_update.count, dns_update.min_ms, dns_update.p50_ms, dns_update.max_ms
            ),
        },
    ];
    let report = Report {
        benchmark: "bench-overlay",
        profile: e2e::bench::profile(),
        seconds_per_stream: args.seconds,
        underlay_gbit_s: underlay,
        overlay_gbit_s: overlay,
        ratio,
        dns_update,
        figures,
    };
    println!();
    e2e::bench::print_figures(&report.figures);
    e2e::bench::write_report("bench-overlay", args.json, &report)?;
    Ok(())
}

/// Throughput samples (Gbit/s) of the underlay and the overlay, and DNS update latencies.
fn measure(lab: &NetLab, args: &Args) -> Result<(Vec<f64>, Vec<f64>, Vec<Duration>)> {
    let image = lab.busybox();
    lab.cli(&["network", "create", "bench"])?;
    let network = lab.cli(&["network", "inspect", "bench", "--format", "json"])?;
    let network: Value = serde_json::from_str(&network)?;
    let network = if network.is_array() {
        network[0].clone()
    } else {
        network
    };
    let network_id = network["id"].as_str().context("network id")?.to_string();
    for (name, host) in [("receiver", "h2"), ("sender", "h1")] {
        lab.create_service(&[
            "--name",
            name,
            "--network",
            "bench",
            "--constraint",
            &format!("node.hostname=={host}"),
            &image,
            "sh",
            "-c",
            SLEEPER,
        ])?;
    }
    let (receiver, receiver_addr, _) = running_task(lab, "receiver", &network_id)?;
    let (sender, sender_addr, _) = running_task(lab, "sender", &network_id)?;
    let (receiver_ns, sender_ns) = (task_netns(lab, 2, &receiver)?, task_netns(lab, 1, &sender)?);
    let host_ns = |i: usize| PathBuf::from(format!("/run/netns/{}", lab.ns(i)));
    let duration = Duration::from_secs(args.seconds);
    let gbit = |bytes_per_s: f64| bytes_per_s * 8.0 / 1e9;
    let (mut underlay, mut overlay) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let port = PORT + run as u16;
        let host2: Ipv4Addr = lab.addr(2).parse()?;
        let u = tcp_throughput(
            &host_ns(2),
            &host_ns(1),
            SocketAddr::from((host2, port)),
            duration,
        )?;
        let o = tcp_throughput(
            &receiver_ns,
            &sender_ns,
            SocketAddr::from((receiver_addr, port)),
            duration,
        )?;
        println!(
            "run {}: underlay {:.2} Gbit/s, overlay {:.2} Gbit/s",
            run + 1,
            gbit(u),
            gbit(o)
        );
        underlay.push(gbit(u));
        overlay.push(gbit(o));
    }

    // DNS: the sender's DNS server is its gateway (.1 of its host's /24).
    let o = sender_addr.octets();
    let dns_server = Ipv4Addr::new(o[0], o[1], o[2], 1);
    lab.create_service(&[
        "--name",
        "probe",
        "--network",
        "bench",
        "--replicas",
        "0",
        "--constraint",
        "node.hostname==h2",
        &image,
        "sh",
        "-c",
        SLEEPER,
    ])?;
    let mut dns = Vec::new();
    for run in 0..args.dns_runs {
        let ns = sender_ns.clone();
        let waiter = std::thread::spawn(move || {
            wait_until_answered(
                &ns,
                dns_server,
                "tasks.probe",
                Duration::from_millis(2),
                Duration::from_secs(60),
            )
        });
        lab.cli(&["service", "scale", "-d", "probe=1"])?;
        let answered_ms = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("DNS thread panicked"))??;
        let (_, _, running_ms) = running_task(lab, "probe", &network_id)?;
        let lag = Duration::from_millis((answered_ms - running_ms).max(0) as u64);
        println!(
            "dns run {}: answered {} ms after RUNNING",
            run + 1,
            lag.as_millis()
        );
        dns.push(lag);
        lab.cli(&["service", "scale", "-d", "probe=0"])?;
        lab.wait_tasks("probe", "probe stopped", Duration::from_secs(60), |l| {
            !l.iter().any(|t| t["state"] == "running")
        })?;
        // The record goes with the RUNNING state; give the views a moment to reach h1.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok((underlay, overlay, dns))
}
