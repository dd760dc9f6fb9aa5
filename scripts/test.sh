#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, the end-to-end tests (real manager processes
# over real TCP + mTLS on loopback), and the benchmarks in quick mode (to prove the harness works;
# their figures are not asserted).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --tests
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
./target/debug/bench-raft --quick --json target/bench-raft-quick.json
./target/debug/bench-containers --quick --json target/bench-containers-quick.json
./target/debug/bench-dns --quick
./target/debug/bench-overlay --quick --json target/bench-overlay-quick.json
./target/debug/bench-scale --quick --json target/bench-scale-quick.json
