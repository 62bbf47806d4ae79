#!/usr/bin/env bash
# Interleaved rounds of instactl deploy (S3 staging through moto, then SSH staging), the raw
# `ssh cat` limit (e1) and Fabric (b, when python3-fabric is installed) on the peers' N local
# sshd hosts, with the load average beside every round. Usage: bench/deploy/run.sh N [ROUNDS].
# PERSIST=false runs instactl without the ssh keeper (deploy.ssh_persist: 0s).
# Root only; loopback only. PEERS: the peers' deploy directory (default ../shared/peers/deploy
# beside the checkout, else /work/shared/peers/deploy).
#
# The peers' scripts are copied to a temporary directory and pointed at $NET.(10+i) (default
# 127.0.153.x, this benchmark's range) with their state in $BENCH, so the benchmark does not
# collide with anything on 127.0.0.x. moto_server runs on 127.0.0.1:$MOTO_PORT.
set -euo pipefail
N=${1:-10} ROUNDS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS=${PEERS:-$HERE/../../../shared/peers/deploy}
[[ -d $PEERS ]] || PEERS=/work/shared/peers/deploy
[[ -x $PEERS/hosts.sh ]] || { echo "no peers' hosts.sh in $PEERS: set PEERS" >&2; exit 1; }
NET=${NET:-127.0.153}
MOTO_PORT=${MOTO_PORT:-15153}
export BENCH=${BENCH:-/tmp/deploybench-153}
WORK=$(mktemp -d)
BIN=$WORK/deploybench
(cd "$HERE/../.." && go build -o "$BIN" ./bench/deploy)
cp -r "$PEERS" "$WORK/peers"
P=$WORK/peers
sed -i "s/127\.0\.0\.\$((10 + \$1))/$NET.\$((10 + \$1))/" "$P/common.sh"
sed -i "s/\"127\.0\.0\.%d\"/\"$NET.%d\"/" "$P/tool_b_fabric.py"
sed -i "s/(127\.0\.0\.11\.\./($NET.11../" "$P/hosts.sh"
if ! grep -q "$NET" "$P/common.sh" || ! grep -q "$NET" "$P/tool_b_fabric.py"; then echo "could not point the peers at $NET" >&2; exit 1; fi
ulimit -n "$(ulimit -Hn)"

