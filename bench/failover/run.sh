#!/usr/bin/env bash
# instactl switchover/failover beside Patroni and Redis Sentinel (../shared/peers/failover), in
# one run, rounds interleaved, the same writer at the same rate, the load average printed with
# every round, and the peers' own analyze.py computing the figures of both sides.
#
#   bench/failover/run.sh                 K=20 planned Postgres switchovers per side,
#                                         K_REDIS=10 Redis switchovers, K_UNPLANNED=3 kills
#   K=5 K_REDIS=3 K_UNPLANNED=1 bench/failover/run.sh    a shorter run
#   PEERS=0 bench/failover/run.sh         instactl only (no Patroni/Sentinel rounds)
#
# Postgres writer: the peers' writer.py (psycopg2, one INSERT per commit, reconnect on error),
# pointed at the write path instactl gives its clients: the PgBouncer beside app-0, database
# pg-0. Redis writer: bench/failover/writer (the peers' writer follows Sentinel, which instactl
# does not run), which follows the control database's topology as the app server does.
# Event time t_cmd is taken just before the command (or before the power cut of a kill round).
# Output: bench/failover/results/<stamp>/ (per-round logs, results.jsonl, summary.txt).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS_DIR=$(cd "$ROOT/../shared/peers/failover" && pwd)
K=${K:-20}
K_REDIS=${K_REDIS:-10}
K_UNPLANNED=${K_UNPLANNED:-3}
RATE=${RATE:-200}
WARMUP=${WARMUP:-3}
SETTLE=${SETTLE:-3}
PEERS=${PEERS:-1}
PY=/usr/bin/python3

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$HERE/results/$STAMP
mkdir -p "$OUT/bin"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
load3() { cut -d' ' -f1-3 /proc/loadavg; }

command -v psql >/dev/null || die "psql is missing: make setup"
[ -x /usr/sbin/pgbouncer ] || die "pgbouncer is missing: scripts/install-deps.sh"
if ! $PY -c 'import psycopg2' 2>/dev/null; then
  log "installing python3-psycopg2 (the peers' writer)"
  apt-get install -y -qq python3-psycopg2 >/dev/null
fi

log "building instactl and the Redis writer"
(cd "$ROOT" && go build -o "$OUT/bin/instactl" ./cmd/instactl && go build -o "$OUT/bin/writer" ./bench/failover/writer)
IC=$OUT/bin/instactl

STACK=$OUT/stack.yaml
SBX=/var/lib/instactl/bench-failover
cat >"$STACK" <<EOF
name: fobench
provider: sandbox
network:
  address_base: 127.0.94.1
roles:
  app: {count: 1}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}
shards:
  logical: 4
sandbox:
  dir: $SBX
  lb_port: 18194
  moto_port: 15094
  volume_size_mib: 2048   # every promotion leaves its last 16 MiB segment until WAL moves past it
