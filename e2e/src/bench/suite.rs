//! The whole benchmark suite in one run: each scenario's own binary as a subprocess (with
//! `--quick` in quick mode and `--json`), its figures read back and merged into one table.
//!
//! The figures are the scenarios' own; nothing is measured here. Each binary reports in its own
//! shape, so reading it back is per kind: a `figures` array (`what` or `name`, `value`,
//! `target`, `met`, `runs`), bench-swarm's `rows` (ours against Swarm), and bench-dns's printed
//! Markdown table (it writes no JSON). Anchors are those of the design's figures table, matched
//! by what a figure measures, unless the scenario names its own.

use super::Figure;
use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How a scenario reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `--json PATH` with a `figures` array.
    Figures,
    /// `--json PATH` with bench-swarm's `rows`.
    SwarmRows,
    /// A Markdown table on stdout (bench-dns).
    MarkdownTable,
}

/// One benchmark binary of the suite.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub output: Output,
    /// Bound of a quick run and of a full one.
    pub quick_bound: Duration,
    pub full_bound: Duration,
}

/// Every scenario, in the order they run (bench-swarm last: it needs a Docker engine).
pub const SCENARIOS: [Scenario; 6] = [
    Scenario { name: "bench-raft", output: Output::Figures, quick_bound: secs(120), full_bound: secs(600) },
    Scenario { name: "bench-dns", output: Output::MarkdownTable, quick_bound: secs(60), full_bound: secs(120) },
    Scenario { name: "bench-scale", output: Output::Figures, quick_bound: secs(120), full_bound: secs(900) },
    Scenario { name: "bench-containers", output: Output::Figures, quick_bound: secs(180), full_bound: secs(600) },
    Scenario { name: "bench-overlay", output: Output::Figures, quick_bound: secs(180), full_bound: secs(600) },
    Scenario { name: "bench-swarm", output: Output::SwarmRows, quick_bound: secs(300), full_bound: secs(900) },
];

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The design's anchors (best known figures elsewhere), by words of what a figure measures.
const ANCHORS: [(&[&str], &str); 9] = [
    (&["placements/s"], "Nomad C1M about 3,750/s; kube-scheduler 700-1,100 pods/s"),
    (&["writes/s, 64"], "etcd 44-50k/s on 3 x 8 vCPU"),
    (&["failover"], "etcd about 1 s; Swarm about 10 s"),
    (&["node loss"], "Swarm about 20 s; Nomad about 20 s; k8s about 5 min"),
    (&["replicas"], "Docker Swarm on the same machine"),
    (&["one-task", "one task"], "docker run about 570 ms on 2 vCPU; k8s SLO p99 5 s"),
    (&["throughput", "overlay / underlay"], "Cilium VxLAN 91 %; Docker overlay far lower"),
    (&["dns queries"], "CoreDNS about 17k qps per core"),
    (&["dns record"], "Swarm: stale records are a known bug"),
];

/// The anchor of a figure, or "-".
pub fn anchor_for(what: &str) -> String {
    let what = what.to_lowercase();
    ANCHORS
        .iter()
        .find(|(words, _)| words.iter().any(|w| what.contains(w)))
        .map_or_else(|| "-".to_string(), |(_, anchor)| anchor.to_string())
}

/// One line of the combined table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub anchor: String,
    #[serde(flatten)]
    pub figure: Figure,
}

/// What one scenario gave.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub scenario: String,
    /// "ok", "failed: ..." or "skipped: ...".
    pub status: String,
    pub seconds: f64,
    pub json: Option<PathBuf>,
}

/// Runs `scenario` from `bin_dir` (quick or not), its stdout and stderr passed through, within
/// its bound; returns its rows and how it went. A scenario that fails gives no rows.
pub async fn run(scenario: &Scenario, bin_dir: &Path, out_dir: &Path, quick: bool) -> (Vec<Row>, Outcome) {
    let started = Instant::now();
    let json = out_dir.join(format!("{}.json", scenario.name));
    let _ = std::fs::remove_file(&json);
    let result = run_process(scenario, bin_dir, &json, quick).await;
    let mut outcome = Outcome {
        scenario: scenario.name.to_string(),
        status: "ok".into(),
        seconds: started.elapsed().as_secs_f64(),
        json: None,
    };
    let rows = match result.and_then(|stdout| read_rows(scenario, &json, &stdout)) {
        Ok(Some(rows)) => {
            outcome.json = (scenario.output != Output::MarkdownTable).then_some(json);
            rows
        }
        Ok(None) => {
            outcome.status = "skipped: it printed no figures (see its output above)".into();
            Vec::new()
        }
        Err(error) => {
            outcome.status = format!("failed: {error:#}");
            Vec::new()
        }
    };
    (rows, outcome)
}

/// Runs the binary; returns its stdout (also echoed).
async fn run_process(scenario: &Scenario, bin_dir: &Path, json: &Path, quick: bool) -> Result<String> {
    let binary = bin_dir.join(scenario.name);
    if !binary.is_file() {
        return Err(anyhow!("{} not found (build it: cargo build --release --workspace --bins)", binary.display()));
    }
    let mut command = tokio::process::Command::new(&binary);
    if quick {
        command.arg("--quick");
    }
    if scenario.output != Output::MarkdownTable {
        command.arg("--json").arg(json);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let mut child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let bound = if quick { scenario.quick_bound } else { scenario.full_bound };
    let work = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut captured = String::new();
        while let Some(line) = lines.next_line().await? {
            println!("{line}");
            captured.push_str(&line);
            captured.push('\n');
        }
        let status = child.wait().await?;
        anyhow::Ok((status, captured))
    };
    // On timeout the future (and with it the child, killed on drop) is dropped.
    let (status, captured) = tokio::time::timeout(bound, work)
        .await
        .map_err(|_| anyhow!("did not finish within {bound:?} (killed)"))??;
    if !status.success() {
        return Err(anyhow!("exited with {status}"));
    }
    Ok(captured)
}

