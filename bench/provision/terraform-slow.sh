#!/usr/bin/env bash
# instactl against Terraform under the slow-state fault profile (issue 18, "Speed"): the 25-app stack
# of bench/provision/ig.yaml and of the Terraform peer (/work/shared/peers/terraform/main.tf, N=25),
# both through bench/provision/faultproxy -profile slow in front of a fresh moto_server (instances
# pending, volumes creating/attaching, instances shutting-down, ELB targets OutOfService for 3 polls
# and, with -slow-for, at least SLOW_FOR seconds each: a tool polling faster does not get through
# a slow state sooner).
# Interleaved for ROUNDS rounds: instactl create, no-op plan, destroy; then Terraform apply, no-op
# plan, destroy (parallelism 10, Terraform's default). Each tool gets its own fresh moto + proxy.
# Per phase: wall seconds, requests (moto access-log lines: the slow profile answers nothing itself,
# so every request through the proxy reaches moto), load average before the phase, and requests
# per action (the proxy's -log, cut per phase: <tool dir>/<phase>.actions).
#
#   bench/provision/terraform-slow.sh
# Env: ROUNDS=2 MOTO_PORT=15150 PROXY=127.0.150.1:18150 TF_PEER=/work/shared/peers/terraform SLOW_FOR=4s
#      OUT=bench/provision/results/tfslow-<stamp>
# The peer directory is only read: its .tf files are copied into a temp dir with the endpoint set
# to the proxy. Each fresh moto gets one read call per service first (warm_moto), outside the
# phases.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=bench/provision
ROUNDS="${ROUNDS:-2}"
MOTO_PORT="${MOTO_PORT:-15150}"
PROXY="${PROXY:-127.0.150.1:18150}"
TF_PEER="${TF_PEER:-/work/shared/peers/terraform}"
SLOW_FOR="${SLOW_FOR:-4s}"
STAMP="$(date +%Y%m%dT%H%M%S)"
OUT="${OUT:-$HERE/results/tfslow-$STAMP}"
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
MOTO="http://127.0.0.1:$MOTO_PORT"
MOTO_BIN="$(pyenv which moto_server 2>/dev/null || command -v moto_server)"
TMP="$(mktemp -d /tmp/tfslow-XXXXXX)"
BIN="$TMP/instactl"
PROXY_BIN="$TMP/faultproxy"
MOTO_PID="" PROXY_PID=""

export AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export TF_CLI_CONFIG_FILE="$TF_PEER/terraformrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
unset AWS_PROFILE AWS_CA_BUNDLE AWS_ENDPOINT_URL TF_LOG TF_LOG_PATH TF_DATA_DIR TF_PLUGIN_CACHE_DIR

