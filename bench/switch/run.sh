#!/usr/bin/env bash
# Switch propagation: how long from the commit of `instactl switch set` until every app server
# reports the new state on GET /internal/switches, at 3 and at 20 app hosts on the sandbox,
# under the load generator through the load balancer. The figure is the command's own: for each
# round, the slowest app server's acknowledgement after the commit (-o json, slowest_ns; every
# server is polled every 5 ms, so a figure is at most ~5 ms late). The load average is printed
# with each stack size.
#
#   bench/switch/run.sh                    HOSTS="3 20", K=100 rounds each, RATE=50 req/s
#   HOSTS=3 K=20 bench/switch/run.sh       a quick look
#
# Output: bench/switch/results/<stamp>/ (rounds.jsonl, per-size logs, summary.txt).
# Range: 127.0.159.x, LB 18159, moto 15159; sandbox dir /var/lib/instactl/sandbox/bench-switch.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HOSTS=${HOSTS:-3 20}
K=${K:-100}
RATE=${RATE:-50}
PAUSE=${PAUSE:-0.2}
PY=/usr/bin/python3

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$HERE/results/$STAMP
mkdir -p "$OUT/bin"
ROUNDS=$OUT/rounds.jsonl
: >"$ROUNDS"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
load3() { cut -d' ' -f1-3 /proc/loadavg; }

[ -x /usr/sbin/pgbouncer ] || die "pgbouncer is missing: scripts/install-deps.sh"
log "building instactl"
(cd "$ROOT" && go build -o "$OUT/bin/instactl" ./cmd/instactl)
IC=$OUT/bin/instactl
SBX=/var/lib/instactl/sandbox/bench-switch
STACK=""
loadgen_pid=""
ic() { "$IC" --stack "$STACK" "$@"; }
cleanup() {
  local rc=$?
  if [ -n "$loadgen_pid" ]; then kill "$loadgen_pid" 2>/dev/null || true; fi
  if [ -n "$STACK" ]; then
    if [ "${KEEP:-$((rc != 0))}" = 1 ]; then
      log "the sandbox stays for a look: $IC --stack $STACK sandbox down removes it"
    else
      ic sandbox down >/dev/null 2>&1 || true
    fi
  fi
}
trap cleanup EXIT

for n in $HOSTS; do
  STACK=$OUT/stack-$n.yaml
  cat >"$STACK" <<YAML
name: swbench
provider: sandbox
network:
  address_base: 127.0.159.1
roles:
  app: {count: $n}
  pg: {count: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}
deploy:
  batches: [100%]
shards:
  logical: 4
sandbox:
  dir: $SBX
  lb_port: 18159
  moto_port: 15159
YAML
  log "$n app hosts: sandbox up, shard init, deploy (load $(load3))"
  t0=$(date +%s)
  ic sandbox up >"$OUT/up-$n.log" 2>&1 || die "sandbox up: $OUT/up-$n.log"
  ic shard init >"$OUT/shard-init-$n.log" 2>&1 || die "shard init: $OUT/shard-init-$n.log"
  (cd "$ROOT" && "$IC" --stack "$STACK" deploy --version bench) >"$OUT/deploy-$n.log" 2>&1 || die "deploy: $OUT/deploy-$n.log"
  log "$n app hosts ready in $(($(date +%s) - t0)) s; load generator at $RATE req/s"
  "$IC" --stack "$STACK" loadgen --rate "$RATE" --duration 1h --record "$OUT/writes-$n.jsonl" -o json >"$OUT/loadgen-$n.json" 2>"$OUT/loadgen-$n.err" &
  loadgen_pid=$!
  sleep 3
  load_start=$(load3)
  log "$n app hosts: $K rounds of switch set feed.ranking off/on (load $load_start)"
  for i in $(seq 1 "$K"); do
    if ((i % 2)); then v=off; else v=on; fi
    ic switch set feed.ranking "$v" --reason "bench/switch round $i" -o json >"$OUT/round.json" 2>"$OUT/round.err" ||
      die "round $i: $(cat "$OUT/round.err")"
    $PY - "$n" "$i" "$(cut -d' ' -f1 /proc/loadavg)" "$OUT/round.json" >>"$ROUNDS" <<'PY'
import json, sys
n, i, load1, path = sys.argv[1:]
v = json.load(open(path))
acks = v["acks"]
assert len(acks) == int(n) and all(not a.get("error") for a in acks), acks
print(json.dumps({"hosts": int(n), "round": int(i), "load1": float(load1), "slowest_ns": v["slowest_ns"],
                  "acks_ns": [a["after_ns"] for a in acks]}))
PY
    sleep "$PAUSE"
  done
  load_end=$(load3)
  kill -TERM "$loadgen_pid"
  wait "$loadgen_pid" || true # exit 5 when some requests failed: reported below
  loadgen_pid=""
  log "$n app hosts done (load $load_end); load generator: $($PY -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%d requests, %d failed, %d dropped, %d acknowledged writes" % (r["requests"], r["errors"], r["dropped"], r["acknowledged_writes"]))' "$OUT/loadgen-$n.json")"
  echo "$n $load_start | $load_end" >>"$OUT/load.txt"
  ic loadgen verify --record "$OUT/writes-$n.jsonl" >"$OUT/verify-$n.txt" 2>&1 || die "verify: $OUT/verify-$n.txt"
  ic sandbox down >"$OUT/down-$n.log" 2>&1 || die "sandbox down: $OUT/down-$n.log"
  STACK=""
done

$PY - "$ROUNDS" "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys, os
rounds = [json.loads(l) for l in open(sys.argv[1])]
out = sys.argv[2]
loads = {}
for l in open(os.path.join(out, "load.txt")):
    n, rest = l.split(" ", 1)
    loads[int(n)] = rest.strip()
def pct(xs, p):
    xs = sorted(xs)
    return xs[(len(xs) - 1) * p // 100]
ms = lambda ns: "%.1f ms" % (ns / 1e6)
print("switch propagation, commit -> every app server reports the new version (nearest-rank percentiles)")
for n in sorted({r["hosts"] for r in rounds}):
    rs = [r for r in rounds if r["hosts"] == n]
    slow = [r["slowest_ns"] for r in rs]
    each = [a for r in rs for a in r["acks_ns"]]
    lg = json.load(open(os.path.join(out, "loadgen-%d.json" % n)))
    ver = open(os.path.join(out, "verify-%d.txt" % n)).read().strip()
    print("%2d app hosts, %d rounds: all servers acknowledged p50 %s, p99 %s, max %s; each server's ack p50 %s, p99 %s" % (
        n, len(rs), ms(pct(slow, 50)), ms(pct(slow, 99)), ms(max(slow)), ms(pct(each, 50)), ms(pct(each, 99))))
    print("   load average (1/5/15 min) before | after: %s" % loads[n])
    print("   load generator: %d requests, %d failed, %d dropped; %s" % (lg["requests"], lg["errors"], lg["dropped"], ver))
PY
log "results: $OUT"
