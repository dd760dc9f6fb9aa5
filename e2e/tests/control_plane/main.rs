//! The control plane end to end: real `cluster-manager` processes over TCP + mTLS on 127.0.0.1.
//!
//! Each test builds its own cluster (temp dirs, free ports), so the tests run in parallel.
//! Build the binaries first: `cargo build --workspace --bins`, then
//! `cargo test -p e2e -- --nocapture`.
//!
//! One test binary, one module per concern: `failover` (a), `crash` (b), `security` (c),
//! `quorum` (d), `cli` (e), `membership` (demotion), `node_ps`.

mod cli;
mod crash;
mod failover;
mod membership;
mod network_cli;
mod node_ps;
mod quorum;
mod secret_cli;
mod security;
mod service_cli;
mod service_logs;
mod stack_cli;

/// The node record the tests write labels on (the first manager, by hostname).
pub const TARGET: &str = "m1";

pub fn others(n: usize, except: usize) -> Vec<usize> {
    (0..n).filter(|&i| i != except).collect()
}