EOF
ic() { "$IC" --stack "$STACK" "$@"; }
cleanup() {
  local rc=$?
  if [ -n "${writer_pid:-}" ]; then kill "$writer_pid" 2>/dev/null || true; fi
  # A failed run keeps the sandbox (its logs say why) unless KEEP=0; a good one removes it.
  if [ "${KEEP:-$((rc != 0))}" = 1 ]; then
    log "the sandbox stays for a look: $IC --stack $STACK sandbox down removes it"
  else
    ic sandbox down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "sandbox up (instactl side)"
ic sandbox up >/dev/null
ic shard init >/dev/null
declare -A ADDR
while read -r h a; do ADDR[$h]=$a; done < <(ic inventory -o json | $PY -c 'import json,sys
d=json.load(sys.stdin)
for h in (d["hosts"] if isinstance(d, dict) else d):
    print("%s-%d" % (h["role"], h["index"]), h["private_address"])')
APP0=${ADDR[app-0]}
CONTROL="postgres://postgres@${ADDR[pg-0]}:5432,${ADDR[pg-1]}:5432/instagram_control?sslmode=disable&target_session_attrs=read-write"
addr_of() { echo "${ADDR[$1]}"; }
primary_of() { psql -X -At "$CONTROL" -c "SELECT primary_host FROM replication_groups WHERE name = '$1'"; }
psql "$CONTROL" -X -q -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
SELECT 1;
SQL
pg_primary_dsn() { echo "postgres://postgres@$(addr_of "$(primary_of pg-0)"):5432/instagram?sslmode=disable"; }
psql -X -q -v ON_ERROR_STOP=1 "$(pg_primary_dsn)" -c "CREATE TABLE IF NOT EXISTS fo_writes(run text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now()); GRANT INSERT, SELECT ON fo_writes TO app"
IC_DSN="host=$APP0 port=6432 dbname=pg-0 user=app connect_timeout=2"

if [ "$PEERS" = 1 ]; then
  log "peers: setup (Patroni + etcd, Redis + Sentinel) from $PEERS_DIR"
  (cd "$PEERS_DIR" && { ./stop.sh >/dev/null 2>&1 || true; } && INSTALL=1 ./setup.sh) >"$OUT/peer-setup.log" 2>&1 || die "peer setup failed: $OUT/peer-setup.log"
fi

start_writer() { # dir args...
  local dir=$1
  shift
  "$@" >"$dir/writer.err" 2>&1 &
  writer_pid=$!
  for _ in $(seq 1 100); do grep -q '^A ' "$dir/acks.log" 2>/dev/null && return 0; sleep 0.1; done
  die "writer did not start writing: $(cat "$dir/writer.err")"
}
stop_writer() { kill "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; writer_pid=""; }

event() { # dir scenario round kind old t_cmd t_done load rc
  $PY - "$@" <<'PY'
import json, sys
d, scen, rnd, kind, old, t_cmd, t_done, load, rc = sys.argv[1:]
json.dump({"scenario": scen, "round": int(rnd), "kind": kind, "old": old, "t_cmd": float(t_cmd),
           "t_cmd_done": float(t_done), "load": load, "cmd_rc": int(rc), "side": "instactl"},
          open(d + "/event.json", "w"))
PY
}
finish() { # dir
  $PY "$PEERS_DIR/analyze.py" "$1" | $PY -c 'import json,sys; d=json.load(sys.stdin); d["side"]="instactl"; print(json.dumps(d))' | tee -a "$RESULTS" >&2
}

ic_pg_round() { # kind(switchover|kill+cmd) i
  local kind=$1 i=$2 scen="instactl-pg-$1" dir run old t_cmd t_done load rc=0
  dir=$OUT/$scen-$i; mkdir -p "$dir"; run=${STAMP}_$scen-$i
  old=$(primary_of pg-0)
  start_writer "$dir" $PY "$PEERS_DIR/writer.py" pg --run "$run" --rate "$RATE" --out "$dir/acks.log" --dsn "$IC_DSN" --max-seconds 300
  sleep "$WARMUP"
  load=$(load3); t_cmd=$(now)
  case $kind in
    switchover) ic switchover pg-0 -o json >"$dir/cmd.out" 2>"$dir/cmd.err" || rc=$? ;;
    kill+cmd)
      ic host stop "$old" --force >"$dir/kill.out" 2>&1
      ic failover pg-0 -o json >"$dir/cmd.out" 2>"$dir/cmd.err" || rc=$? ;;
  esac
  t_done=$(now)
  sleep "$SETTLE"
  stop_writer
  psql -X -At "$(pg_primary_dsn)" -c "SELECT seq FROM fo_writes WHERE run = '$run'" >"$dir/present.txt"
  event "$dir" "$scen" "$i" "$kind" "$(addr_of "$old"):5432" "$t_cmd" "$t_done" "$load" "$rc"
  finish "$dir"
  [ "$rc" = 0 ] || die "$scen #$i exited $rc: $dir/cmd.err"
  if [ "$kind" != switchover ]; then
    ic host start "$old" >"$dir/start.out" 2>&1 && ic rejoin "$old" >"$dir/rejoin.out" 2>&1 || die "rejoin of $old failed: $dir/rejoin.out"
  fi
}

ic_redis_round() { # kind(switchover|kill+cmd) i
  local kind=$1 i=$2 scen="instactl-redis-$1" dir run old t_cmd t_done load rc=0 new
  dir=$OUT/$scen-$i; mkdir -p "$dir"; run=${STAMP}_$scen-$i
  old=$(primary_of redis-0)
  start_writer "$dir" "$OUT/bin/writer" -kind redis -control "$CONTROL" -group redis-0 -run "$run" -rate "$RATE" -out "$dir/acks.log" -max-seconds 300
  sleep "$WARMUP"
  load=$(load3); t_cmd=$(now)
  case $kind in
    switchover) ic switchover redis-0 -o json >"$dir/cmd.out" 2>"$dir/cmd.err" || rc=$? ;;
    kill+cmd)
      ic host stop "$old" --force >"$dir/kill.out" 2>&1
      ic failover redis-0 -o json >"$dir/cmd.out" 2>"$dir/cmd.err" || rc=$? ;;
  esac
  t_done=$(now)
  sleep "$SETTLE"
  stop_writer
  new=$(primary_of redis-0)
  redis-cli -h "$(addr_of "$new")" -p 6379 LRANGE "fo:$run" 0 -1 >"$dir/present.txt"
  event "$dir" "$scen" "$i" "$kind" "$(addr_of "$old"):6379" "$t_cmd" "$t_done" "$load" "$rc"
  finish "$dir"
  [ "$rc" = 0 ] || die "$scen #$i exited $rc: $dir/cmd.err"
  if [ "$kind" != switchover ]; then
    ic host start "$old" >"$dir/start.out" 2>&1 && ic rejoin "$old" >"$dir/rejoin.out" 2>&1 || die "rejoin of $old failed: $dir/rejoin.out"
  fi
}

