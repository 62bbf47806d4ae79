#!/bin/bash
# instactl bootstrap for pg-0: role pg (primary), stack dev, sandbox flavour.
# Rendered by instactl (`instactl render pg`); do not edit on the host.
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
readonly HOST_NAME=pg-0 ADDRESS=127.0.77.1 PORT=5432

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
log "bootstrap of $HOST_NAME (pg, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='dev'
INSTACTL_ROLE='pg'
INSTACTL_INDEX=0
INSTACTL_HOST='pg-0'
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

# ---- data volume: sdf under /run/instactl/dev, xfs at /var/lib/postgresql ----
readonly DEVICE_DIR=/run/instactl/dev MOUNT=/var/lib/postgresql
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

# ---- postgres 15: primary ----
readonly PGBIN=/usr/lib/postgresql/15/bin PGDATA=/var/lib/postgresql/15/main
APP_PASSWORD=''
REPLICATION_PASSWORD=''
as_postgres() { runuser -u postgres -- "$@"; }
pg_ready() { as_postgres "$PGBIN/pg_isready" -q -h /run/postgresql -p "$PORT"; }
chown postgres:postgres "$MOUNT"
install -d -o postgres -g postgres -m 0755 /var/lib/postgresql
install -d -o postgres -g postgres -m 0700 "$(dirname "$PGDATA")"
install -d -o postgres -g postgres -m 2775 /run/postgresql

if [ -s "$PGDATA/PG_VERSION" ]; then
	log "cluster $PGDATA exists"
elif [ -d "$PGDATA" ] && [ -n "$(ls -A "$PGDATA")" ]; then
	die "$PGDATA is not empty but holds no cluster; move it aside and re-run"
else
	log "initdb $PGDATA"
	as_postgres "$PGBIN/initdb" -D "$PGDATA" --data-checksums --encoding=UTF8 --no-locale \
		--username=postgres --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi

# Configuration is rewritten on every run: the rendered files are the truth.
write_file "$PGDATA/postgresql.conf" 0600 postgres:postgres <<'INSTACTL_EOF'
# postgresql.conf for pg-0 (primary), rendered by instactl.
# Settings not listed keep PostgreSQL's defaults. Primary and replicas share this file: a standby
# needs the same max_* settings as its primary. A replica's primary_conninfo lives in
# postgresql.auto.conf, written by pg_basebackup -R.
cluster_name = 'pg-0'
listen_addresses = '127.0.77.1'
port = 5432
unix_socket_directories = '/run/postgresql'
max_connections = 200
password_encryption = scram-sha-256

shared_buffers = 128MB
dynamic_shared_memory_type = posix

# Streaming replicas, and logical replication for online shard moves.
wal_level = logical
max_wal_senders = 16
max_replication_slots = 16
max_worker_processes = 16
max_logical_replication_workers = 8
# Start a new subscription's apply worker within a second, not the default 5 s: shard moves
# create subscriptions and wait for them.
wal_retrieve_retry_interval = 1s
max_sync_workers_per_subscription = 2
wal_keep_size = 64MB
# At most a quarter of the data volume between checkpoints (PostgreSQL's default 1 GB otherwise).
max_wal_size = 1024MB
hot_standby = on
hot_standby_feedback = on
# pg_rewind needs hint-bit changes in the WAL (initdb --data-checksums gives that too; both are
# on) to bring a failed old primary back as a standby.
wal_log_hints = on

# Logs go to stderr: the journal on AWS, /var/log/instagram/postgres.log on the sandbox.
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
datestyle = 'iso, mdy'
lc_messages = 'C'
default_text_search_config = 'pg_catalog.english'
INSTACTL_EOF
write_file "$PGDATA/pg_hba.conf" 0600 postgres:postgres <<'INSTACTL_EOF'
# pg_hba.conf for pg-0, rendered by instactl. First match wins.
# TYPE  DATABASE     USER        ADDRESS         METHOD
local   all          all                         peer
# Sandbox only: everything on loopback is trusted.
host    all          all         127.0.0.0/8     trust
host    replication  all         127.0.0.0/8     trust
host    replication  replicator  samenet         scram-sha-256
host    all          all         samenet         scram-sha-256
INSTACTL_EOF

