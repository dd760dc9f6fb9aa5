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
# Every benchmark in quick mode, one after another (their JSON under target/bench-suite-quick/),
# one combined table, target/bench-quick.json and target/bench-quick.svg. bench-swarm is not part
# of CI (it needs a Docker engine and changes its state).
./target/debug/bench --quick --skip bench-swarm --json target/bench-quick.json --svg target/bench-quick.svg
