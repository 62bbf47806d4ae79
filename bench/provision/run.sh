#!/usr/bin/env bash
# instactl against Terraform on the same stack, in one run, against a fresh local moto_server per
# tool and repetition: create (25 app servers, 30 hosts, ELB, 10 EBS volumes), no-op plan,
# scale 25 -> 30, destroy. For both tools a phase's API requests are the lines moto's access log
# gained during it (the peer's method), and its wall time is taken around the command.
#
#   bench/provision/run.sh                 # REPS=3
#   REPS=5 TF_PARALLELISM=50 bench/provision/run.sh
#
# Terraform runs through shared/peers/terraform/run.sh (one repetition per call, so that the two
# tools alternate and see the same background load); instactl is the real binary built from
# ./cmd/instactl with bench/provision/ig.yaml (the stack of the peer's main.tf). moto runs on
# 127.0.0.1 only, with AMI, key pair and instance type validation on, as in the peer's script.
# Env: REPS=3 TF_PARALLELISM=10 (Terraform's default) PORT=5152 PEER=../shared/peers/terraform
#      OUT=bench/provision/results/<stamp> (tables and logs)  SCRATCH=/tmp/instactl-bench-provision
#      (Terraform's work directories and moto logs)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=bench/provision
REPS="${REPS:-3}"
TF_PARALLELISM="${TF_PARALLELISM:-10}"
PORT="${PORT:-5152}"
PEER="${PEER:-$(cd .. && pwd)/shared/peers/terraform}"
STAMP="$(date +%Y%m%dT%H%M%S)"
OUT="${OUT:-$HERE/results/$STAMP}"
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
EP="http://127.0.0.1:$PORT"
MOTO_BIN="$(pyenv which moto_server 2>/dev/null || command -v moto_server)"
MOTO_PID=""

export AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE

log() { echo "[$(date +%H:%M:%S)] $*"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

stop_moto() {
	if [ -n "$MOTO_PID" ] && kill -0 "$MOTO_PID" 2>/dev/null; then
		kill "$MOTO_PID" 2>/dev/null || true
		wait "$MOTO_PID" 2>/dev/null || true
	fi
	MOTO_PID=""
}
trap stop_moto EXIT
trap 'stop_moto; exit 130' INT TERM

start_moto() { # dir
	env MOTO_ENABLE_AMI_VALIDATION=true MOTO_ENABLE_KEYPAIR_VALIDATION=true \
		MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true "$MOTO_BIN" -H 127.0.0.1 -p "$PORT" >"$1/moto.log" 2>&1 &
	MOTO_PID=$!
	for _ in $(seq 1 100); do
		curl -s -o /dev/null "$EP/moto-api/data.json" && return 0
		kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto exited, see $1/moto.log" >&2; exit 1; }
		sleep 0.2
	done
	echo "moto did not come up on $EP" >&2
	exit 1
}

requests() { grep -c 'HTTP/1\.[01]"' "$1" || true; }

# ic_phase rep phase dir want-exit command... : one instactl phase, appended to instactl.tsv.
ic_phase() {
	local rep=$1 phase=$2 d=$3 want=$4
	shift 4
	local l0 t0 t1 rc la0
	l0=$(requests "$d/moto.log") la0=$(load1) t0=$(date +%s.%N)
	rc=0
	"$@" >"$d/$phase.out" 2>"$d/$phase.err" || rc=$?
	t1=$(date +%s.%N)
	local n=$(($(requests "$d/moto.log") - l0))
	printf 'instactl\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\n' "$rep" "$phase" "$(echo "$t1 - $t0" | bc)" "$n" "$rc" "$la0" "$(load1)" >>"$OUT/phases.tsv"
	log "  instactl rep=$rep $phase: $(echo "$t1 - $t0" | bc | cut -c1-5)s requests=$n rc=$rc"
	[ "$rc" = "$want" ] || { echo "instactl $phase exited $rc, want $want; see $d/$phase.err" >&2; exit 1; }
}

hosts() { # stack file -> number of live hosts instactl's inventory sees (not counted: after the phase)
	/tmp/instactl-bench-$$ inventory --stack "$1" -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["hosts"]))'
}

