#!/bin/bash
# instactl bootstrap for app-0: role app, stack prod, systemd flavour.
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
readonly HOST_NAME=app-0 ADDRESS=10.0.1.10 PORT=8080

# cloud-init keeps its own copy in /var/log/cloud-init-output.log.
mkdir -p /var/log/instagram
exec > >(tee -a /var/log/instagram/bootstrap.log) 2>&1

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
INSTACTL_STACK='prod'
INSTACTL_ROLE='app'
INSTACTL_INDEX=0
INSTACTL_HOST='app-0'
INSTACTL_ADDRESS='10.0.1.10'
INSTACTL_SERVICE_MANAGER='systemd'
INSTACTL_EOF

# ---- packages ----
export DEBIAN_FRONTEND=noninteractive
apt_install() {
	local attempt
	for attempt in 1 2 3 4 5; do
		if apt-get -q update && apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "$@"; then
			return 0
		fi
		log "apt-get failed (attempt $attempt); retrying in 10s"
		sleep 10
	done
	die "apt-get install $* failed 5 times"
}
apt_install xfsprogs util-linux pgbouncer
systemctl disable --now pgbouncer.service >/dev/null 2>&1 || true
apt_install prometheus-node-exporter prometheus-pgbouncer-exporter
# instactl runs its own exporters on this host's address; the packaged units would claim the ports.
systemctl disable --now prometheus-node-exporter.service >/dev/null 2>&1 || true
systemctl disable --now prometheus-pgbouncer-exporter.service >/dev/null 2>&1 || true

# ---- PgBouncer beside the app server: one database per Postgres group ----
write_file /etc/instagram/pgbouncer.ini 0640 root:postgres <<'INSTACTL_EOF'
; pgbouncer.ini for app-0, rendered by instactl. PgBouncer beside the app server: the
; app reaches every Postgres group through it. The [databases] section (one entry per group,
; pointing at its primary) is its own file, which instactl rewrites and RELOADs to repoint a
; group; nothing else here changes then.
%include /etc/instagram/pgbouncer-databases.ini

[pgbouncer]
listen_addr = 10.0.1.10
listen_port = 6432
unix_socket_dir = /run/pgbouncer
auth_type = scram-sha-256
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
"app" "app-secret"
"instactl" "repl's secret"
INSTACTL_EOF
# Written once: afterwards instactl owns this file (it repoints a group after a failover), and a
# re-run must not point the app back at the stack file's first primaries.
if [ ! -e /etc/instagram/pgbouncer-databases.ini ]; then
	write_file /etc/instagram/pgbouncer-databases.ini 0644 root:root <<'INSTACTL_EOF'
; Written by instactl: one entry per Postgres group, pointing at its primary.
[databases]
pg-0 = host=10.0.1.10 port=5432 dbname=instagram
pg-2 = host=10.0.1.12 port=5432 dbname=instagram
INSTACTL_EOF
fi

write_file /etc/systemd/system/instagram-pgbouncer.service 0644 root:root <<'INSTACTL_EOF'
# instagram-pgbouncer.service on app-0, rendered by instactl.
[Unit]
Description=Instagram PgBouncer beside the app server
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=postgres
WorkingDirectory=/
RuntimeDirectory=pgbouncer
RuntimeDirectoryPreserve=yes
ExecStart=/usr/sbin/pgbouncer /etc/instagram/pgbouncer.ini
KillSignal=SIGINT
KillMode=mixed
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
INSTACTL_EOF
systemctl daemon-reload
systemctl enable --now instagram-pgbouncer.service

pgbouncer_ping() { (exec 3<>"/dev/tcp/$ADDRESS/6432") 2>/dev/null; }
wait_for "pgbouncer on $ADDRESS:6432" 60 pgbouncer_ping

# ---- app server (the binary arrives with deploy into /opt/instagram/current/) ----
if ! id -u instagram >/dev/null 2>&1; then
	useradd --system --user-group --home-dir /opt/instagram --no-create-home --shell /usr/sbin/nologin instagram
fi
install -d -m 0755 /opt/instagram /opt/instagram/releases
# The app server keeps its last switch state here, in a directory its own user can write.
install -d -m 0755 -o instagram -g instagram /var/lib/instagram/switches
write_file /etc/instagram/app.env 0640 root:instagram <<'INSTACTL_EOF'
# Environment of the app server on app-0, rendered by instactl; instagram-app reads it
# (its default -config) and systemd loads it too.
INSTAGRAM_LISTEN='10.0.1.10:8080'
INSTAGRAM_PGBOUNCER='10.0.1.10:6432'
INSTAGRAM_CONTROL_DSN='postgres://app@10.0.1.10:5432,10.0.1.11:5432/instagram_control?sslmode=disable&connect_timeout=2&target_session_attrs=read-write'
INSTAGRAM_REDIS_ADDR='10.0.1.30:6379'
INSTACTL_EOF

write_file /etc/systemd/system/instagram-app.service 0644 root:root <<'INSTACTL_EOF'
# instagram-app.service on app-0, rendered by instactl.
[Unit]
Description=Instagram app server
Wants=network-online.target
After=network-online.target instagram-pgbouncer.service
# Until the first deploy there is nothing to run.
ConditionPathExists=/opt/instagram/current/instagram-app

[Service]
Type=simple
User=instagram
WorkingDirectory=/opt/instagram
EnvironmentFile=/etc/instagram/app.env
ExecStart=/opt/instagram/current/instagram-app
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
INSTACTL_EOF
systemctl daemon-reload
# Enabled but not started: its binary arrives with the first deploy.
systemctl enable instagram-app.service

# ---- exporters (the stack has a monitor role): node_exporter, PgBouncer exporter on $ADDRESS ----
# Tools drop NAME.prom files here (through a rename); node_exporter serves them with the host.
install -d -m 0755 /var/lib/instagram/textfile

write_file /etc/systemd/system/instagram-node-exporter.service 0644 root:root <<'INSTACTL_EOF'
# instagram-node-exporter.service on app-0, rendered by instactl.
[Unit]
Description=Instagram node_exporter
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=prometheus
WorkingDirectory=/
ExecStart=/usr/bin/prometheus-node-exporter --web.listen-address=10.0.1.10:9100 --collector.textfile.directory=/var/lib/instagram/textfile
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=10
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
INSTACTL_EOF
systemctl daemon-reload
systemctl enable --now instagram-node-exporter.service

PGBOUNCER_EXPORTER_PASSWORD='repl'\''s secret'
printf 'PGPASSWORD=%s\n' "$PGBOUNCER_EXPORTER_PASSWORD" | write_file /etc/instagram/pgbouncer-exporter.env 0640 root:prometheus
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

write_file /etc/systemd/system/instagram-pgbouncer-exporter.service 0644 root:root <<'INSTACTL_EOF'
# instagram-pgbouncer-exporter.service on app-0, rendered by instactl.
[Unit]
Description=Instagram PgBouncer exporter
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=prometheus
WorkingDirectory=/
EnvironmentFile=/etc/instagram/pgbouncer-exporter.env
ExecStart=/opt/instagram/bin/instactl-pgbouncer-exporter --host 10.0.1.10 --port 9127 --pgbouncer-host 10.0.1.10 --pgbouncer-port 6432 --pgbouncer-user instactl
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=10
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
INSTACTL_EOF
systemctl daemon-reload
systemctl enable --now instagram-pgbouncer-exporter.service

exporter_ping() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
wait_for "node_exporter on $ADDRESS:9100" 60 exporter_ping 9100

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of app-0 done"
