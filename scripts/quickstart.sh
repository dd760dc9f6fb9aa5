#!/usr/bin/env bash
# Installs what is needed, builds, and brings up a local multi-host cluster: three hosts, each a
# network namespace with its own address (10.213.K.1-3), a registry preloaded with a busybox
# image, a manager on host 1 and an agent on every host; then deploys an example service (six
# busybox httpd replicas) and shows where its tasks run.
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
cluster service create --name web --replicas 6 --timeout 60s "$image" httpd -f -p 8080
echo
cluster service ps web
cat <<TXT

The cluster is up. The CLI reaches the manager from inside the hosts' namespaces:
    ip netns exec cl-$name-h1 $bin/cluster --config $admin service ls
    ip netns exec cl-$name-h2 $bin/cluster --config $admin service scale web=9
Lab state: $bin/cluster lab status --name $name
Remove it: scripts/quickstart.sh down
TXT
