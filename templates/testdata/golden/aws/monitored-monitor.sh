#!/bin/bash
# instactl bootstrap for monitor-0: role monitor, stack prod, systemd flavour.
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
readonly HOST_NAME=monitor-0 ADDRESS=10.0.1.10 PORT=9090

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
log "bootstrap of $HOST_NAME (monitor, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='prod'
INSTACTL_ROLE='monitor'
INSTACTL_INDEX=0
INSTACTL_HOST='monitor-0'
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
apt_install xfsprogs util-linux
apt_install prometheus-node-exporter prometheus prometheus-alertmanager prometheus-blackbox-exporter
# instactl runs its own exporters on this host's address; the packaged units would claim the ports.
systemctl disable --now prometheus-node-exporter.service >/dev/null 2>&1 || true
systemctl disable --now prometheus.service >/dev/null 2>&1 || true
systemctl disable --now prometheus-alertmanager.service >/dev/null 2>&1 || true
systemctl disable --now prometheus-blackbox-exporter.service >/dev/null 2>&1 || true

# ---- exporters (the stack has a monitor role): node_exporter on $ADDRESS ----
# Tools drop NAME.prom files here (through a rename); node_exporter serves them with the host.
install -d -m 0755 /var/lib/instagram/textfile

write_file /etc/systemd/system/instagram-node-exporter.service 0644 root:root <<'INSTACTL_EOF'
# instagram-node-exporter.service on monitor-0, rendered by instactl.
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

exporter_ping() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
wait_for "node_exporter on $ADDRESS:9100" 60 exporter_ping 9100

# ---- monitor: Prometheus on $ADDRESS:$PORT, Alertmanager, blackbox_exporter ----
# `instactl monitor up` replaces prometheus.yml, alertmanager.yml and the rules with those
# generated from the stack file and reloads; until then these placeholders keep both running.
install -d -m 0755 /etc/instagram/monitor /etc/instagram/monitor/rules
install -d -o prometheus -g prometheus -m 0750 /var/lib/instagram/monitor/prometheus /var/lib/instagram/monitor/alertmanager
if [ ! -e /etc/instagram/monitor/prometheus.yml ]; then
	write_file /etc/instagram/monitor/prometheus.yml 0644 root:root <<'INSTACTL_EOF'
# Placeholder written by bootstrap on monitor-0: Prometheus scrapes itself until
# `instactl monitor up` installs the configuration generated from the stack file.
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['10.0.1.10:9090']
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

write_file /etc/systemd/system/instagram-prometheus.service 0644 root:root <<'INSTACTL_EOF'
# instagram-prometheus.service on monitor-0, rendered by instactl.
[Unit]
Description=Instagram Prometheus
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=prometheus
WorkingDirectory=/
ExecStart=/usr/bin/prometheus --config.file=/etc/instagram/monitor/prometheus.yml --storage.tsdb.path=/var/lib/instagram/monitor/prometheus --web.listen-address=10.0.1.10:9090 --web.enable-lifecycle --storage.tsdb.retention.time=15d
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=60
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
INSTACTL_EOF
systemctl daemon-reload
systemctl enable --now instagram-prometheus.service

write_file /etc/systemd/system/instagram-alertmanager.service 0644 root:root <<'INSTACTL_EOF'
# instagram-alertmanager.service on monitor-0, rendered by instactl.
[Unit]
Description=Instagram Alertmanager
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=prometheus
WorkingDirectory=/
ExecStart=/usr/bin/prometheus-alertmanager --config.file=/etc/instagram/monitor/alertmanager.yml --storage.path=/var/lib/instagram/monitor/alertmanager --web.listen-address=10.0.1.10:9093 --cluster.listen-address= --web.external-url=http://10.0.1.10:9093
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
systemctl enable --now instagram-alertmanager.service

write_file /etc/systemd/system/instagram-blackbox-exporter.service 0644 root:root <<'INSTACTL_EOF'
# instagram-blackbox-exporter.service on monitor-0, rendered by instactl.
[Unit]
Description=Instagram blackbox_exporter
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=prometheus
WorkingDirectory=/
ExecStart=/usr/bin/prometheus-blackbox-exporter --config.file=/etc/instagram/monitor/blackbox.yml --web.listen-address=10.0.1.10:9115
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
systemctl enable --now instagram-blackbox-exporter.service

prometheus_ready() { (exec 3<>"/dev/tcp/$ADDRESS/$PORT") 2>/dev/null; }
wait_for "prometheus on $ADDRESS:$PORT" 120 prometheus_ready

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of monitor-0 done"
