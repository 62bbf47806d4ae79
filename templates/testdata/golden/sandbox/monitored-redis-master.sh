#!/bin/bash
# instactl bootstrap for redis-0: role redis (primary), stack dev, sandbox flavour.
# Rendered by instactl (`instactl render redis`); do not edit on the host.
# Idempotent: every step checks before it changes anything, so a failed run can simply be re-run.
# Ends by writing /var/lib/instagram/bootstrap.done, or bootstrap.failed (exit status, line, command).
set -euo pipefail
set -o errtrace
umask 022
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
cd /

readonly DONE=/var/lib/instagram/bootstrap.done FAILED=/var/lib/instagram/bootstrap.failed
# shellcheck disable=SC2034 # not every role uses every one
readonly HOST_NAME=redis-0 ADDRESS=127.0.77.1 PORT=6379

log() { printf '%s %s: %s\n' "$(date -u +%H:%M:%S)" "$HOST_NAME" "$*"; }

# die records a failure the script itself detected (the ERR trap records the others).
die() {
	log "ERROR: $*"
	printf 'line %s: %s\n' "${BASH_LINENO[0]}" "$*" >"$FAILED"
	exit 1
}

on_error() {
	local rc=$1 line=$2 cmd=$3
	# Keep the first failure: a failing subshell also fails the line that ran it.
	if [ ! -e "$FAILED" ]; then
		printf 'exit %s at line %s: %s\n' "$rc" "$line" "$cmd" >"$FAILED"
	fi
	log "FAILED: exit $rc at line $line: $cmd"
}

# write_file PATH MODE OWNER: install stdin at PATH atomically.
write_file() {
	local path=$1 mode=$2 owner=$3 tmp
	mkdir -p "$(dirname "$path")"
	tmp=$(mktemp "$path.XXXXXX")
	cat >"$tmp"
	chmod "$mode" "$tmp"
	chown "$owner" "$tmp"
	mv -f "$tmp" "$path"
}

# wait_for WHAT SECONDS COMMAND...: run COMMAND until it succeeds, at most SECONDS.
wait_for() {
	local what=$1 limit=$2 deadline
	shift 2
	deadline=$((SECONDS + limit))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			die "$what not ready after ${limit}s"
		fi
		sleep 0.5
	done
	log "$what is ready"
}

mkdir -p /var/lib/instagram /var/log/instagram /etc/instagram/services /run/instagram
# One bootstrap at a time; fd 9 is closed for every service started below.
exec 9>/var/lib/instagram/bootstrap.lock
if ! flock -n 9; then
	log "another bootstrap is running on this host; not starting a second one"
	exit 75
fi
rm -f "$DONE" "$FAILED"
trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR
log "bootstrap of $HOST_NAME (redis, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='dev'
INSTACTL_ROLE='redis'
INSTACTL_INDEX=0
INSTACTL_HOST='redis-0'
INSTACTL_ADDRESS='127.0.77.1'
INSTACTL_SERVICE_MANAGER='sandbox'
INSTACTL_EOF

# ---- service supervisor (no systemd on sandbox hosts) ----
readonly SVC=/opt/instagram/bin/instactl-svc
write_file "$SVC" 0755 root:root <<'INSTACTL_EOF'
#!/bin/bash
# instactl-svc: the service manager of sandbox hosts, which have no systemd.
# Usage: instactl-svc start|stop|restart|status NAME
# NAME is defined by /etc/instagram/services/NAME.env (SVC_COMMAND array, SVC_USER, SVC_DIR,
# SVC_ENV_FILE, SVC_RUNTIME_DIR, SVC_PIDFILE, SVC_LOG, SVC_STOP_SIGNAL, SVC_STOP_TIMEOUT).
# start daemonizes in a new session (it outlives the SSH session that ran it) and is a no-op
# when the service runs; stop sends SVC_STOP_SIGNAL, waits SVC_STOP_TIMEOUT seconds, then
# SIGKILL; status exits 0 only when the recorded pid is alive (3 when it is not).
# Rendered by instactl.
set -euo pipefail