log() { echo "[$(date +%H:%M:%S)] $*"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

stop() { # pid variable name
	local pid=${!1}
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	eval "$1="
}
cleanup() { stop PROXY_PID; stop MOTO_PID; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

for f in main.tf variables.tf terraformrc; do
	[ -f "$TF_PEER/$f" ] || { echo "terraform-slow.sh: $TF_PEER/$f missing (set TF_PEER to the Terraform peer's directory)" >&2; exit 1; }
done
command -v terraform >/dev/null || { echo "terraform-slow.sh: terraform not on PATH" >&2; exit 1; }

{
	echo "date: $(date -Is)"
	echo "host: $(uname -srm), $(nproc) cores"
	echo "instactl: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo '+uncommitted changes')"
	echo "terraform: $(terraform version 2>/dev/null | head -1), provider $(ls /opt/tf-plugins/registry.terraform.io/hashicorp/aws 2>/dev/null | paste -sd,)"
	echo "moto: $(python3 -c 'import moto; print(moto.__version__)')"
	echo "profile: slow (seed 1), slow states at least $SLOW_FOR; rounds: $ROUNDS"
	echo "loadavg at start: $(loadavg)"
} | tee "$OUT/env.txt"

start_moto() { # log
	"$MOTO_BIN" -H 127.0.0.1 -p "$MOTO_PORT" >"$1" 2>&1 &
	MOTO_PID=$!
	for _ in $(seq 1 150); do
		curl -s -o /dev/null "$MOTO/moto-api/data.json" && return 0
		kill -0 "$MOTO_PID" 2>/dev/null || break
		sleep 0.2
	done
	echo "moto did not come up on $MOTO, see $1" >&2
	exit 1
}

# warm_moto makes one read call per service straight to moto (not through the proxy, before any
# phase): moto loads a service's backend on its first request, which costs it 1-2 s for
# CloudFront. That is moto's, not the tools', and would land in whichever phase calls the service
# first (for instactl, the create's plan; Terraform's stack has no CloudFront).
warm_moto() {
	local c
	for c in "ec2 describe-key-pairs" "elb describe-load-balancers" "s3api list-buckets" "iam list-roles" \
		"cloudfront list-distributions" "route53 list-hosted-zones"; do
		# shellcheck disable=SC2086 # c is a service and a command
		aws --endpoint-url "$MOTO" $c >/dev/null 2>&1 || { echo "warm-up call aws $c failed against $MOTO" >&2; exit 1; }
	done
}

start_proxy() { # log
	"$PROXY_BIN" -target "$MOTO" -listen "$PROXY" -profile slow -seed 1 -slow-for "$SLOW_FOR" -log "$(dirname "$1")/requests.log" >"$1.url" 2>"$1" &
	PROXY_PID=$!
	for _ in $(seq 1 100); do
		[ -s "$1.url" ] && return 0
		sleep 0.1
	done
	echo "faultproxy did not start, see $1" >&2
	exit 1
}

requests() { grep -c 'HTTP/1\.[01]"' "$1" || true; }

# phase round tool name dir want-exit command...: one timed phase, appended to phases.tsv.
phase() {
	local round=$1 tool=$2 name=$3 d=$4 want=$5
	shift 5
	local l0 t0 t1 rc la0 n w r0
	touch "$d/requests.log"
	r0=$(wc -l <"$d/requests.log")
	la0=$(loadavg) l0=$(requests "$d/moto.log") t0=$(date +%s.%N)
	rc=0
	"$@" >"$d/$name.out" 2>"$d/$name.err" || rc=$?
	t1=$(date +%s.%N)
	n=$(($(requests "$d/moto.log") - l0))
	w=$(printf '%.2f' "$(echo "$t1 - $t0" | bc)")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$tool" "$name" "$w" "$n" "$rc" "$la0" >>"$OUT/phases.tsv"
	# Requests per action in this phase (describes by id: "ids=N" is how many ids one call named).
	tail -n +"$((r0 + 1))" "$d/requests.log" | awk '{ a = $2
			if ($3 ~ /^ids=/) a = a " by-id"
			else if ($3 ~ /^\//) { p = $3; gsub(/\/[A-Z0-9][A-Z0-9][A-Z0-9][A-Z0-9][A-Z0-9][A-Z0-9][A-Z0-9][A-Z0-9][A-Z0-9][A-Z0-9]+/, "/ID", p); a = a " " p }
			c[a]++ }
		END { for (k in c) printf "%d\t%s\n", c[k], k }' |
		sort -rn >"$d/$name.actions"
	log "  round $round $tool $name: ${w}s requests=$n rc=$rc (load before: $la0)"
	[ "$rc" = "$want" ] || { echo "$tool $name exited $rc, want $want; see $d/$name.err" >&2; exit 1; }
}

go build -o "$BIN" ./cmd/instactl
go build -o "$PROXY_BIN" ./$HERE/faultproxy
printf 'round\ttool\tphase\twall_s\trequests\trc\tloadavg_before\n' >"$OUT/phases.tsv"
ssh-keygen -q -t rsa -b 2048 -N "" -C ig-admin -f "$TMP/ig_admin" # a throwaway key for both tools

for r in $(seq 1 "$ROUNDS"); do
	log "round $r: instactl, 25 apps, slow profile"
	d="$OUT/r$r-instactl" && mkdir -p "$d"
	sed -e "s#key: KEY#key: $TMP/ig_admin#" "$HERE/ig.yaml" >"$d/n25.yaml"
	start_moto "$d/moto.log"
	warm_moto
	start_proxy "$d/proxy.log"
	export AWS_ENDPOINT_URL="http://$PROXY"
	phase "$r" instactl create "$d" 0 "$BIN" apply --yes --stack "$d/n25.yaml" -v
	phase "$r" instactl noop-plan "$d" 0 "$BIN" plan --detailed-exitcode --stack "$d/n25.yaml" -v
	phase "$r" instactl destroy "$d" 0 "$BIN" destroy --yes --stack "$d/n25.yaml" -v
	unset AWS_ENDPOINT_URL
	stop PROXY_PID
	stop MOTO_PID

	log "round $r: Terraform, 25 apps, slow profile, parallelism 10"
	d="$OUT/r$r-terraform" && mkdir -p "$d"
	w="$TMP/tf-r$r" && mkdir -p "$w"
	cp "$TF_PEER/main.tf" "$TF_PEER/variables.tf" "$w/"
	printf 'endpoint        = "http://%s"\npublic_key_path = "%s"\n' "$PROXY" "$TMP/ig_admin.pub" >"$w/terraform.tfvars"
	start_moto "$d/moto.log"
	warm_moto
	start_proxy "$d/proxy.log"
	phase "$r" terraform init "$d" 0 terraform -chdir="$w" init -input=false -no-color
	phase "$r" terraform create "$d" 0 terraform -chdir="$w" apply -auto-approve -input=false -no-color -parallelism=10
	phase "$r" terraform noop-plan "$d" 0 terraform -chdir="$w" plan -detailed-exitcode -input=false -no-color -parallelism=10
	phase "$r" terraform destroy "$d" 0 terraform -chdir="$w" destroy -auto-approve -input=false -no-color -parallelism=10
	stop PROXY_PID
	stop MOTO_PID
done

{
	echo
	echo "| round | tool | phase | wall s | requests | exit | loadavg before (1/5/15 min) |"
	echo "|---|---|---|---|---|---|---|"
	tail -n +2 "$OUT/phases.tsv" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}'
	echo
	echo "| phase | instactl wall s (median) | Terraform wall s (median) | Terraform/instactl | instactl requests | Terraform requests |"
	echo "|---|---|---|---|---|---|"
	tail -n +2 "$OUT/phases.tsv" | awk -F'\t' '
		function median(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1]+0 > a[j]+0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
			return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
		$3 != "init" { w[$2 "," $3] = w[$2 "," $3] " " $4; q[$2 "," $3] = q[$2 "," $3] (q[$2 "," $3] == "" ? "" : ", ") $5; seen[$3] = 1 }
		END { split("create noop-plan destroy", ph, " ")
			for (i = 1; i <= 3; i++) { p = ph[i]; if (!(p in seen)) continue
				mi = median(w["instactl," p]); mt = median(w["terraform," p])
				printf "| %s | %.2f | %.2f | %.1fx | %s | %s |\n", p, mi, mt, (mi > 0 ? mt / mi : 0), q["instactl," p], q["terraform," p] } }'
	echo
	for l in "$OUT"/*/proxy.log; do echo "$(basename "$(dirname "$l")"):"; sed 's/^/    /' "$l"; done
	echo
	echo "Requests per action and phase (round 1; describes by id counted per call):"
	for t in instactl terraform; do
		for p in create noop-plan destroy; do
			f="$OUT/r1-$t/$p.actions"
			[ -f "$f" ] && echo "  $t $p: $(awk -F'\t' '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }' "$f")"
		done
	done
} | tee "$OUT/summary.md"
echo "loadavg at end: $(loadavg)" | tee -a "$OUT/env.txt"
echo "results: $OUT"
