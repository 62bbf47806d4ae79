#!/bin/bash
# instactl bootstrap for redis-0: role redis (primary), stack prod, systemd flavour.
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
readonly HOST_NAME=redis-0 ADDRESS=10.0.1.10 PORT=6379

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
log "bootstrap of $HOST_NAME (redis, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='prod'
INSTACTL_ROLE='redis'
INSTACTL_INDEX=0
INSTACTL_HOST='redis-0'
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
apt_install xfsprogs util-linux redis-server redis-tools
systemctl disable --now redis-server.service >/dev/null 2>&1 || true
apt_install prometheus-node-exporter prometheus-redis-exporter
# instactl runs its own exporters on this host's address; the packaged units would claim the ports.
systemctl disable --now prometheus-node-exporter.service >/dev/null 2>&1 || true
systemctl disable --now prometheus-redis-exporter.service >/dev/null 2>&1 || true

# ---- data volume: sdf under /dev, xfs at /var/lib/redis ----
readonly DEVICE_DIR=/dev MOUNT=/var/lib/redis
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
fs_uuid=$(blkid -p -o value -s UUID "$DATA_DEV")
if ! grep -q "^UUID=$fs_uuid " /etc/fstab; then
	printf 'UUID=%s %s xfs noatime,nofail 0 0\n' "$fs_uuid" "$MOUNT" >>/etc/fstab
	log "added $MOUNT (UUID=$fs_uuid) to /etc/fstab"
fi

# ---- redis: master ----
install -d -o redis -g redis -m 0750 /var/lib/redis
# Owned by the server's user: a switchover's CONFIG REWRITE records the new role in it, so a
# restart keeps the role instead of returning to the one bootstrap wrote.
write_file /etc/instagram/redis.conf 0640 redis:redis <<'INSTACTL_EOF'
# redis.conf for redis-0 (master), rendered by instactl.
bind 10.0.1.10
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
replica-announce-ip 10.0.1.10
# A replica's full sync starts at once (Redis waits 5 s by default for more replicas to share
# it): the master refuses writes until a replica is in sync.
repl-diskless-sync-delay 0
INSTACTL_EOF

write_file /etc/systemd/system/instagram-redis.service 0644 root:root <<'INSTACTL_EOF'
# instagram-redis.service on redis-0, rendered by instactl.
[Unit]
Description=Instagram Redis master
Wants=network-online.target
After=network-online.target
RequiresMountsFor=/var/lib/redis

[Service]
Type=simple
User=redis
WorkingDirectory=/var/lib/redis
ExecStart=/usr/bin/redis-server /etc/instagram/redis.conf
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
systemctl enable --now instagram-redis.service

redis_ping() { [ "$(redis-cli -h "$ADDRESS" -p "$PORT" ping 2>/dev/null)" = PONG ]; }
wait_for "redis on $ADDRESS:$PORT" 120 redis_ping

# ---- exporters (the stack has a monitor role): node_exporter, redis_exporter on $ADDRESS ----
# Tools drop NAME.prom files here (through a rename); node_exporter serves them with the host.
install -d -m 0755 /var/lib/instagram/textfile

write_file /etc/systemd/system/instagram-node-exporter.service 0644 root:root <<'INSTACTL_EOF'
# instagram-node-exporter.service on redis-0, rendered by instactl.
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

write_file /etc/systemd/system/instagram-redis-exporter.service 0644 root:root <<'INSTACTL_EOF'
# instagram-redis-exporter.service on redis-0, rendered by instactl.
[Unit]
Description=Instagram redis_exporter
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=prometheus
WorkingDirectory=/
ExecStart=/usr/bin/prometheus-redis-exporter --web.listen-address=10.0.1.10:9121 -redis.addr=redis://10.0.1.10:6379
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
systemctl enable --now instagram-redis-exporter.service

exporter_ping() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
wait_for "node_exporter on $ADDRESS:9100" 60 exporter_ping 9100

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of redis-0 done"