usage() {
	echo "usage: instactl-svc start|stop|restart|status NAME" >&2
	exit 2
}
[ $# -eq 2 ] || usage
action=$1 name=$2
case $name in
'' | *[!A-Za-z0-9_.-]*) usage ;;
esac
conf=${INSTACTL_SVC_DIR:-/etc/instagram/services}/$name.env
if [ ! -r "$conf" ]; then
	echo "instactl-svc: no service $name ($conf is missing)" >&2
	exit 5
fi

SVC_COMMAND=()
SVC_USER=root SVC_DIR=/ SVC_ENV_FILE='' SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/$name.pid SVC_LOG=/var/log/instagram/$name.log
SVC_STOP_SIGNAL=TERM SVC_STOP_TIMEOUT=30
# shellcheck source=/dev/null
. "$conf"
[ ${#SVC_COMMAND[@]} -gt 0 ] || {
	echo "instactl-svc: $conf sets no SVC_COMMAND" >&2
	exit 6
}

# alive PID: the process exists and is not a zombie waiting for a reaper.
alive() {
	local stat
	kill -0 "$1" 2>/dev/null || return 1
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[ "${stat:0:1}" != Z ]
}

# running_pid prints the service's pid when it is alive.
running_pid() {
	local pid
	[ -s "$SVC_PIDFILE" ] || return 1
	pid=$(<"$SVC_PIDFILE")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	alive "$pid" || return 1
	echo "$pid"
}

start() {
	local pid group home
	if pid=$(running_pid); then
		echo "$name is running (pid $pid)"
		return 0
	fi
	mkdir -p "$(dirname "$SVC_PIDFILE")" "$(dirname "$SVC_LOG")"
	rm -f "$SVC_PIDFILE"
	group=$(id -gn "$SVC_USER")
	home=$(getent passwd "$SVC_USER" | cut -d: -f6)
	if [ -n "$SVC_RUNTIME_DIR" ]; then
		install -d -o "$SVC_USER" -g "$group" -m 2775 "$SVC_RUNTIME_DIR"
	fi
	touch "$SVC_LOG"
	chown "$SVC_USER:$group" "$SVC_LOG"
	local -a launch=(env HOME="$home" USER="$SVC_USER" LOGNAME="$SVC_USER")
	if [ "$SVC_USER" != root ]; then
		# setpriv execs in place (runuser would fork), so the recorded pid is the service's.
		launch=(setpriv --reuid="$SVC_USER" --regid="$group" --init-groups -- "${launch[@]}")
	fi
	# The launcher records its own pid, then becomes the service: new session, no terminal,
	# stdin from /dev/null, output appended to the log, inherited fd 9 (bootstrap lock) closed.
	# shellcheck disable=SC2016 # expanded by the launcher shell
	setsid bash -c 'echo $$ >"$1" && cd "$2" || exit 1
		if [ -n "$3" ]; then set -a && . "$3" && set +a || exit 1; fi
		shift 3 && exec "$@"' instactl-svc-launch "$SVC_PIDFILE" "$SVC_DIR" "$SVC_ENV_FILE" \
		"${launch[@]}" "${SVC_COMMAND[@]}" </dev/null >>"$SVC_LOG" 2>&1 9>&- &
	for _ in $(seq 50); do
		[ -s "$SVC_PIDFILE" ] && break
		sleep 0.1
	done
	# A service that dies at once (bad config, port taken) is reported here, not later.
	sleep 0.5
	if pid=$(running_pid); then
		echo "$name started (pid $pid)"
		return 0
	fi
	echo "instactl-svc: $name exited during start; last lines of $SVC_LOG:" >&2
	tail -n 20 "$SVC_LOG" >&2
	return 1
}

stop() {
	local pid deadline
	if ! pid=$(running_pid); then
		rm -f "$SVC_PIDFILE"
		echo "$name is stopped"
		return 0
	fi
	kill -s "$SVC_STOP_SIGNAL" "$pid" 2>/dev/null || true
	deadline=$((SECONDS + SVC_STOP_TIMEOUT))
	while alive "$pid"; do
		if ((SECONDS >= deadline)); then
			echo "instactl-svc: $name (pid $pid) did not stop within ${SVC_STOP_TIMEOUT}s; killing it" >&2
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
			break
		fi
		sleep 0.1
	done
	rm -f "$SVC_PIDFILE"
	echo "$name stopped"
}

status() {
	local pid
	if pid=$(running_pid); then
		echo "$name is running (pid $pid)"
		return 0
	fi
	echo "$name is not running"
	return 3
}

case $action in
start) start ;;
stop) stop ;;
restart) stop && start ;;
status) status ;;
*) usage ;;
esac
INSTACTL_EOF