/// The rows a finished scenario reported; `None` when it reported nothing (it skipped).
fn read_rows(scenario: &Scenario, json: &Path, stdout: &str) -> Result<Option<Vec<Row>>> {
    let rows = match scenario.output {
        Output::MarkdownTable => markdown_rows(stdout),
        Output::Figures | Output::SwarmRows => {
            if !json.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
            let value: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
            if scenario.output == Output::Figures { figure_rows(&value) } else { swarm_rows(&value) }
        }
    };
    Ok((!rows.is_empty()).then(|| rows.into_iter().map(|(anchor, figure)| row(scenario.name, anchor, figure)).collect()))
}

fn row(scenario: &str, anchor: Option<String>, figure: Figure) -> Row {
    Row { scenario: scenario.to_string(), anchor: anchor.unwrap_or_else(|| anchor_for(&figure.what)), figure }
}

fn text(value: &Value, keys: &[&str]) -> String {
    keys.iter().find_map(|k| value.get(*k)).map_or_else(
        || "-".to_string(),
        |v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    )
}

/// `figures` of a report: `what` (or `name`), `value`, `target`, `met`, `runs`.
pub fn figure_rows(report: &Value) -> Vec<(Option<String>, Figure)> {
    let figures = report.get("figures").and_then(Value::as_array).cloned().unwrap_or_default();
    figures
        .iter()
        .map(|f| {
            let figure = Figure {
                what: text(f, &["what", "name"]),
                value: text(f, &["value"]),
                target: text(f, &["target"]),
                met: f.get("met").and_then(Value::as_bool),
                runs: text(f, &["runs"]),
            };
            (None, figure)
        })
        .collect()
}

/// bench-swarm's `rows`: ours against Swarm; the anchor is Swarm's figure, the target a ratio
/// below 1 (faster than Swarm).
pub fn swarm_rows(report: &Value) -> Vec<(Option<String>, Figure)> {
    let rows = report.get("rows").and_then(Value::as_array).cloned().unwrap_or_default();
    rows.iter()
        .map(|r| {
            let ratio = text(r, &["ratio"]);
            let figure = Figure {
                what: format!("{} (vs Swarm)", text(r, &["name", "what"])),
                value: format!("{} (ours/Swarm {ratio})", text(r, &["ours"])),
                target: "faster than Swarm (ratio < 1)".into(),
                met: ratio.parse::<f64>().ok().map(|x| x < 1.0),
                runs: text(r, &["runs"]),
            };
            (Some(format!("Docker Swarm: {}", text(r, &["swarm"]))), figure)
        })
        .collect()
}

/// The rows of a Markdown table `| figure | ours | anchor | target | met | run(s) |`.
pub fn markdown_rows(stdout: &str) -> Vec<(Option<String>, Figure)> {
    stdout
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.strip_suffix('|')?.split('|').map(str::trim).collect();
            let [what, ours, anchor, target, met, runs] = cells.as_slice() else { return None };
            if *what == "figure" || what.starts_with("---") {
                return None;
            }
            let met = match *met {
                "yes" => Some(true),
                "no" => Some(false),
                _ => None,
            };
            let figure = Figure {
                what: what.to_string(),
                value: ours.to_string(),
                target: target.to_string(),
                met,
                runs: runs.to_string(),
            };
            Some((Some(anchor.to_string()), figure))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_kind_of_report() {
        let figures = serde_json::json!({"figures": [
            {"what": "placements/s, 1000 simulated nodes", "value": "7442/s", "target": ">= 20000/s", "met": false, "runs": "1"},
            {"name": "one-task service, create to RUNNING", "value": "61 ms", "target": "p99 <= 300 ms", "met": true, "runs": "20"},
        ]});
        let rows = figure_rows(&figures);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].1.what, "one-task service, create to RUNNING");
        assert_eq!(rows[0].1.met, Some(false));
        assert!(anchor_for(&rows[0].1.what).starts_with("Nomad"));
        assert!(anchor_for(&rows[1].1.what).starts_with("docker run"));
        assert_eq!(anchor_for("something else"), "-");

        let swarm = serde_json::json!({"rows": [{"name": "scale 10 -> 50", "ours": "1.46 s", "swarm": "7.39 s", "ratio": "0.20", "runs": "3"}]});
        let rows = swarm_rows(&swarm);
        assert_eq!(rows[0].1.met, Some(true));
        assert_eq!(rows[0].0.as_deref(), Some("Docker Swarm: 7.39 s"));

        let printed = "noise\n| figure | ours | anchor | target | met | run |\n|---|---|---|---|---|---|\n| DNS queries/s | 60575 q/s | CoreDNS | >= 50k qps | yes | 10 s |\n";
        let rows = markdown_rows(printed);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].1.value.as_str(), rows[0].1.met), ("60575 q/s", Some(true)));
        assert_eq!(rows[0].0.as_deref(), Some("CoreDNS"));
    }
}
