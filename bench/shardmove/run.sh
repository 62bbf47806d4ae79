#!/usr/bin/env bash
# Side-by-side shard move on two fresh local PostgreSQL 15 servers, in one run on the same data:
# pg_dump | psql and binary COPY with indexes after (baseline.sh, the peers' methods a and c),
# then instactl's online move (CopySnapshot) under 500 writes/s to the moving shard, then the
# move back with the built-in initial sync (CopyLogical). Root only (the servers run as postgres).
# Usage: bench/shardmove/run.sh [N]   (about 11*N rows; N=500000 is the peers' 5.6 M rows)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
SHARDMOVE_BENCH_N=${1:-${SHARDMOVE_BENCH_N:-100000}} SHARDMOVE_BENCH_BASELINE="$HERE/baseline.sh" CI=true \
    go test ./shardmove -run '^$' -bench '^BenchmarkSideBySide$' -benchtime 1x -timeout 60m -v
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
