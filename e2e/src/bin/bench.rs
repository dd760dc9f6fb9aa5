//! `bench`: the whole benchmark suite in one command. Runs bench-raft, bench-dns, bench-scale,
//! bench-containers, bench-overlay and bench-swarm (which skips itself without a Docker
//! engine) one after another as subprocesses, each with its own output passed through, then
//! prints one combined table (figure, ours, anchor, target, met, runs), writes one JSON and an
//! SVG bar chart of ours against the targets.
//!
//! `--quick` runs every scenario in its quick mode (what CI runs; a few minutes in all). Every
//! scenario is bounded in time; one that fails or times out is reported and the others still
//! run; the exit status is non-zero if any failed. Real figures need a release build:
//! `cargo build --release --workspace --bins && target/release/bench`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::bench::suite::{self, Outcome, Row, SCENARIOS};
use e2e::bench::{chart, met_cell, print_table};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "bench", about = "Every benchmark, one table, one JSON, one chart")]
struct Args {
    /// Every scenario in its quick mode.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated binary names, e.g. bench-raft,bench-scale).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip these scenarios (comma-separated binary names).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// The combined JSON (default: <target dir>/bench.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The chart (default: <target dir>/bench.svg).
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    quick: bool,
    profile: &'static str,
    scenarios: Vec<Outcome>,
    figures: Vec<Row>,
}

#[tokio::main]
async fn main() {
    match run(Args::parse()).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs the suite; `Ok(false)` when a scenario failed.
async fn run(args: Args) -> Result<bool> {
    for name in args.only.iter().chain(&args.skip) {
        if !SCENARIOS.iter().any(|s| s.name == name) {
            bail!("unknown scenario {name:?}: use {}", SCENARIOS.map(|s| s.name).join(", "));
        }
    }
    let bin_dir = e2e::bins::bin_dir()?;
    let target_dir = bin_dir.parent().map_or_else(|| PathBuf::from("."), PathBuf::from);
    let out_dir = target_dir.join(if args.quick { "bench-suite-quick" } else { "bench-suite" });
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let profile = e2e::bench::profile();
    let chosen: Vec<_> = SCENARIOS
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.name))
        .filter(|s| !args.skip.iter().any(|o| o == s.name))
        .collect();
    let mut figures = Vec::new();
    let mut outcomes = Vec::new();
    for scenario in chosen {
        eprintln!("\n===== bench: {} {}=====", scenario.name, if args.quick { "--quick " } else { "" });
        let (rows, outcome) = suite::run(scenario, &bin_dir, &out_dir, args.quick).await;
        eprintln!("===== bench: {} {} ({:.0} s) =====", scenario.name, outcome.status, outcome.seconds);
        figures.extend(rows);
        outcomes.push(outcome);
    }

    println!("\nbench ({profile} build{}): every figure below was printed by the scenario named with it", if args.quick { ", quick mode" } else { "" });
    let table: Vec<[String; 6]> = figures
        .iter()
        .map(|r| {
            let f = &r.figure;
            [
                format!("{}: {}", r.scenario, f.what),
                f.value.clone(),
                r.anchor.clone(),
                f.target.clone(),
                met_cell(f.met).to_string(),
                f.runs.clone(),
            ]
        })
        .collect();
    print_table(["figure", "ours", "anchor", "target", "met", "runs"], &table);
    println!();
    for o in &outcomes {
        println!("{}: {} ({:.0} s)", o.scenario, o.status, o.seconds);
    }

    let svg_path = args.svg.unwrap_or_else(|| target_dir.join("bench.svg"));
    let title = format!("cluster benchmarks ({profile}{}): ours against the targets", if args.quick { ", quick" } else { "" });
    std::fs::write(&svg_path, chart::svg(&figures, &title)).with_context(|| format!("cannot write {}", svg_path.display()))?;
    println!("SVG: {}", svg_path.display());
    let all_ran = outcomes.iter().all(|o| !o.status.starts_with("failed"));
    let report = Report { benchmark: "bench", quick: args.quick, profile, scenarios: outcomes, figures };
    e2e::bench::write_report("bench", args.json.or_else(|| Some(target_dir.join("bench.json"))), &report)?;
    Ok(all_ran)
}
