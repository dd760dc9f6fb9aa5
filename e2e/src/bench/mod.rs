//! Benchmark scenarios shared by the bench binaries.

pub mod chart;
pub mod containers;
pub mod network;
pub mod scale;
pub mod suite;

use anyhow::{Context, Result};
use std::path::PathBuf;

/// The build profile the benchmark runs in, as its report names it.
pub fn profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

/// Writes a benchmark's report as JSON to `explicit`, or else to `<target dir>/<name>.json`
/// (beside the profile dir holding the binaries), creating the directory; prints and returns
/// the path.
pub fn write_report(
    name: &str,
    explicit: Option<PathBuf>,
    report: &impl serde::Serialize,
) -> Result<PathBuf> {
    let path = match explicit {
        Some(path) => path,
        None => crate::bins::bin_dir()?
            .parent()
            .map(|p| p.join(format!("{name}.json")))
            .unwrap_or_else(|| PathBuf::from(format!("{name}.json"))),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nJSON: {}", path.display());
    Ok(path)
}

/// One line of a benchmark's table: what was measured, the value, the target, whether it was
/// met (`None`: no target) and the runs behind it.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Figure {
    pub what: String,
    pub value: String,
    pub target: String,
    pub met: Option<bool>,
    pub runs: String,
}

/// Prints `figures` as an aligned table (figure, value, target, met, runs).
pub fn print_figures(figures: &[Figure]) {
    let rows: Vec<[String; 5]> = figures
        .iter()
        .map(|f| [f.what.clone(), f.value.clone(), f.target.clone(), met_cell(f.met).to_string(), f.runs.clone()])
        .collect();
    print_table(["figure", "value", "target", "met", "runs"], &rows);
}

/// The "met" cell of a figure: "yes", "NO" or empty (no target).
pub fn met_cell(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "",
    }
}

/// Prints `rows` under `headers` as an aligned table.
pub fn print_table<const N: usize>(headers: [&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
        }
        println!("{}", out.trim_end());
    };
    line(headers);
    line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
}
