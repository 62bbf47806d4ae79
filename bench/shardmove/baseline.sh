#!/usr/bin/env bash
# Stock-tool baselines on the same data as instactl's move, in the same run (called by the
# side-by-side benchmark, shardmove.BenchmarkSideBySide): (a) pg_dump | psql and (c) per-table
# binary COPY pipes with every index built afterwards, the peers' fastest method
# (shared/peers/shardmove/move_copy.sh, J=2). Usage: baseline.sh SRC_DSN DST_DSN SCHEMA.
# Prints "METHOD SECONDS [phases]" lines. The target database must be scratch: SCHEMA is dropped.
set -euo pipefail
A=$1 B=$2 SCHEMA=$3 J=${J:-2}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN A B SCHEMA PGTZ=UTC PGOPTIONS="-c client_min_messages=warning"
q() { "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
reset_b() { q "$B" "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null; q "$B" CHECKPOINT >/dev/null; q "$A" CHECKPOINT >/dev/null; }

# (a) pg_dump | psql
reset_b
t0=$(now)
"$PGBIN/pg_dump" -d "$A" -n "$SCHEMA" | "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$B" >/dev/null
echo "dump_plain $(el "$t0" "$(now)")"

# (c) binary COPY, indexes after
reset_b
mapfile -t TBL < <(q "$A" "SELECT c.relname || '|' || string_agg(quote_ident(a.attname), ',' ORDER BY a.attnum)
  FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace
  JOIN pg_attribute a ON a.attrelid=c.oid AND a.attnum>0 AND NOT a.attisdropped
  WHERE n.nspname='$SCHEMA' AND c.relkind='r' GROUP BY c.relname, c.oid ORDER BY pg_table_size(c.oid) DESC")
IDX=$(mktemp) CONS=$(mktemp)
trap 'rm -f "$IDX" "$CONS"' EXIT
q "$A" "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid=i.indrelid
    JOIN pg_namespace n ON n.oid=c.relnamespace WHERE n.nspname='$SCHEMA' ORDER BY pg_relation_size(i.indexrelid) DESC" >"$IDX"
q "$A" "SELECT format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s USING INDEX %I;', n.nspname, c.relname, co.conname,
           CASE co.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, ic.relname)
    FROM pg_constraint co JOIN pg_class c ON c.oid=co.conrelid JOIN pg_namespace n ON n.oid=c.relnamespace
    JOIN pg_class ic ON ic.oid=co.conindid WHERE n.nspname='$SCHEMA' AND co.contype IN ('p','u') ORDER BY 1" >"$CONS"
copy_one() {
    local t=${1%%|*} cols=${1#*|}
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$A" -c "COPY $SCHEMA.$t ($cols) TO STDOUT (FORMAT binary)" |
        "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$B" -c "COPY $SCHEMA.$t ($cols) FROM STDIN (FORMAT binary)"
}
index_one() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$B" -c "SET maintenance_work_mem = '256MB'" -c "$1" >/dev/null; }
export -f copy_one index_one
t0=$(now)
"$PGBIN/pg_dump" -d "$A" -n "$SCHEMA" -s --section=pre-data | "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$B" >/dev/null
t1=$(now)
printf '%s\n' "${TBL[@]}" | xargs -d '\n' -P "$J" -I{} bash -c 'copy_one "$@"' _ {}
t2=$(now)
xargs -d '\n' -P "$J" -I{} bash -c 'index_one "$@"' _ {} <"$IDX"
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$B" -f "$CONS" >/dev/null
t3=$(now)
echo "copy_binary $(el "$t0" "$t3") predata=$(el "$t0" "$t1") copy=$(el "$t1" "$t2") indexes=$(el "$t2" "$t3")"
reset_b
