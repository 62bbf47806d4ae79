#!/bin/bash
# instactl bootstrap for memcached-0: role memcached, stack prod, systemd flavour.
# Rendered by instactl (`instactl render memcached`); do not edit on the host.
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
readonly HOST_NAME=memcached-0 ADDRESS=10.0.1.10 PORT=11211

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
log "bootstrap of $HOST_NAME (memcached, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='prod'
INSTACTL_ROLE='memcached'
INSTACTL_INDEX=0
INSTACTL_HOST='memcached-0'
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
apt_install xfsprogs util-linux memcached
systemctl disable --now memcached.service >/dev/null 2>&1 || true
apt_install prometheus-node-exporter
# instactl runs its own exporters on this host's address; the packaged units would claim the ports.
systemctl disable --now prometheus-node-exporter.service >/dev/null 2>&1 || true

# ---- memcached ----

write_file /etc/systemd/system/instagram-memcached.service 0644 root:root <<'INSTACTL_EOF'
# instagram-memcached.service on memcached-0, rendered by instactl.
[Unit]
Description=Instagram memcached
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=memcache
WorkingDirectory=/
ExecStart=/usr/bin/memcached -l 10.0.1.10 -p 11211 -U 0 -m 64 -c 4096
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
systemctl enable --now instagram-memcached.service

memcached_ping() {
	(
		exec 3<>"/dev/tcp/$ADDRESS/$PORT" || exit 1
		printf 'version\r\n' >&3
		IFS= read -r -t 2 reply <&3
		[[ $reply == VERSION* ]]
	) 2>/dev/null
}
wait_for "memcached on $ADDRESS:$PORT" 60 memcached_ping

# ---- exporters (the stack has a monitor role): node_exporter on $ADDRESS ----
# Tools drop NAME.prom files here (through a rename); node_exporter serves them with the host.
install -d -m 0755 /var/lib/instagram/textfile

write_file /etc/systemd/system/instagram-node-exporter.service 0644 root:root <<'INSTACTL_EOF'
# instagram-node-exporter.service on memcached-0, rendered by instactl.
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

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of memcached-0 done"
