#!/usr/bin/env bash
# Installs the system packages the cluster and its tests need on a fresh Debian machine (as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/install-deps.sh must run as root (it installs Debian packages)" >&2
  exit 1
fi
apt-get update -q
# runc, iproute2, nftables, busybox-static and docker-registry are for the agents, the overlay and
# the lab; the control-plane tests need only a Rust toolchain.
apt-get install -y -q --no-install-recommends \
  ca-certificates runc iproute2 nftables iptables busybox-static docker-registry iputils-ping procps
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
