#!/usr/bin/env bash
# Provisioning under AWS's faults (issue 18), longer than CI runs it:
#   matrix    every fault profile x SEEDS seeds, create and destroy through the injector, moto
#             as the oracle (TestFaultMatrix with AWSFAULT_SEEDS, AWSFAULT_PROFILES)
#   kill      kill -9 after every mutating call of a 10-host create and destroy (TestKillPoints
#             with INSTACTL_KILLPOINTS=all)
#   binary    the real instactl binary, with its default waits and retries, through
#             bench/provision/faultproxy in front of moto_server: the newcomer's init -> plan ->
#             apply -> plan -> destroy under the throttle and the throttle-slow profiles (apply
#             and destroy with --yes: the test confirms at the prompt), then the 25-app stack of
#             run.sh (bench/provision/ig.yaml) under the slow profile: create, no-op plan,
#             destroy. Wall time and requests (moto's access log lines) per phase.
#
#   bench/provision/faults.sh                 # all three, SEEDS=10
#   PARTS=binary bench/provision/faults.sh    # one part
# Env: SEEDS=10 PARTS="matrix kill binary" MOTO_PORT=15150 PROXY=127.0.150.1:18150
#      OUT=bench/provision/results/faults-<stamp>
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=bench/provision
SEEDS="${SEEDS:-10}"
PARTS="${PARTS:-matrix kill binary}"
MOTO_PORT="${MOTO_PORT:-15150}"
PROXY="${PROXY:-127.0.150.1:18150}"
STAMP="$(date +%Y%m%dT%H%M%S)"
OUT="${OUT:-$HERE/results/faults-$STAMP}"
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
MOTO="http://127.0.0.1:$MOTO_PORT"
MOTO_BIN="$(pyenv which moto_server 2>/dev/null || command -v moto_server)"
BIN=/tmp/instactl-faults-$$
PROXY_BIN=/tmp/instactl-faultproxy-$$
MOTO_PID="" PROXY_PID=""

export AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_CA_BUNDLE

