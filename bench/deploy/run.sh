#!/usr/bin/env bash
# Side-by-side timing of instactl deploy, the raw ssh limit (e1, e) and Fabric (b) on the peers'
# N local sshd hosts. Usage: bench/deploy/run.sh N [ROUNDS]. Root only; loopback only.
set -euo pipefail
N=${1:-10} ROUNDS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS=${PEERS:-/work/shared/peers/deploy}
BIN=$(mktemp -d)/deploybench
(cd "$HERE/../.." && go build -o "$BIN" ./bench/deploy)
ulimit -n "$(ulimit -Hn)"
"$PEERS/hosts.sh" up "$N"
trap '"$PEERS/hosts.sh" down' EXIT
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; return 1; }; e=$(date +%s.%N); echo "$e - $s" | bc; }
for ((r = 1; r <= ROUNDS; r++)); do
    "$PEERS/hosts.sh" clean "$N" >/dev/null
    echo "round $r instactl: $("$BIN" -n "$N" | tr '\n' ' ')"
    "$PEERS/hosts.sh" clean "$N" >/dev/null
    echo "round $r e1 raw limit (1 ssh/host): $(t "$PEERS/tool_e1_xargs_1session.sh" "$N") s"
    "$PEERS/hosts.sh" clean "$N" >/dev/null
    echo "round $r e raw (2 ssh/host): $(t "$PEERS/tool_e_xargs.sh" "$N") s"
    "$PEERS/hosts.sh" clean "$N" >/dev/null
    echo "round $r b fabric: $(t "$PEERS/tool_b_fabric.sh" "$N") s"
done
