#!/usr/bin/env bash
# Times instactl's provisioning against a fresh moto_server per repetition, with the phases of
# shared/peers/terraform/run.sh: create (N=25 app servers, 30 hosts), no-op plan, scale 25 -> 30,
# destroy. Each phase reports wall seconds and API requests (every HTTP attempt, counted in the
# SDK), per operation in the -v log. moto is started and stopped by the Go test harness
# (internal/testenv), on 127.0.0.1 only.
#
#   bench/provision/run.sh            # REPS=3
#   REPS=5 bench/provision/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS="${REPS:-3}"
echo "load1m at start: $(cut -d' ' -f1 /proc/loadavg)"
go test -run '^$' -bench '^BenchmarkApplyMoto$' -benchtime 1x -count "$REPS" -v ./provision/ |
	grep -E '^(Benchmark|    bench_test)|requests|ok|FAIL'
echo "load1m at end: $(cut -d' ' -f1 /proc/loadavg)"
