#!/bin/bash
# instactl bootstrap for app-0: role app, stack dev, sandbox flavour.
# Rendered by instactl (`instactl render app`); do not edit on the host.
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
readonly HOST_NAME=app-0 ADDRESS=127.0.77.1 PORT=8080

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
log "bootstrap of $HOST_NAME (app, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='dev'
INSTACTL_ROLE='app'
INSTACTL_INDEX=0
INSTACTL_HOST='app-0'
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

# ---- PgBouncer beside the app server: one database per Postgres group ----
write_file /etc/instagram/pgbouncer.ini 0640 root:postgres <<'INSTACTL_EOF'
; pgbouncer.ini for app-0, rendered by instactl. PgBouncer beside the app server: the
; app reaches every Postgres group through it. The [databases] section (one entry per group,
; pointing at its primary) is its own file, which instactl rewrites and RELOADs to repoint a
; group; nothing else here changes then.
%include /etc/instagram/pgbouncer-databases.ini

[pgbouncer]
listen_addr = 127.0.77.1
listen_port = 6432
unix_socket_dir = /run/pgbouncer
; Sandbox only: loopback is trusted, as by postgres' pg_hba.conf.
auth_type = trust
auth_file = /etc/instagram/pgbouncer-userlist.txt
admin_users = instactl
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
reserve_pool_size = 5
server_idle_timeout = 60
; A failed server login makes PgBouncer wait server_login_retry before it tries again, holding
; every client of that database (15 s by default): a connection attempt that meets the old
; primary while it stops would hold the writes of a switchover that long. Retry at once, and
; give up on an unreachable server (a stopped instance) after 2 s.
server_login_retry = 0
server_connect_timeout = 2
ignore_startup_parameters = extra_float_digits
INSTACTL_EOF
write_file /etc/instagram/pgbouncer-userlist.txt 0640 root:postgres <<'INSTACTL_EOF'
"app" ""
"instactl" ""
INSTACTL_EOF
# Written once: afterwards instactl owns this file (it repoints a group after a failover), and a
# re-run must not point the app back at the stack file's first primaries.
if [ ! -e /etc/instagram/pgbouncer-databases.ini ]; then
	write_file /etc/instagram/pgbouncer-databases.ini 0644 root:root <<'INSTACTL_EOF'
; Written by instactl: one entry per Postgres group, pointing at its primary.
[databases]
pg-0 = host=127.0.77.1 port=5432 dbname=instagram
pg-2 = host=127.0.77.3 port=5432 dbname=instagram
INSTACTL_EOF
fi

write_file /etc/instagram/services/pgbouncer.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of pgbouncer on app-0: PgBouncer beside the app server.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/usr/sbin/pgbouncer /etc/instagram/pgbouncer.ini)
SVC_USER=postgres
SVC_DIR=/
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=/run/pgbouncer
SVC_PIDFILE=/run/instagram/pgbouncer.pid
SVC_LOG=/var/log/instagram/pgbouncer.log
SVC_STOP_SIGNAL=INT
SVC_STOP_TIMEOUT=30
INSTACTL_EOF
"$SVC" start pgbouncer

pgbouncer_ping() { (exec 3<>"/dev/tcp/$ADDRESS/6432") 2>/dev/null; }
wait_for "pgbouncer on $ADDRESS:6432" 60 pgbouncer_ping

# ---- app server (the binary arrives with deploy into /opt/instagram/current/) ----
install -d -m 0755 /opt/instagram /opt/instagram/releases
# The app server keeps its last switch state here, in a directory its own user can write.
install -d -m 0755 -o root -g root /var/lib/instagram/switches
write_file /etc/instagram/app.env 0640 root:root <<'INSTACTL_EOF'
# Environment of the app server on app-0, rendered by instactl; instagram-app reads it
# (its default -config) and systemd loads it too.
INSTAGRAM_LISTEN='127.0.77.1:8080'
INSTAGRAM_PGBOUNCER='127.0.77.1:6432'
INSTACTL_EOF

write_file /etc/instagram/services/app.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of app on app-0: app server.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/opt/instagram/current/instagram-app)
SVC_USER=root
SVC_DIR=/opt/instagram
SVC_ENV_FILE=/etc/instagram/app.env
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/app.pid
SVC_LOG=/var/log/instagram/app.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=30
INSTACTL_EOF
# Not started: its binary arrives with the first deploy (instactl-svc restart app).