peer_round() { # run.sh group, K_PLANNED, K_UNPLANNED
  [ "$PEERS" = 1 ] || return 0
  local before after
  before=$(ls -1 "$PEERS_DIR/results" 2>/dev/null | sort | tail -n 1)
  (cd "$PEERS_DIR" && K_PLANNED=$2 K_UNPLANNED=$3 RATE=$RATE ./run.sh "$1") >>"$OUT/peer-run.log" 2>&1 || die "peer round $1 failed: $OUT/peer-run.log"
  after=$(ls -1 "$PEERS_DIR/results" | sort | tail -n 1)
  [ "$after" != "$before" ] || die "peer round $1 left no results"
  $PY -c 'import json,sys
for l in open(sys.argv[1]):
    d=json.loads(l); d["side"]="peer"; print(json.dumps(d))' "$PEERS_DIR/results/$after/results.jsonl" | tee -a "$RESULTS" >&2
}

log "planned Postgres switchovers: $K per side, interleaved, $RATE writes/s"
for ((i = 1; i <= K; i++)); do
  ic_pg_round switchover "$i"
  if ((i <= 5)); then peer_round pg10 1 0; fi # Patroni's switchover does not vary much: 5 rounds
done
log "planned Redis switchovers: $K_REDIS per side"
for ((i = 1; i <= K_REDIS; i++)); do
  ic_redis_round switchover "$i"
  if ((i <= 3)); then peer_round redis 1 0; fi
done
log "commanded failovers after a power cut: $K_UNPLANNED per side"
for ((i = 1; i <= K_UNPLANNED; i++)); do
  ic_pg_round kill+cmd "$i"
  ic_redis_round kill+cmd "$i"
  peer_round pg10 0 1
  if ((i == 1)); then peer_round redis 0 1; fi # its kill rounds wait for Sentinel's down-after
done

$PY "$HERE/summary.py" "$RESULTS" | tee "$OUT/summary.txt"
