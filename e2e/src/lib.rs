//! End-to-end harness: real `cluster-manager` processes over real TCP + mTLS on 127.0.0.1.
//!
//! - [`Lab`]: a cluster of managers in temp dirs with free ports; start, kill -9, restart; waits
//!   for a leader, voters, catch-up; cleans up on drop (and prints the managers' logs when a test
//!   fails).
//! - [`client`]: admin Control clients, join-token and certificate helpers, bounded calls.
//! - [`bins`]: finds the binaries next to the test executable (or in `$CLUSTER_BIN_DIR`).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

pub mod bench;
pub mod bins;
pub mod client;
pub mod lab;
pub mod netlab;
pub mod ports;
pub mod process;
pub mod stats;
pub mod tuning;
pub mod wait;
pub mod writes;

pub use lab::{CliOutput, Lab, expect_code, summary};
pub use process::Manager;
pub use stats::Summary;
pub use tuning::Tuning;
pub use wait::{Deadline, eventually};
