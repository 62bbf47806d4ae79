#!/usr/bin/env bash
# Installs what instactl's sandbox and tests need on a fresh Debian 12 machine (root), only when
# missing: the real components the tests run against, never fakes.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
check() { # check BINARY PACKAGE
  have "$1" || need+=("$2")
}
check /usr/sbin/sshd openssh-server
check ssh openssh-client
check redis-server redis-server
check redis-cli redis-tools
check memcached memcached
check /usr/sbin/nginx nginx-light
check /usr/sbin/mkfs.xfs xfsprogs
check /usr/sbin/xfs_freeze xfsprogs
check losetup mount
check unshare util-linux
check nsenter util-linux
check /usr/lib/postgresql/15/bin/postgres postgresql-15
check psql postgresql-client-15
check /usr/sbin/pgbouncer pgbouncer
check curl curl
check shellcheck shellcheck
check chromium chromium
# Monitoring (the monitor role, every host's exporters, promtool/amtool checks).
check prometheus prometheus
check promtool prometheus
check prometheus-alertmanager prometheus-alertmanager
check amtool prometheus-alertmanager
check prometheus-node-exporter prometheus-node-exporter
check prometheus-postgres-exporter prometheus-postgres-exporter
check prometheus-redis-exporter prometheus-redis-exporter
check prometheus-pgbouncer-exporter prometheus-pgbouncer-exporter
check prometheus-blackbox-exporter prometheus-blackbox-exporter

if [ ${#need[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  pkgs=($(printf '%s\n' "${need[@]}" | sort -u))
  echo "install-deps: installing ${pkgs[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: not root; run: apt-get update && apt-get install -y ${pkgs[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # The packages must not start their own services: Prometheus, Alertmanager, the exporters,
  # PostgreSQL and Redis would hold the ports the sandbox and the tests bind. A policy-rc.d that
  # refuses every start does that under sysvinit and systemd alike; it is removed afterwards
  # unless it was there before.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if ! have moto_server; then
  echo "install-deps: moto_server not found; install moto with its server: pip install 'moto[server]'" >&2
  exit 1
fi
if ! have aws; then
  echo "install-deps: aws CLI not found; install it: pip install awscli" >&2
  exit 1
fi
