#!/usr/bin/env bash
# The monitor host's cost: Prometheus' CPU and memory on the sandbox stack of
# TestMonitorSandboxAlerts (7 hosts: app, a Postgres pair, a Redis pair, memcached, monitor; 18
# targets with the blackbox probes) at each scrape interval of INTERVALS, with package monitor's
# full rule set evaluated at the same interval. Per interval: `instactl monitor up
# --scrape-interval X`, WARM seconds to settle, then two reads of Prometheus' own /metrics
# DURATION seconds apart: CPU = the growth of process_cpu_seconds_total over the window, memory =
# process_resident_memory_bytes at the end, samples/s = the growth of
# prometheus_tsdb_head_samples_appended_total, and the head series; and every alert (pending or
# firing) seen over the window, every 5 s, with the rules' production for: values: the stack is
# healthy, so the column should say none. The load average (1 min) is printed at both ends: the
# machine is shared, so compare the intervals of one run.
#
#   bench/monitor/run.sh                          # INTERVALS="15s 5s 2s" WARM=45 DURATION=90
#   INTERVALS="30s 15s" DURATION=120 bench/monitor/run.sh
#
# It brings up its own sandbox (127.0.158.x, lb 18158, moto 15158, dir
# /var/lib/instactl/sandbox/monup-bench: do not run it alongside TestMonitorSandboxAlerts, which
# uses the same range) and takes it down at the end. Results: bench/monitor/results/<stamp>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=bench/monitor
INTERVALS="${INTERVALS:-15s 5s 2s}"
WARM="${WARM:-45}"
DURATION="${DURATION:-90}"
STAMP="$(date +%Y%m%dT%H%M%S)"
OUT="${OUT:-$HERE/results/$STAMP}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BIN=/tmp/instactl-bench-monitor-$$
TEXTFILE=/var/lib/instagram/textfile # templates.TextfileDir
STACK="$OUT/stack.yaml"

log() { echo "[$(date +%H:%M:%S)] $*"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

cat >"$STACK" <<YAML
name: monbench
provider: sandbox
network:
  address_base: 127.0.158.1
roles:
  app: {count: 1}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/redis}}
  memcached: {count: 1}
  monitor: {}
shards:
  logical: 4
deploy:
  batches: [100%]
  health_timeout: 60s
sandbox:
  dir: /var/lib/instactl/sandbox/monup-bench
  volume_size_mib: 300
  lb_port: 18158
  moto_port: 15158
YAML

go build -o "$BIN" ./cmd/instactl
ic() { "$BIN" --stack "$STACK" "$@"; }
down() {
	ic sandbox down >"$OUT/down.log" 2>&1 || echo "sandbox down failed, see $OUT/down.log" >&2
	rm -f "$BIN"
}
trap down EXIT
trap 'exit 130' INT TERM

log "sandbox up (load $(load1))"
ic sandbox up >"$OUT/up.log" 2>&1
ic shard init >"$OUT/shard-init.log" 2>&1
ic deploy --version v1 >"$OUT/deploy.log" 2>&1
PROM="$(ic monitor up -o json 2>"$OUT/monitor-up.err" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prometheus_url"])')"
log "Prometheus at $PROM"
# One backup, its metrics where cron on the monitor host would write them (the backup rules
# want a fresh set per target and the file itself).
ic backup create --metrics-file "$OUT/instactl_backup.prom" >"$OUT/backup.log" 2>&1
MON_HOST=monitor-0
ic run --hosts "$MON_HOST" -- "echo $(base64 -w0 "$OUT/instactl_backup.prom") | base64 -d >$TEXTFILE/instactl_backup.prom.tmp && mv -f $TEXTFILE/instactl_backup.prom.tmp $TEXTFILE/instactl_backup.prom" \
	>"$OUT/backup-metrics.log" 2>&1

# metric NAME: the sum of the series NAME of Prometheus' own /metrics (with or without labels).
metric() {
	curl -sf "$PROM/metrics" | awk -v n="$1" '{ s = $1; sub(/\{.*/, "", s) } s == n { v += $2; f = 1 } END { if (!f) exit 1; printf "%.6f\n", v }'
}

# alerts: the alerts Prometheus holds now (pending or firing), as "NAME/state host" words.
alerts() {
	curl -sf "$PROM/api/v1/alerts" | python3 -c 'import json,sys; print(" ".join(sorted({a["labels"]["alertname"] + "/" + a["state"] + "@" + a["labels"].get("host", "-") for a in json.load(sys.stdin)["data"]["alerts"]})) or "none")'
}

printf 'interval\ttargets_up\thead_series\tsamples_per_s\tcpu_percent\trss_mib\tload_start\tload_end\talerts\n' >"$OUT/results.tsv"
for iv in $INTERVALS; do
	ic monitor up --scrape-interval "$iv" >"$OUT/monitor-up-$iv.log" 2>&1
	log "scrape interval $iv: warming ${WARM}s"
	sleep "$WARM"
	l0=$(load1) c0=$(metric process_cpu_seconds_total) s0=$(metric prometheus_tsdb_head_samples_appended_total) t0=$(date +%s.%N)
	# The stack is healthy: every alert Prometheus raised over the window, sampled every 5 s.
	seen=""
	for _ in $(seq 1 $((DURATION / 5))); do
		a=$(alerts)
		[ "$a" = none ] || seen="$seen $a"
		sleep 5
	done
	seen=$(echo "$seen" | tr ' ' '\n' | sed '/^$/d' | sort -u | tr '\n' ' ')
	c1=$(metric process_cpu_seconds_total) s1=$(metric prometheus_tsdb_head_samples_appended_total) t1=$(date +%s.%N) l1=$(load1)
	rss=$(metric process_resident_memory_bytes) series=$(metric prometheus_tsdb_head_series)
	up=$(curl -sf "$PROM/api/v1/query" --data-urlencode 'query=sum(up)' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["result"][0]["value"][1])')
	python3 - "$iv" "$up" "$series" "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" "$rss" "$l0" "$l1" "${seen:-none}" >>"$OUT/results.tsv" <<'PY'
import sys
iv, up, series, c0, c1, s0, s1, t0, t1, rss, l0, l1, seen = sys.argv[1:]
dt = float(t1) - float(t0)
print("\t".join([iv, up, str(int(float(series))), "%.0f" % ((float(s1) - float(s0)) / dt),
                 "%.1f" % (100 * (float(c1) - float(c0)) / dt), "%.0f" % (float(rss) / 2**20), l0, l1, seen.strip() or "none"]))
PY
	log "  $(tail -1 "$OUT/results.tsv")"
done
column -t "$OUT/results.tsv"
