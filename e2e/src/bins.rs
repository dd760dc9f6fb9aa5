//! Finding the product's binaries: next to the running test or benchmark executable (its own
//! profile dir, `target/debug` or `target/release`), or in `$CLUSTER_BIN_DIR`.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The manager daemon.
pub const MANAGER_BIN: &str = "cluster-manager";
/// The operator's CLI.
pub const CLI_BIN: &str = "cluster";

/// Environment variable naming the directory that holds the binaries (overrides the search).
pub const BIN_DIR_ENV: &str = "CLUSTER_BIN_DIR";

/// The directory holding `cluster-manager`: `$CLUSTER_BIN_DIR`, else the first of the running
/// executable's directory and its parents (up to three levels: `target/<profile>/deps/x` ->
/// `target/<profile>`) that holds it.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        if !dir.join(MANAGER_BIN).is_file() {
            bail!(
                "{BIN_DIR_ENV}={} does not hold {MANAGER_BIN}",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let exe = std::env::current_exe()?;
    let mut looked = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..3 {
        let Some(d) = dir else { break };
        if d.join(MANAGER_BIN).is_file() {
            return Ok(d.to_path_buf());
        }
        looked.push(d.display().to_string());
        dir = d.parent();
    }
    bail!(
        "cannot find the {MANAGER_BIN} binary next to {} (looked in {}): run `cargo build --workspace --bins` \
         (add --release for a release build) first, or set {BIN_DIR_ENV}",
        exe.display(),
        looked.join(", ")
    )
}

/// The daemons' directory for a program that ships next to them (the `cluster` CLI's `lab`
/// command): the running executable's own directory when it holds `cluster-manager`, else
/// [`bin_dir`].
pub fn bin_dir_beside_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if let Some(dir) = exe.parent()
        && dir.join(MANAGER_BIN).is_file()
    {
        return Ok(dir.to_path_buf());
    }
    bin_dir()
}

/// The path of the binary `name` in [`bin_dir`], with an error telling how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    binary_in(&bin_dir()?, name)
}

/// The path of the binary `name` in `dir`, with an error telling how to build it.
pub fn binary_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}