# The boot guard: a cluster that would start as primary first asks the other members.
write_file /etc/instagram/pg-peers 0644 root:root <<'INSTACTL_EOF'
INSTACTL_EOF
write_file /opt/instagram/bin/instactl-pg-guard 0755 root:root <<'INSTACTL_EOF'
#!/bin/bash
# instactl-pg-guard: starts PostgreSQL only when that cannot make a second primary.
# Usage: instactl-pg-guard COMMAND... (the postgres command line; PGDATA is /var/lib/postgresql/15/main)
#
# A cluster with standby.signal starts: a standby never accepts writes. A cluster that would
# start as a primary first asks every other member of its replication group, listed in
# /etc/instagram/pg-peers ("host port" per line): when one of them is a primary that accepts writes, a
# failover promoted it while this host was down, so this one must not start as a primary
# again. It exits 1 with the command that brings it back as a standby (instactl rejoin).
# When no member answers, the whole group is starting (a cold start) and this host starts.
# Rendered by instactl.
set -euo pipefail

readonly PGDATA=/var/lib/postgresql/15/main PEERS=/etc/instagram/pg-peers PSQL=/usr/lib/postgresql/15/bin/psql
log() { echo "instactl-pg-guard: $*" >&2; }
if [ -r /etc/instagram/pgpass ]; then export PGPASSFILE=/etc/instagram/pgpass; fi

# A lock file left by a power cut names a pid that, once pids wrap, may be another process:
# PostgreSQL would take it for a live postmaster and refuse to start.
if [ -f "$PGDATA/postmaster.pid" ]; then
	lp=$(head -n 1 "$PGDATA/postmaster.pid")
	case $(tr '\0' ' ' <"/proc/$lp/cmdline" 2>/dev/null) in
	*postgres*) ;;
	*) log "removing the stale lock file of pid $lp" && rm -f "$PGDATA/postmaster.pid" ;;
	esac
fi
if [ -e "$PGDATA/standby.signal" ] || [ ! -s "$PEERS" ]; then
	exec "$@"
fi
while read -r host port; do
	[ -n "$host" ] || continue
	if "$PSQL" -X -At -c 'SELECT 1' \
		"host=$host port=$port dbname=postgres user=replicator connect_timeout=2 target_session_attrs=read-write" \
		>/dev/null 2>&1; then
		log "fenced: $host:$port is the primary of this group now, so pg-0 must not start as one"
		log "make pg-0 its standby: instactl rejoin pg-0"
		exit 1
	fi
done <"$PEERS"
exec "$@"
INSTACTL_EOF

write_file /etc/instagram/services/postgres.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of postgres on pg-0: PostgreSQL 15 /var/lib/postgresql/15/main.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/opt/instagram/bin/instactl-pg-guard /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main)
SVC_USER=postgres
SVC_DIR=/var/lib/postgresql
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=/run/postgresql
SVC_PIDFILE=/run/instagram/postgres.pid
SVC_LOG=/var/log/instagram/postgres.log
SVC_STOP_SIGNAL=INT
SVC_STOP_TIMEOUT=120
INSTACTL_EOF
"$SVC" start postgres

wait_for "postgres on $ADDRESS:$PORT" 300 pg_ready

# Roles and the app database; passwords are set on every run so a rotation is a re-run.
as_postgres "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -p "$PORT" -d postgres \
	-v app_password="$APP_PASSWORD" -v replication_password="$REPLICATION_PASSWORD" -v db=instagram <<'SQL'
SELECT 'CREATE ROLE replicator WITH LOGIN REPLICATION'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') \gexec
SELECT 'CREATE ROLE app WITH LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') \gexec
SELECT format('CREATE DATABASE %I OWNER app', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SELECT format('ALTER ROLE app PASSWORD %L', :'app_password') WHERE :'app_password' <> '' \gexec
SELECT format('ALTER ROLE replicator PASSWORD %L', :'replication_password') WHERE :'replication_password' <> '' \gexec
SQL
log "roles app, replicator and database instagram are in place"

# What a boot of this host starts, in order: the sandbox runs it when a stopped host starts, as
# systemd starts the enabled units on EC2. A service that refuses to start (the boot guard of
# a fenced old primary) is logged and the others still start.
write_file /var/lib/instagram/rc.local 0755 root:root <<'INSTACTL_EOF'
#!/bin/bash
rc=0
/opt/instagram/bin/instactl-svc start postgres || { echo "rc.local: postgres did not start" >&2; rc=1; }
echo "rc.local: done (exit $rc)" >&2
exit 0
INSTACTL_EOF

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of pg-0 done"