run_instactl() { # rep
	local rep=$1 d="$OUT/instactl-r$1" bin=/tmp/instactl-bench-$$
	mkdir -p "$d"
	ssh-keygen -q -t ed25519 -N "" -C ig-admin -f "$d/id_ed25519"
	sed -e "s#key: KEY#key: $d/id_ed25519#" "$HERE/ig.yaml" >"$d/n25.yaml"
	sed -e 's/count: 25/count: 30/' "$d/n25.yaml" >"$d/n30.yaml"
	start_moto "$d"
	export AWS_ENDPOINT_URL="$EP"
	ic_phase "$rep" apply_create "$d" 0 "$bin" apply --yes --stack "$d/n25.yaml"
	ic_phase "$rep" plan_noop "$d" 0 "$bin" plan --detailed-exitcode --stack "$d/n25.yaml"
	[ "$(hosts "$d/n25.yaml")" = 30 ] || { echo "instactl: want 30 hosts after create" >&2; exit 1; }
	ic_phase "$rep" apply_scale "$d" 0 "$bin" apply --yes --stack "$d/n30.yaml"
	[ "$(hosts "$d/n30.yaml")" = 35 ] || { echo "instactl: want 35 hosts after scale" >&2; exit 1; }
	ic_phase "$rep" destroy "$d" 0 "$bin" destroy --yes --stack "$d/n30.yaml"
	[ "$(hosts "$d/n30.yaml")" = 0 ] || { echo "instactl: want 0 hosts after destroy" >&2; exit 1; }
	unset AWS_ENDPOINT_URL
	stop_moto
	rm -f "$d/id_ed25519" # a throwaway key; only its public half is kept
}

run_terraform() { # rep
	local rep=$1
	RESULTS_DIR="$OUT/terraform-r$rep" SCRATCH="${SCRATCH:-/tmp/instactl-bench-provision}/$STAMP/terraform-r$rep" REPS=1 PARALLELISM="$TF_PARALLELISM" \
		VERIFY="${TF_VERIFY:-0}" RECORD=0 bash "$PEER/run.sh" "$PORT" >"$OUT/terraform-r$rep.log" 2>&1 ||
		{ echo "terraform run failed, see $OUT/terraform-r$rep.log" >&2; exit 1; }
	python3 - "$OUT/terraform-r$rep/phases.csv" "$rep" >>"$OUT/phases.tsv" <<'PY'
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    if r["phase"] != "init":
        print("\t".join(["terraform", sys.argv[2], r["phase"], r["wall_s"], r["requests"], r["rc"], r["load1m_start"], r["load1m_end"]]))
PY
	grep -E 'apply_create|plan_noop|apply_scale|destroy' "$OUT/terraform-r$rep.log" | grep requests= | sed 's/^/  terraform /' || true
}

go build -o "/tmp/instactl-bench-$$" ./cmd/instactl
trap 'stop_moto; rm -f /tmp/instactl-bench-$$' EXIT
{
	echo "date: $(date -Is)"
	echo "host: $(uname -srm), $(nproc) cores"
	echo "instactl: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo '+uncommitted changes')"
	echo "terraform: $(TF_CLI_CONFIG_FILE="$PEER/terraformrc" terraform version | head -1), parallelism $TF_PARALLELISM"
	echo "moto: $(python3 -c 'import moto; print(moto.__version__)')"
	echo "reps: $REPS"
	echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/env.txt"
printf 'tool\trep\tphase\twall_s\trequests\trc\tload1m_start\tload1m_end\n' >"$OUT/phases.tsv"

for rep in $(seq 1 "$REPS"); do
	# alternate which tool goes first, so that neither always meets the same background load
	if [ $((rep % 2)) = 1 ]; then
		log "rep $rep: terraform"; run_terraform "$rep"; log "rep $rep: instactl"; run_instactl "$rep"
	else
		log "rep $rep: instactl"; run_instactl "$rep"; log "rep $rep: terraform"; run_terraform "$rep"
	fi
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"

python3 - "$OUT/phases.tsv" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(tool, phase, key):
    v = [float(r[key]) for r in rows if r["tool"] == tool and r["phase"] == phase]
    return statistics.median(v), min(v), max(v), len(v)
print("| phase | Terraform wall s med (min-max) | instactl wall s med (min-max) | speed-up (medians) | Terraform requests | instactl requests | instactl/Terraform requests | load1m at phase starts (min-max) |")
print("|---|---|---|---|---|---|---|---|")
for ph in ["apply_create", "plan_noop", "apply_scale", "destroy"]:
    tw, ic = med("terraform", ph, "wall_s"), med("instactl", ph, "wall_s")
    tr, ir = med("terraform", ph, "requests"), med("instactl", ph, "requests")
    loads = [float(r["load1m_start"]) for r in rows if r["phase"] == ph]
    rq = lambda m: f"{m[0]:.0f}" if m[1] == m[2] else f"{m[0]:.0f} ({m[1]:.0f}-{m[2]:.0f})"
    print(f"| {ph} | {tw[0]:.1f} ({tw[1]:.1f}-{tw[2]:.1f}) | {ic[0]:.2f} ({ic[1]:.2f}-{ic[2]:.2f}) | {tw[0]/ic[0]:.0f}x | "
          f"{rq(tr)} | {rq(ir)} | {ir[0]/tr[0]:.2f} | {min(loads):.1f}-{max(loads):.1f} |")
print(f"\n{len([r for r in rows if r['tool']=='terraform'])//4} Terraform and {len([r for r in rows if r['tool']=='instactl'])//4} instactl repetitions; raw rows in phases.tsv.")
PY
echo "results: $OUT"
