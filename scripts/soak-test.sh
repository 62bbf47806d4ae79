#!/usr/bin/env bash
# soak-test.sh N: runs the README's test command (make test) N times in a row while one core is kept
# busy by stress-ng, and prints "P passed, F failed" with the names of the tests that failed.
#
# Why: the suite must never lie under load. A test that asserts a timing, or waits a fixed time for a
# condition instead of on the condition itself, passes on a quiet machine and fails here.
#
# Env: SOAK_CMD overrides the command (default: make test); SOAK_CPU the number of busy workers
# (default 1); SOAK_LOGS the directory for each run's log (default: a new temporary directory).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

runs=${1:-1}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/soak-test.sh N   (N >= 1: how many times to run the suite under load)" >&2
  exit 2
fi
cmd=${SOAK_CMD:-make test}
busy=${SOAK_CPU:-1}
logs=${SOAK_LOGS:-$(mktemp -d /tmp/instactl-soak.XXXXXX)}
mkdir -p "$logs"

if ! command -v stress-ng >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "soak-test: stress-ng is missing; install it: apt-get update && apt-get install -y stress-ng" >&2
    exit 1
  fi
  echo "soak-test: installing stress-ng" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq stress-ng >/dev/null || exit 1
fi

# The load runs for as long as the runs do; it is ended by its PID, never by name.
stress-ng --cpu "$busy" --timeout 0 --quiet &
stress_pid=$!
trap 'kill "$stress_pid" 2>/dev/null; wait "$stress_pid" 2>/dev/null' EXIT

passed=0
failed=0
failures=()
for i in $(seq 1 "$runs"); do
  log="$logs/run-$i.log"
  start=$(date +%s)
  echo "soak-test: run $i of $runs: $cmd (load average $(cut -d' ' -f1-3 /proc/loadavg); log $log)" >&2
  if bash -c "$cmd" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "soak-test: run $i passed in $(($(date +%s) - start)) s" >&2
  else
    failed=$((failed + 1))
    # go test names each failing test on a "--- FAIL: Name" line and each failing package on "FAIL\tpkg".
    names=$(grep -Eo -- '--- FAIL: [^ ]+' "$log" | awk '{print $3}' | sort -u | tr '\n' ' ')
    pkgs=$(grep -E '^FAIL[[:space:]]+[^ ]+' "$log" | awk '{print $2}' | sort -u | tr '\n' ' ')
    [ -n "$names$pkgs" ] || names="(no test named; see the log: the command itself failed)"
    failures+=("run $i: ${names}${pkgs:+packages: $pkgs}")
    echo "soak-test: run $i FAILED in $(($(date +%s) - start)) s: ${names}${pkgs:+packages: $pkgs}" >&2
  fi
done

for f in "${failures[@]}"; do
  echo "failed $f"
done
echo "logs in $logs"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