command -v moto_server >/dev/null || { echo "moto_server not found (python3-moto, or pip install 'moto[server]')" >&2; exit 1; }
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
cleanup() {
    "$P/hosts.sh" down >/dev/null || true
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break; sleep 0.1; done
"$P/hosts.sh" up "$N"

t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; return 1; }; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN {printf "%.2f", e - s}'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
field() { tr '\t' '\n' <<<"$1" | sed -n "$2p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
# instactl METHOD: one deploybench run (deploy, the unchanged redeploy through the keeper the deploy started, then a cold one with a new keeper); sets dep, red and cold.
instactl() {
    local args=() out
    [[ $1 == s3 ]] && args=(-s3 "http://127.0.0.1:$MOTO_PORT")
    "$P/hosts.sh" clean "$N" >/dev/null
    out=$("$BIN" -n "$N" -net "$NET" -bench "$BENCH" -persist="${PERSIST:-true}" "${args[@]}")
    dep=$(grep '^deploy' <<<"$out") red=$(grep '^redeploy' <<<"$out") cold=$(grep '^cold-redeploy' <<<"$out" || true)
    if [[ $(field "$dep" 9) != "result ok" || $(field "$dep" "$([[ $1 == s3 ]] && echo 6 || echo 7)") != "via-$1 $N" || $(field "$red" 9) != "result ok" || ( ${PERSIST:-true} == true && $(field "$cold" 9) != "result ok" ) ]]; then
        echo "instactl ($1) round $r did not deploy to every host via $1: $out" >&2
        exit 1
    fi
}
secs() { field "$1" 3 | tr -d s; }

# Fabric runs when the peers have it and Debian's python3 can import it (python3-fabric).
SYS_PY=$(sed -n 's/^SYS_PY=\([^ ]*\).*/\1/p' "$P/common.sh") SYS_PY=${SYS_PY:-/usr/bin/python3}
FABRIC=
[[ -x $P/tool_b_fabric.sh ]] && "$SYS_PY" -c 'import fabric' 2>/dev/null && FABRIC=yes

echo "N=$N hosts at $NET.11-$NET.$((10 + N)), $(nproc) CPUs, artifact $(stat -c %s "$BENCH/artifact/app") bytes, moto $(pip show moto 2>/dev/null | sed -n 's/^Version: //p')${FABRIC:+, Fabric $("$SYS_PY" -c 'import fabric; print(fabric.__version__)')}"
echo "instactl: staging + activation (s3: through moto, the object deleted first; ssh: streamed to every host); e1: the raw limit, one 'ssh cat' per host; redeploy: unchanged, through the ssh keeper the deploy started (deploy.ssh_persist); load average 1/5/15 before each round"
H='%-5s  %-14s  %-11s  %-9s  %-9s  %-9s  %-9s  %-9s  %-11s  %-10s  %s\n'
printf "$H" round "load" "instactl-s3" "e1 raw" "s3/e1" "inst-ssh" "ssh/e1" fabric "fabric/s3" "redeploy" "sent from here: s3 deploy, ssh deploy, redeploy"
I=() S=() E=() F=() R=() C=()
for ((r = 1; r <= ROUNDS; r++)); do
    before=$(load)
    instactl s3
    inst=$(secs "$dep") redt=$(secs "$red") coldt=$([[ -n $cold ]] && secs "$cold" || echo -) sent3=$(field "$dep" 8 | sed 's/^sent //') sentr=$(field "$red" 8 | sed 's/^sent //')
    detail="s3 $(field "$dep" 4), $(field "$dep" 5)"
    "$P/hosts.sh" clean "$N" >/dev/null
    e1=$(t "$P/tool_e1_xargs_1session.sh" "$N")
    instactl ssh
    ssh=$(secs "$dep") sents=$(field "$dep" 8 | sed 's/^sent //')
    detail+="; ssh $(field "$dep" 4), $(field "$dep" 5)"
    fab=- fr=-
    if [[ -n $FABRIC ]]; then
        "$P/hosts.sh" clean "$N" >/dev/null
        fab=$(t "$P/tool_b_fabric.sh" "$N") fr=$(ratio "$fab" "$inst") F+=("$fab")
    fi
    floor=$("$BIN" -n "$N" -net "$NET" -bench "$BENCH" -dial-only | cut -f3)
    detail+="; cold redeploy (no keeper yet: it starts and dials every host) ${coldt}s; $N bare SSH connections (the floor under a cold redeploy) $floor"
    printf "$H" "$r" "$before" "${inst}s" "${e1}s" "$(ratio "$inst" "$e1")" "${ssh}s" "$(ratio "$ssh" "$e1")" "${fab}s" "$fr" "${redt}s" "$sent3, $sents, $sentr"
    echo "       $detail; load after the round $(load)"
    I+=("$inst") S+=("$ssh") E+=("$e1") R+=("$redt") C+=("$coldt")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
mi=$(median "${I[@]}") ms=$(median "${S[@]}") me=$(median "${E[@]}") mr=$(median "${R[@]}") mc=$(median "${C[@]}")
line="median of $ROUNDS at N=$N: instactl-s3 ${mi}s, e1 ${me}s ($(ratio "$mi" "$me")), instactl-ssh ${ms}s ($(ratio "$ms" "$me"))"
if [[ -n $FABRIC ]]; then mf=$(median "${F[@]}"); line+=", fabric ${mf}s (instactl-s3 $(ratio "$mf" "$mi") faster)"; fi
echo "$line; unchanged redeploy ${mr}s (through the keeper the deploy left), ${mc}s cold; load now $(load)"
