#!/usr/bin/env bash
# Installs what is needed, builds, and brings up a local multi-host cluster: three hosts, each a
# network namespace with its own address (10.213.K.1-3), a registry preloaded with a busybox
# image, a manager on host 1 and an agent on every host; then deploys the example stack
# `examples/stack.yml` as `demo` (six busybox httpd replicas with a health check on an overlay
# network, port 8080 published through the routing mesh, and a probe that looks them up by name),
# shows where its tasks run and fetches its page from every host's address.
# `scripts/quickstart.sh down` removes the lab (processes, containers, mounts, namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
name=quickstart
bin=$PWD/target/release

if [ "${1:-up}" = "down" ]; then
  "$bin/cluster" lab down --name "$name"
  exit 0
fi

bash scripts/install-deps.sh
cargo build --release --workspace --bins
up=$("$bin/cluster" lab up --name "$name" --hosts 3)
echo "$up"
image=$(echo "$up" | sed -n 's/^registry .*(image \(.*\))$/\1/p')
admin=/tmp/cluster-lab-$name/admin.json
cluster() { ip netns exec "cl-$name-h1" "$bin/cluster" --config "$admin" "$@"; }

echo
cluster node ls
echo
# Waits until the stack has converged (-d would return at once).
IMAGE=$image cluster stack deploy -c examples/stack.yml demo
echo
cluster stack services demo
echo
cluster stack ps demo
# The hosts' addresses: "lab NAME is up: 3 hosts, A.B.C.1..3".
prefix=$(echo "$up" | sed -n 's/^lab .* is up: .* hosts, \([0-9.]*\.\)1\.\.[0-9]*$/\1/p')
echo
echo "Port 8080 of every host, fetched from host 1 (each answer names the task that served it):"
for i in 1 2 3; do
  page=""
  for _ in $(seq 1 50); do
    page=$(ip netns exec "cl-$name-h1" busybox timeout 3 wget -q -O - "http://${prefix}$i:8080/" 2>/dev/null) && break
    sleep 0.2
  done
  echo "  http://${prefix}$i:8080/ -> ${page:-no answer}"
done
cat <<TXT

The cluster is up. The CLI reaches the manager from inside the hosts' namespaces:
    ip netns exec cl-$name-h1 $bin/cluster --config $admin service ls
    ip netns exec cl-$name-h2 $bin/cluster --config $admin service scale demo_web=9
A rolling update (start-first, two at a time; it rolls back by itself if the new tasks fail):
    ip netns exec cl-$name-h1 $bin/cluster --config $admin service update --force demo_web
Lab state: $bin/cluster lab status --name $name
Remove it: scripts/quickstart.sh down
TXT
