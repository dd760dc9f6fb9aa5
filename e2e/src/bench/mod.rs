//! Benchmark scenarios shared by the bench binaries.

pub mod containers;
