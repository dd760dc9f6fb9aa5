#!/usr/bin/env bash
# Installs what is needed, builds, and brings up a local cluster of three managers on loopback
# (127.0.0.1:4242-4244), each a separate process with its own data dir under $QUICKSTART_DIR.
# `scripts/quickstart.sh down` stops them and removes the data.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${QUICKSTART_DIR:-/tmp/cluster-quickstart}

stop_all() {
  for pidfile in "$dir"/m*/pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 1
  rm -rf "$dir"
}

if [ "${1:-up}" = "down" ]; then
  stop_all
  echo "stopped the quick-start cluster and removed $dir"
  exit 0
fi

bash scripts/install-deps.sh
cargo build --release --workspace --bins
bin=$PWD/target/release
stop_all
mkdir -p "$dir"

start() { # name, then arguments for cluster-manager
  local name=$1; shift
  mkdir -p "$dir/$name"
  nohup "$bin/cluster-manager" "$@" >"$dir/$name.out" 2>"$dir/$name.log" &
  echo $! >"$dir/$name.pid"
}
wait_for() { # file or pattern in a log, with a bound
  for _ in $(seq 1 100); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  exit 1
}

start m1 init --data-dir "$dir/m1/data" --listen-addr 127.0.0.1:4242 --hostname manager-1
wait_for "$dir/m1.out" "Cluster initialised"
export CLUSTER_CONFIG=$dir/m1/data/admin.json
token=$("$bin/cluster" join-token -q manager)
start m2 join --token "$token" --join-addr 127.0.0.1:4242 --data-dir "$dir/m2/data" --listen-addr 127.0.0.1:4243 --hostname manager-2
wait_for "$dir/m2.out" "joined the cluster"
start m3 join --token "$token" --join-addr 127.0.0.1:4242 --data-dir "$dir/m3/data" --listen-addr 127.0.0.1:4244 --hostname manager-3
wait_for "$dir/m3.out" "joined the cluster"
for n in m1 m2 m3; do mv "$dir/$n.pid" "$dir/$n/pid"; done

"$bin/cluster" info
echo
"$bin/cluster" node ls
cat <<TXT

The cluster is up. Try:
    export CLUSTER_CONFIG=$CLUSTER_CONFIG PATH=$bin:\$PATH
    cluster node ls
    cluster node update --label-add zone=a manager-2
    kill -9 \$(cat $dir/m1/pid); cluster --host 127.0.0.1:4243 info   # a new leader takes over
Stop it with: scripts/quickstart.sh down
TXT