log() { echo "[$(date +%H:%M:%S)] $*"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

stop() { # pid variable name
	local pid=${!1}
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	eval "$1="
}
cleanup() { stop PROXY_PID; stop MOTO_PID; rm -f "$BIN" "$PROXY_BIN"; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

{
	echo "date: $(date -Is)"
	echo "host: $(uname -srm), $(nproc) cores"
	echo "instactl: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo '+uncommitted changes')"
	echo "moto: $(python3 -c 'import moto; print(moto.__version__)')"
	echo "parts: $PARTS; seeds: $SEEDS"
	echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/env.txt"

part() { [[ " $PARTS " == *" $1 "* ]]; }

if part matrix; then
	log "matrix: every profile x $SEEDS seeds"
	la0=$(load1) t0=$(date +%s)
	rc=0
	AWSFAULT_SEEDS="$SEEDS" AWSFAULT_PROFILES="${PROFILES:-throttle,lost-reply,eventual,slow,dead-instance,throttle-slow,chaos,edge}" \
		go test -count=1 -timeout 60m -run '^TestFaultMatrix$' -v ./provision/ >"$OUT/matrix.log" 2>&1 || rc=$?
	echo "matrix: exit $rc, $(($(date +%s) - t0)) s, load1m $la0 -> $(load1)" | tee -a "$OUT/summary.md"
	grep -E '^\s+fault_test.go:[0-9]+: \|' "$OUT/matrix.log" | sed -E 's/^\s+fault_test.go:[0-9]+: //' >>"$OUT/summary.md" || true
	grep -E -- '--- FAIL' "$OUT/matrix.log" | tee -a "$OUT/summary.md" || true
fi

if part kill; then
	log "kill: every mutating call of a 10-host create and destroy"
	la0=$(load1) t0=$(date +%s)
	rc=0
	INSTACTL_KILLPOINTS=all go test -count=1 -timeout 60m -run '^TestKillPoints$' -v ./cmd/instactl/ >"$OUT/kill.log" 2>&1 || rc=$?
	{
		echo
		echo "kill points: exit $rc, $(($(date +%s) - t0)) s, load1m $la0 -> $(load1)"
		grep -E 'mutating calls, its destroy' "$OUT/kill.log" | sed -E 's/^\s+killpoint_test.go:[0-9]+: //'
		echo "$(grep -c -- '--- PASS: TestKillPoints/' "$OUT/kill.log" || true) cycles passed (each: a create killed at one point, a destroy killed at one), $(grep -c -- '--- FAIL: TestKillPoints/' "$OUT/kill.log" || true) failed"
		grep -E -- '--- FAIL' "$OUT/kill.log" || true
	} | tee -a "$OUT/summary.md"
fi

start_moto() { # log
	"$MOTO_BIN" -H 127.0.0.1 -p "$MOTO_PORT" >"$1" 2>&1 &
	MOTO_PID=$!
	for _ in $(seq 1 100); do
		curl -s -o /dev/null "$MOTO/moto-api/data.json" && return 0
		sleep 0.2
	done
	echo "moto did not come up on $MOTO, see $1" >&2
	exit 1
}

start_proxy() { # profile seed log
	"$PROXY_BIN" -target "$MOTO" -listen "$PROXY" -profile "$1" -seed "$2" >"$3.url" 2>"$3" &
	PROXY_PID=$!
	for _ in $(seq 1 50); do
		[ -s "$3.url" ] && return 0
		sleep 0.1
	done
	echo "faultproxy did not start, see $3" >&2
	exit 1
}

requests() { grep -c 'HTTP/1\.[01]"' "$1" || true; }

# phase name dir want-exit command...: one timed phase of the binary, appended to binary.tsv.
phase() {
	local name=$1 d=$2 want=$3
	shift 3
	local l0 t0 t1 rc la0
	l0=$(requests "$d/moto.log") la0=$(load1) t0=$(date +%s.%N)
	rc=0
	local f="$d/${name//[^a-z0-9]/_}"
	"$@" >"$f.out" 2>"$f.err" || rc=$?
	t1=$(date +%s.%N)
	local n=$(($(requests "$d/moto.log") - l0)) retries
	retries=$(grep -c ', retrying$' "$f.err" || true)
	printf '%s\t%.2f\t%s\t%s\t%s\t%s\n' "$name" "$(echo "$t1 - $t0" | bc)" "$n" "$retries" "$rc" "$la0" >>"$OUT/binary.tsv"
	log "  $name: $(echo "$t1 - $t0" | bc | cut -c1-6)s requests=$n retries=$retries rc=$rc"
	[ "$rc" = "$want" ] || { echo "$name exited $rc, want $want; see $f.err" >&2; exit 1; }
}

if part binary; then
	go build -o "$BIN" ./cmd/instactl
	go build -o "$PROXY_BIN" ./$HERE/faultproxy
	printf 'phase\twall_s\trequests\tretries_seen_by_-v\trc\tload1m_start\n' >"$OUT/binary.tsv"

	for prof in throttle throttle-slow; do
		log "binary: newcomer under $prof (seed 1), default waits"
		d="$OUT/newcomer-$prof" && mkdir -p "$d/home/.ssh"
		ssh-keygen -q -t ed25519 -N "" -f "$d/home/.ssh/id_ed25519"
		start_moto "$d/moto.log"
		start_proxy "$prof" 1 "$d/proxy.log"
		export AWS_ENDPOINT_URL="http://$PROXY"
		ORIG_HOME="$HOME"
		export HOME="$d/home" # the newcomer's key is ~/.ssh/id_ed25519
		"$BIN" init --stack "$d/instagram.yaml" >/dev/null 2>&1
		sed -i -e 's/^provider: sandbox/provider: aws/' -e 's|  # key: ~/.ssh/id_ed25519|  key: ~/.ssh/id_ed25519|' "$d/instagram.yaml"
		phase "$prof: plan" "$d" 0 "$BIN" plan --stack "$d/instagram.yaml" -v
		phase "$prof: apply" "$d" 0 "$BIN" apply --yes --stack "$d/instagram.yaml" -v
		phase "$prof: no-op plan" "$d" 0 "$BIN" plan --detailed-exitcode --stack "$d/instagram.yaml" -v
		phase "$prof: destroy" "$d" 0 "$BIN" destroy --yes --stack "$d/instagram.yaml" -v
		phase "$prof: plan after destroy" "$d" 2 "$BIN" plan --detailed-exitcode --stack "$d/instagram.yaml"
		stop PROXY_PID
		stop MOTO_PID
		unset AWS_ENDPOINT_URL
		export HOME="$ORIG_HOME"
		rm -f "$d/home/.ssh/id_ed25519" # a throwaway key
	done

	log "binary: the 25-app stack under slow (seed 1), default waits"
	d="$OUT/slow25" && mkdir -p "$d"
	ssh-keygen -q -t ed25519 -N "" -f "$d/id_ed25519"
	sed -e "s#key: KEY#key: $d/id_ed25519#" "$HERE/ig.yaml" >"$d/n25.yaml"
	start_moto "$d/moto.log"
	start_proxy slow 1 "$d/proxy.log"
	export AWS_ENDPOINT_URL="http://$PROXY"
	phase "slow, 25 apps: create" "$d" 0 "$BIN" apply --yes --stack "$d/n25.yaml" -v
	phase "slow, 25 apps: no-op plan" "$d" 0 "$BIN" plan --detailed-exitcode --stack "$d/n25.yaml" -v
	phase "slow, 25 apps: destroy" "$d" 0 "$BIN" destroy --yes --stack "$d/n25.yaml" -v
	stop PROXY_PID
	stop MOTO_PID
	unset AWS_ENDPOINT_URL
	rm -f "$d/id_ed25519" # a throwaway key
	{
		echo
		echo "real binary through faultproxy (default waits: polls 2 s doubling to 20 s; backoff capped at 20 s):"
		echo
		echo "| phase | wall s | requests (moto log) | retries (-v) | exit | load1m at start |"
		echo "|---|---|---|---|---|---|"
		tail -n +2 "$OUT/binary.tsv" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}'
		echo
		for l in "$OUT"/*/proxy.log; do sed 's/^/    /' "$l"; done
	} | tee -a "$OUT/summary.md"
fi
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"
echo "results: $OUT"
