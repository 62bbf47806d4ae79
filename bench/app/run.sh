#!/usr/bin/env bash
# App server throughput and latency (closed loop and open loop) and Redis bytes per photo->owner
# mapping, on this machine. Usage: bench/app/run.sh [REQUESTS_PER_CLOSED_LOOP_RUN] [MIX_SECONDS]
# Needs the test components (PostgreSQL 15, redis-server, memcached, moto_server). Loopback only.
set -euo pipefail
N=${1:-2000} SECS=${2:-20}
cd "$(dirname "$0")/../.."
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
go test -run '^$' -bench 'App/(feed|upload|s3put)' -benchtime "${N}x" -timeout 30m ./bench/app
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
APPBENCH_RATE=${APPBENCH_RATE:-100} go test -run '^$' -bench 'App/mix' -benchtime "${SECS}x" -timeout 30m ./bench/app
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
go test -run '^$' -bench OwnerMapping -benchtime 100000x ./internal/app
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
