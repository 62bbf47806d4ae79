#!/bin/bash
# instactl bootstrap for monitor-0: role monitor, stack dev, sandbox flavour.
# Rendered by instactl (`instactl render monitor`); do not edit on the host.
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
readonly HOST_NAME=monitor-0 ADDRESS=127.0.77.1 PORT=9090

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
log "bootstrap of $HOST_NAME (monitor, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='dev'
INSTACTL_ROLE='monitor'
INSTACTL_INDEX=0
INSTACTL_HOST='monitor-0'
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

# ---- exporters (the stack has a monitor role): node_exporter on $ADDRESS ----
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
# instactl-svc definition of node-exporter on monitor-0: node_exporter.
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

exporter_ping() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
wait_for "node_exporter on $ADDRESS:9100" 60 exporter_ping 9100

# ---- monitor: Prometheus on $ADDRESS:$PORT, Alertmanager, blackbox_exporter ----
# `instactl monitor up` replaces prometheus.yml, alertmanager.yml and the rules with those
# generated from the stack file and reloads; until then these placeholders keep both running.
install -d -m 0755 /etc/instagram/monitor /etc/instagram/monitor/rules
install -d -o root -g root -m 0750 /var/lib/instagram/monitor/prometheus /var/lib/instagram/monitor/alertmanager
if [ ! -e /etc/instagram/monitor/prometheus.yml ]; then
	write_file /etc/instagram/monitor/prometheus.yml 0644 root:root <<'INSTACTL_EOF'
# Placeholder written by bootstrap on monitor-0: Prometheus scrapes itself until
# `instactl monitor up` installs the configuration generated from the stack file.
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.77.1:9090']
INSTACTL_EOF
fi
if [ ! -e /etc/instagram/monitor/alertmanager.yml ]; then
	write_file /etc/instagram/monitor/alertmanager.yml 0644 root:root <<'INSTACTL_EOF'
# Placeholder written by bootstrap on monitor-0: alerts go nowhere until
# `instactl monitor up` installs the configuration generated from the stack file.
route:
  receiver: none
receivers:
  - name: none
INSTACTL_EOF
fi
write_file /etc/instagram/monitor/blackbox.yml 0644 root:root <<'INSTACTL_EOF'
# blackbox_exporter modules on monitor-0, rendered by instactl: the probes the generated
# Prometheus configuration asks for (the app's health check through the load balancer and each
# app host, TCP connects to the data services).
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      valid_status_codes: [200]
      preferred_ip_protocol: ip4
      no_follow_redirects: true
  tcp_connect:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
INSTACTL_EOF

write_file /etc/instagram/services/prometheus.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of prometheus on monitor-0: Prometheus.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/usr/bin/prometheus --config.file=/etc/instagram/monitor/prometheus.yml --storage.tsdb.path=/var/lib/instagram/monitor/prometheus --web.listen-address=127.0.77.1:9090 --web.enable-lifecycle --storage.tsdb.retention.time=15d)
SVC_USER=root
SVC_DIR=/
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/prometheus.pid
SVC_LOG=/var/log/instagram/prometheus.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=60
INSTACTL_EOF
"$SVC" start prometheus

write_file /etc/instagram/services/alertmanager.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of alertmanager on monitor-0: Alertmanager.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/usr/bin/prometheus-alertmanager --config.file=/etc/instagram/monitor/alertmanager.yml --storage.path=/var/lib/instagram/monitor/alertmanager --web.listen-address=127.0.77.1:9093 --cluster.listen-address= --web.external-url=http://127.0.77.1:9093)
SVC_USER=root
SVC_DIR=/
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/alertmanager.pid
SVC_LOG=/var/log/instagram/alertmanager.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=30
INSTACTL_EOF
"$SVC" start alertmanager

write_file /etc/instagram/services/blackbox-exporter.env 0644 root:root <<'INSTACTL_EOF'
# instactl-svc definition of blackbox-exporter on monitor-0: blackbox_exporter.
# Sourced by /opt/instagram/bin/instactl-svc; rendered by instactl.
SVC_COMMAND=(/usr/bin/prometheus-blackbox-exporter --config.file=/etc/instagram/monitor/blackbox.yml --web.listen-address=127.0.77.1:9115)
SVC_USER=root
SVC_DIR=/
SVC_ENV_FILE=''
SVC_RUNTIME_DIR=''
SVC_PIDFILE=/run/instagram/blackbox-exporter.pid
SVC_LOG=/var/log/instagram/blackbox-exporter.log
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=10
INSTACTL_EOF
"$SVC" start blackbox-exporter

prometheus_ready() { (exec 3<>"/dev/tcp/$ADDRESS/$PORT") 2>/dev/null; }
wait_for "prometheus on $ADDRESS:$PORT" 120 prometheus_ready

# What a boot of this host starts, in order: the sandbox runs it when a stopped host starts, as
# systemd starts the enabled units on EC2. A service that refuses to start (the boot guard of
# a fenced old primary) is logged and the others still start.
write_file /var/lib/instagram/rc.local 0755 root:root <<'INSTACTL_EOF'
#!/bin/bash
rc=0
/opt/instagram/bin/instactl-svc start node-exporter || { echo "rc.local: node-exporter did not start" >&2; rc=1; }
/opt/instagram/bin/instactl-svc start prometheus || { echo "rc.local: prometheus did not start" >&2; rc=1; }
/opt/instagram/bin/instactl-svc start alertmanager || { echo "rc.local: alertmanager did not start" >&2; rc=1; }
/opt/instagram/bin/instactl-svc start blackbox-exporter || { echo "rc.local: blackbox-exporter did not start" >&2; rc=1; }
echo "rc.local: done (exit $rc)" >&2
exit 0
INSTACTL_EOF

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of monitor-0 done"