# ---- data volume: sdf under /run/instactl/dev, xfs at /var/lib/redis ----
readonly DEVICE_DIR=/run/instactl/dev MOUNT=/var/lib/redis
DEVICES=(sdf)

# device_path NAME: the block device behind DEVICE_DIR/NAME (or its Xen name, xvdf for sdf).
device_path() {
	local p
	for p in "$DEVICE_DIR/$1" "$DEVICE_DIR/xvd${1#sd}"; do
		if [ -b "$p" ]; then
			readlink -f "$p"
			return 0
		fi
	done
	return 1
}

devs=()
deadline=$((SECONDS + 300))
for name in "${DEVICES[@]}"; do
	until dev=$(device_path "$name"); do
		if ((SECONDS >= deadline)); then
			die "device $DEVICE_DIR/$name did not appear within 300s"
		fi
		sleep 1
	done
	log "device $name is $dev"
	devs+=("$dev")
done
DATA_DEV=${devs[0]}

# Format only a device that holds nothing; anything else is somebody's data.
probe_rc=0
probe=$(blkid -p -o export "$DATA_DEV") || probe_rc=$?
case $probe_rc in
0 | 2) ;;
*) die "blkid $DATA_DEV failed with exit $probe_rc" ;;
esac
fstype=$(sed -n 's/^TYPE=//p' <<<"$probe")
if grep -q '^PTTYPE=' <<<"$probe"; then
	die "$DATA_DEV has a partition table; refusing to format it"
fi
case $fstype in
"")
	log "mkfs.xfs $DATA_DEV"
	mkfs.xfs -q "$DATA_DEV"
	;;
xfs) log "$DATA_DEV already holds xfs" ;;
*) die "$DATA_DEV holds $fstype, not xfs; refusing to format it (wipe it by hand if it is unused)" ;;
esac

mkdir -p "$MOUNT"
if findmnt -rn -S "$DATA_DEV" -M "$MOUNT" >/dev/null; then
	log "$DATA_DEV already mounted at $MOUNT"
else
	mount -t xfs -o noatime "$DATA_DEV" "$MOUNT"
	log "mounted $DATA_DEV at $MOUNT"
fi
# The sandbox mounts what this lists when a stopped host starts, as EC2 mounts /etc/fstab.
if ! grep -qs " $MOUNT " /etc/instagram/fstab; then
	printf '%s %s xfs noatime 0 0\n' "$DATA_DEV" "$MOUNT" >>/etc/instagram/fstab
	log "added $MOUNT to /etc/instagram/fstab"
fi

# ---- redis: master ----
install -d -o root -g root -m 0750 /var/lib/redis
# Owned by the server's user: a switchover's CONFIG REWRITE records the new role in it, so a
# restart keeps the role instead of returning to the one bootstrap wrote.
write_file /etc/instagram/redis.conf 0640 root:root <<'INSTACTL_EOF'
# redis.conf for redis-0 (master), rendered by instactl.
bind 127.0.77.1
port 6379
# Reachable only on the private address; security groups decide who gets there.
protected-mode no
daemonize no
supervised no
logfile ""
dir /var/lib/redis
dbfilename dump.rdb
# Backups snapshot the replica's RDB after BGSAVE; no AOF.
appendonly no
save 900 1
save 300 10
save 60 10000
stop-writes-on-bgsave-error yes
rdbchecksum yes
tcp-keepalive 300
maxclients 10000
# A master that lost its replica stops taking writes, so a fenced old master cannot diverge.
# Set on the replica too: either may become master.
min-replicas-to-write 1
min-replicas-max-lag 10
# Every member announces its own address, the master too (a switchover makes it a replica): on
# the sandbox every connection comes from 127.0.0.1, and the master's INFO must name its
# replicas for status, backups and switchovers.
replica-announce-ip 127.0.77.1
# A replica's full sync starts at once (Redis waits 5 s by default for more replicas to share
# it): the master refuses writes until a replica is in sync.
repl-diskless-sync-delay 0
INSTACTL_EOF

