#!/usr/bin/env bash
# Archiver comparison on this machine: instactl wal push/fetch (Go) vs pgBackRest
# archive-push/archive-get, both to moto_server's S3, one process per segment as
# archive_command and restore_command run them. Usage: bench/pitr/archiver.sh [SEGMENTS]
# Needs root, PostgreSQL 15, pgbackrest, moto_server (with cryptography for --ssl).
# Uses 127.0.157.1 and ports 15157 (moto) and 18157 (nginx terminating TLS for pgBackRest),
# the pitr helper's sandbox range, only.
set -euo pipefail
N=${1:-32}
ADDR=127.0.157.1 MOTO_PORT=15157 PG_PORT=15432
BIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/pitr-archiver.XXXXXX)
chmod 755 "$W"
MOTO_PID= NGINX_PID=
cleanup() {
	[ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
	[ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true
	runuser -u postgres -- "$BIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$W"
}
trap cleanup EXIT
ms() { date +%s%3N; }
moto() { # moto [--ssl]
	[ -n "$MOTO_PID" ] && { kill "$MOTO_PID"; wait "$MOTO_PID" 2>/dev/null || true; }
	moto_server -H 127.0.0.1 -p $MOTO_PORT "$@" >"$W/moto.log" 2>&1 &
	MOTO_PID=$!
	for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$MOTO_PORT) 2>/dev/null && return; sleep 0.1; done
	echo "moto did not start" >&2; exit 1
}
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

(cd "$ROOT" && go build -o "$W/instactl" ./cmd/instactl)

# A real cluster and N real segments (pgBackRest checks each segment's header).
chown postgres "$W"; install -d -o postgres "$W/pg" "$W/segs" "$W/sock"
runuser -u postgres -- "$BIN/initdb" -D "$W/pg" -A trust --no-sync >/dev/null
runuser -u postgres -- "$BIN/pg_ctl" -D "$W/pg" -w -l "$W/pg.log" -o "-c port=$PG_PORT -c listen_addresses=$ADDR -c unix_socket_directories=$W/sock -c wal_level=replica -c max_wal_size=4GB" start >/dev/null
psql_() { runuser -u postgres -- "$BIN/psql" -X -q -At -h "$W/sock" -p $PG_PORT -d postgres "$@"; }
psql_ -c "CREATE TABLE t(x int, pad text)"
for _ in $(seq "$N"); do psql_ -c "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g" -c "SELECT pg_switch_wal()" >/dev/null; done
psql_ -c CHECKPOINT
ls "$W/pg/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort | head -n "$N" | while read -r s; do cp "$W/pg/pg_wal/$s" "$W/segs/"; done
SEGS=$(ls "$W/segs" | sort)
COUNT=$(echo "$SEGS" | wc -l)
MB=$((COUNT * 16))
SYSID=$(psql_ -c "SELECT system_identifier FROM pg_control_system()")
rate() { awk -v mb="$MB" -v ms="$1" 'BEGIN { printf "%7.0f ms  %6.1f MB/s  %5.2f GB/min", ms, mb/(ms/1000), mb/1024/(ms/60000) }'; }
echo "segments: $COUNT x 16 MiB = $MB MiB; $(nproc) cores"

# ---- instactl wal (Go), moto over http ----
moto
python3 - <<PY
import boto3; boto3.client("s3", endpoint_url="http://127.0.0.1:$MOTO_PORT").create_bucket(Bucket="wal")
PY
printf 'INSTACTL_WAL_BUCKET=wal\nINSTACTL_WAL_GROUP=pg-0\nAWS_ENDPOINT_URL=http://127.0.0.1:%s\nAWS_REGION=us-east-1\nAWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n' $MOTO_PORT >"$W/wal.env"
t0=$(ms); for s in $SEGS; do "$W/instactl" wal push --config "$W/wal.env" --system-id "$SYSID" "$W/segs/$s"; done; t1=$(ms)
echo "instactl wal push    (1 process/segment):    $(rate $((t1 - t0)))"
t0=$(ms); for s in $SEGS; do "$W/instactl" wal push --config "$W/wal.env" --system-id "$SYSID" "$W/segs/$s" 2>/dev/null; done; t1=$(ms)
echo "instactl wal push    again (already there):   $(rate $((t1 - t0)))"
for p in 1 8; do
	rm -rf "$W/get" && mkdir -p "$W/get"
	t0=$(ms); for s in $SEGS; do (cd "$W/get" && "$W/instactl" wal fetch --config "$W/wal.env" --system-id "$SYSID" --prefetch $p "$s" RECOVERYXLOG); done; t1=$(ms)
	echo "instactl wal fetch   --prefetch $p:             $(rate $((t1 - t0)))"
done

# ---- pgBackRest 2.x: its S3 client speaks only https, so nginx terminates TLS in front of moto
# (werkzeug's own --ssl drops connections pgBackRest's OpenSSL reads as "unexpected eof").
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$W/tls.key" -out "$W/tls.crt" -days 1 2>/dev/null
cat >"$W/nginx.conf" <<NG
daemon off; pid $W/nginx.pid; error_log $W/nginx.err; worker_processes 2;
events {}
http { access_log off; client_max_body_size 64m; proxy_request_buffering off; proxy_buffering off;
  server { listen 127.0.157.1:18157 ssl; ssl_certificate $W/tls.crt; ssl_certificate_key $W/tls.key;
    location / { proxy_pass http://127.0.0.1:$MOTO_PORT; proxy_set_header Host \$http_host; proxy_http_version 1.1; } } }
NG
nginx -c "$W/nginx.conf" & NGINX_PID=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.157.1/18157) 2>/dev/null && break; sleep 0.1; done
python3 - <<PY
import boto3; boto3.client("s3", endpoint_url="http://127.0.0.1:$MOTO_PORT").create_bucket(Bucket="pgbr")
PY
cat >"$W/pgbackrest.conf" <<CONF
[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=pgbr
repo1-s3-endpoint=127.0.157.1
repo1-storage-port=18157
repo1-storage-verify-tls=n
repo1-s3-uri-style=path
repo1-s3-region=us-east-1
repo1-s3-key=testing
repo1-s3-key-secret=testing
compress-type=none
log-path=$W
lock-path=$W
spool-path=$W/spool
log-level-console=warn
[main]
pg1-path=$W/pg
pg1-port=$PG_PORT
pg1-socket-path=$W/sock
CONF
chown -R postgres "$W"
PGBR() { runuser -u postgres -- pgbackrest --config="$W/pgbackrest.conf" --stanza=main "$@"; }
PGBR stanza-create
t0=$(ms); for s in $SEGS; do PGBR archive-push "$W/segs/$s"; done; t1=$(ms)
echo "pgbackrest archive-push (sync, https):       $(rate $((t1 - t0)))"
t0=$(ms); for s in $SEGS; do PGBR archive-push "$W/segs/$s" 2>/dev/null; done; t1=$(ms)
echo "pgbackrest archive-push again:               $(rate $((t1 - t0)))"
rm -rf "$W/get" && install -d -o postgres "$W/get"
t0=$(ms); for s in $SEGS; do PGBR archive-get "$s" "$W/get/RECOVERYXLOG"; done; t1=$(ms)
echo "pgbackrest archive-get (sync):               $(rate $((t1 - t0)))"
rm -rf "$W/get" "$W/spool" && install -d -o postgres "$W/get" "$W/spool"
t0=$(ms); for s in $SEGS; do PGBR --archive-async --process-max=8 archive-get "$s" "$W/get/RECOVERYXLOG"; done; t1=$(ms)
echo "pgbackrest archive-get (async, process-max 8): $(rate $((t1 - t0)))"
