#!/bin/bash
# instactl bootstrap for pg-0: role pg (primary), stack prod, systemd flavour.
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
readonly HOST_NAME=pg-0 ADDRESS=10.0.1.10 PORT=5432

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
log "bootstrap of $HOST_NAME (pg, $ADDRESS) starting"

write_file /etc/instagram/host.env 0644 root:root <<'INSTACTL_EOF'
# Identity of this host, written by instactl bootstrap.
INSTACTL_STACK='prod'
INSTACTL_ROLE='pg'
INSTACTL_INDEX=0
INSTACTL_HOST='pg-0'
INSTACTL_ADDRESS='10.0.1.10'
INSTACTL_SERVICE_MANAGER='systemd'
INSTACTL_EOF

# ---- packages ----
export DEBIAN_FRONTEND=noninteractive
# The cluster is created below on the data volume, not by the package.
write_file /etc/postgresql-common/createcluster.conf 0644 root:root <<'INSTACTL_EOF'
create_main_cluster = false
INSTACTL_EOF
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
apt_install xfsprogs util-linux mdadm postgresql-15 postgresql-client-15
# instactl runs its own units; the packaged ones would claim the same ports.
systemctl disable --now postgresql.service >/dev/null 2>&1 || true

# ---- data volume: sdf, sdg under /dev, xfs at /var/lib/postgresql ----
readonly DEVICE_DIR=/dev MOUNT=/var/lib/postgresql
DEVICES=(sdf sdg)

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

# RAID 0 over all devices. An array assembled at boot (under any md name) is reused; members
# that already carry a superblock are assembled, never re-created.
DATA_DEV=$(lsblk -nro NAME,TYPE "${devs[0]}" | awk '$2 == "raid0" { print "/dev/" $1; exit }')
if [ -n "$DATA_DEV" ]; then
	log "RAID 0 already assembled as $DATA_DEV"
elif mdadm --examine "${devs[0]}" >/dev/null 2>&1; then
	log "assembling the existing RAID 0 from ${devs[*]}"
	DATA_DEV=/dev/md0
	mdadm --assemble "$DATA_DEV" "${devs[@]}"
else
	log "creating RAID 0 over ${devs[*]}"
	DATA_DEV=/dev/md0
	mdadm --create "$DATA_DEV" --run --level=0 --chunk=256 --metadata=1.2 --name=instagram \
		--raid-devices=2 "${devs[@]}"
	udevadm settle || true
fi
array_uuid=$(mdadm --detail --export "$DATA_DEV" | sed -n 's/^MD_UUID=//p')
if ! grep -qs "UUID=$array_uuid" /etc/mdadm/mdadm.conf; then
	mdadm --detail --brief "$DATA_DEV" >>/etc/mdadm/mdadm.conf
	update-initramfs -u
fi

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

# ---- postgres 15: primary ----
readonly PGBIN=/usr/lib/postgresql/15/bin PGDATA=/var/lib/postgresql/15/main
APP_PASSWORD=app-secret
REPLICATION_PASSWORD='repl'\''s secret'
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
listen_addresses = '10.0.1.10'
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
wal_keep_size = 1024MB
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
host    replication  replicator  10.0.0.0/16         scram-sha-256
host    all          all         10.0.0.0/16         scram-sha-256
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
printf '*:*:*:replicator:%s\n' "$REPLICATION_PASSWORD" | write_file /etc/instagram/pgpass 0600 postgres:postgres

write_file /etc/systemd/system/instagram-postgres.service 0644 root:root <<'INSTACTL_EOF'
# instagram-postgres.service on pg-0, rendered by instactl.
[Unit]
Description=Instagram PostgreSQL 15 /var/lib/postgresql/15/main
Wants=network-online.target
After=network-online.target
RequiresMountsFor=/var/lib/postgresql

[Service]
Type=simple
User=postgres
WorkingDirectory=/var/lib/postgresql
RuntimeDirectory=postgresql
RuntimeDirectoryPreserve=yes
ExecStart=/opt/instagram/bin/instactl-pg-guard /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main
KillSignal=SIGINT
KillMode=mixed
TimeoutStopSec=120
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
INSTACTL_EOF
systemctl daemon-reload
systemctl enable --now instagram-postgres.service

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

date -u +%Y-%m-%dT%H:%M:%SZ >"$DONE"
log "bootstrap of pg-0 done"