write_file /etc/instagram/services/redis.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of redis on redis-0: Redis master.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/usr/bin/redis-server /etc/instagram/redis.conf)
SVC_USER=root
SVC_DIR=/var/lib/redis
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/redis.pid
SVC_LOG=/var/log/instagram/redis.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=60
INSTACTL_EOF
"$SVC" start redis

redis_ping() { [ "$(redis-cli -h "$ADDRESS" -p "$PORT" ping 2>/dev/null)" = PONG ]; }
wait_for "redis on $ADDRESS:$PORT" 120 redis_ping

# ---- exporters (the stack has a monitor role): node_exporter, redis_exporter on $ADDRESS ----
# Tools drop NAME.prom files here (through a rename); node_exporter serves them with the host.
install -d -m 0755 /var/lib/instagram/textfile
# node_exporter reads the mount table of pid 1, which here is the machine's: its /proc is a copy
# of links to the machine's with 1 -> /proc/self, so it sees this host's volumes.
install -d -m 0755 /var/lib/instagram/node-exporter/procfs
for entry in /proc/*; do
	name=${entry#/proc/}
	case $name in
	*[!0-9]*) ln -sfn "$entry" /var/lib/instagram/node-exporter/procfs/"$name" ;;
	esac
done
ln -sfn /proc/self /var/lib/instagram/node-exporter/procfs/1

write_file /etc/instagram/services/node-exporter.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of node-exporter on redis-0: node_exporter.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/usr/bin/prometheus-node-exporter --web.listen-address=127.0.77.1:9100 --collector.textfile.directory=/var/lib/instagram/textfile --path.procfs=/var/lib/instagram/node-exporter/procfs --no-collector.systemd '--collector.filesystem.fs-types-exclude=^([^x].*|x([^f].*)?|xf([^s].*)?|xfs.+)$')
SVC_USER=root
SVC_DIR=/
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/node-exporter.pid
SVC_LOG=/var/log/instagram/node-exporter.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=10
INSTACTL_EOF
"$SVC" start node-exporter

write_file /etc/instagram/services/redis-exporter.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of redis-exporter on redis-0: redis_exporter.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/usr/bin/prometheus-redis-exporter --web.listen-address=127.0.77.1:9121 -redis.addr=redis://127.0.77.1:6379)
SVC_USER=root
SVC_DIR=/
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/redis-exporter.pid
SVC_LOG=/var/log/instagram/redis-exporter.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=10
INSTACTL_EOF
"$SVC" start redis-exporter

exporter_ping() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
wait_for "node_exporter on $ADDRESS:9100" 60 exporter_ping 9100

# What a boot of this host starts, in order: the sandbox runs it when a stopped host starts, as
# systemd starts the enabled units on EC2. A service that refuses to start (the boot guard of
# a fenced old primary) is logged and the others still start.
write_file /var/lib/instagram/rc.local 0755 root:root <<'INSTACTL_EOF'
#!/bin/bash
rc=0
/opt/instagram/bin/instactl-svc start redis || { echo "rc.local: redis did not start" >&2; rc=1; }
/opt/instagram/bin/instactl-svc start node-exporter || { echo "rc.local: node-exporter did not start" >&2; rc=1; }
/opt/instagram/bin/instactl-svc start redis-exporter || { echo "rc.local: redis-exporter did not start" >&2; rc=1; }
echo "rc.local: done (exit $rc)" >&2
exit 0
INSTACTL_EOF

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of redis-0 done"
