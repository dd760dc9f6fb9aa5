//! Benchmark scenarios shared by the bench binaries.

pub mod containers;
pub mod network;
pub mod scale;

use anyhow::{Context, Result};
use std::path::PathBuf;

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