# ---- exporters (the stack has a monitor role): node_exporter, PgBouncer exporter on $ADDRESS ----
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
# instactl-svc definition of node-exporter on app-0: node_exporter.
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

PGBOUNCER_EXPORTER_PASSWORD=''
printf 'PGPASSWORD=%s\n' "$PGBOUNCER_EXPORTER_PASSWORD" | write_file /etc/instagram/pgbouncer-exporter.env 0640 root:root
write_file /opt/instagram/bin/instactl-pgbouncer-exporter 0755 root:root <<'INSTACTL_EOF'
#!/usr/bin/python3
"""PgBouncer exporter of app-0, rendered by instactl: Debian's prometheus-pgbouncer-exporter
(1.7) with two fixes, run with its own command line.

- PgBouncer 1.8 renamed SHOW STATS' total_requests to total_query_count: the 1.7 exporter fails
  every scrape (KeyError) against bookworm's PgBouncer. The metric keeps its name,
  pgbouncer_requests_total.
- It opens one connection at start and never another: it dies when PgBouncer is not up yet and
  fails every scrape after PgBouncer restarts. Here it waits for PgBouncer at start, and a scrape
  that meets a broken connection reconnects once (a scrape that still fails is a failed scrape:
  Prometheus records the target down).
"""
import sys
import time

import psycopg2
from prometheus_pgbouncer_exporter import cli, collectors, utils

stats = collectors.StatsCollector.metrics
if "total_requests" in stats:
    stats["total_query_count"] = stats.pop("total_requests")

class Connection:
    """A connection to PgBouncer's admin console, opened again after it broke."""

    def __init__(self, user, port, host):
        self.args = (user, port, host)
        self.conn = None

    def cursor(self):
        if self.conn is None or self.conn.closed:
            self.conn = utils.get_connection(*self.args)
        return self.conn.cursor()

    def reset(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = None

    def close(self):
        self.reset()

def reconnecting(query):
    def run(connection, key):
        try:
            return query(connection, key)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            connection.reset()
            return query(connection, key)
    return run

collectors.get_data_by_named_column = reconnecting(utils.get_data_by_named_column)
collectors.get_data_by_named_row = reconnecting(utils.get_data_by_named_row)

def connect_when_up(user, port, host):
    conn = Connection(user, port, host)
    while True:
        try:
            conn.cursor().close()
            return conn
        except psycopg2.Error as err:
            print("waiting for pgbouncer at %s:%s: %s" % (host, port, str(err).strip()), file=sys.stderr, flush=True)
            conn.reset()
            time.sleep(2)

cli.get_connection = connect_when_up
sys.exit(cli.main())
INSTACTL_EOF

write_file /etc/instagram/services/pgbouncer-exporter.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of pgbouncer-exporter on app-0: PgBouncer exporter.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/opt/instagram/bin/instactl-pgbouncer-exporter --host 127.0.77.1 --port 9127 --pgbouncer-host 127.0.77.1 --pgbouncer-port 6432 --pgbouncer-user instactl)
SVC_USER=root
SVC_DIR=/
SVC_ENV_FILE=/etc/instagram/pgbouncer-exporter.env
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/pgbouncer-exporter.pid
SVC_LOG=/var/log/instagram/pgbouncer-exporter.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=10
INSTACTL_EOF
"$SVC" start pgbouncer-exporter

exporter_ping() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
wait_for "node_exporter on $ADDRESS:9100" 60 exporter_ping 9100

# What a boot of this host starts, in order: the sandbox runs it when a stopped host starts, as
# systemd starts the enabled units on EC2. A service that refuses to start (the boot guard of
# a fenced old primary) is logged and the others still start.
write_file /var/lib/instagram/rc.local 0755 root:root <<'INSTACTL_EOF'
#!/bin/bash
rc=0
/opt/instagram/bin/instactl-svc start pgbouncer || { echo "rc.local: pgbouncer did not start" >&2; rc=1; }
if [ -e /opt/instagram/current ]; then /opt/instagram/bin/instactl-svc start app || { echo "rc.local: app did not start" >&2; rc=1; }; fi
/opt/instagram/bin/instactl-svc start node-exporter || { echo "rc.local: node-exporter did not start" >&2; rc=1; }
/opt/instagram/bin/instactl-svc start pgbouncer-exporter || { echo "rc.local: pgbouncer-exporter did not start" >&2; rc=1; }
echo "rc.local: done (exit $rc)" >&2
exit 0
INSTACTL_EOF

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of app-0 done"
