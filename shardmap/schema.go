package shardmap

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// FenceSQLState is the SQLSTATE the fence trigger raises ("shard N moved").
const FenceSQLState = "IG001"

// FenceTrigger is the name of the fence trigger on every shard table.
const FenceTrigger = "fence"

// SequenceName returns the schema-qualified sequence next_id() draws from.
func SequenceName(shard int) string { return SchemaName(shard) + ".global_id_seq" }

// ShardSchemaSQL returns idempotent DDL creating logical shard shard: its schema, the sequence,
// next_id(), the tables with their indexes, and the fence trigger (created disabled; an existing
// trigger keeps its state, so re-running this on a fenced shard does not unfence it).
//
// Every name inside function bodies is schema-qualified because pg_restore runs with an empty
// search_path and PL/pgSQL resolves names only when called.
func ShardSchemaSQL(shard int) string {
	if shard < 0 || shard >= MaxShards {
		panic(fmt.Sprintf("shardmap: shard %d out of range [0,%d)", shard, MaxShards))
	}
	s := SchemaName(shard)
	r := strings.NewReplacer("{s}", s, "{n}", fmt.Sprint(shard), "{epoch}", fmt.Sprint(EpochMillis),
		"{state}", FenceSQLState, "{fence}", FenceTrigger)
	var b strings.Builder
	b.WriteString(r.Replace(shardDDL))
	for _, t := range Tables {
		b.WriteString(r.Replace(strings.ReplaceAll(fenceDDL, "{t}", t)))
	}
	return b.String()
}

const shardDDL = `
CREATE SCHEMA IF NOT EXISTS {s};
CREATE SEQUENCE IF NOT EXISTS {s}.global_id_seq;
CREATE OR REPLACE FUNCTION {s}.next_id(OUT result bigint) LANGUAGE plpgsql AS $fn$
DECLARE
	our_epoch bigint := {epoch};
	seq_id bigint;
	now_millis bigint;
	shard_id int := {n};
BEGIN
	SELECT pg_catalog.nextval('{s}.global_id_seq') % 1024 INTO seq_id;
	SELECT pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000) INTO now_millis;
	result := (now_millis - our_epoch) << 23;
	result := result | (shard_id << 10);
	result := result | seq_id;
END;
$fn$;
CREATE OR REPLACE FUNCTION {s}.fence() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	RAISE EXCEPTION 'shard {n} moved' USING ERRCODE = '{state}',
		HINT = 'refresh the shard map and retry';
END;
$fn$;
CREATE TABLE IF NOT EXISTS {s}.users (
	id bigint PRIMARY KEY DEFAULT {s}.next_id(),
	username text NOT NULL UNIQUE,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.follows (
	follower_id bigint NOT NULL,
	followee_id bigint NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX IF NOT EXISTS follows_followee_idx ON {s}.follows (followee_id);
CREATE TABLE IF NOT EXISTS {s}.photos (
	id bigint PRIMARY KEY DEFAULT {s}.next_id(),
	user_id bigint NOT NULL,
	s3_key text NOT NULL,
	content_type text NOT NULL DEFAULT 'application/octet-stream',
	size bigint NOT NULL,
	sha256 text NOT NULL,
	caption text NOT NULL DEFAULT '',
	like_count int NOT NULL DEFAULT 0,
	comment_count int NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS photos_user_idx ON {s}.photos (user_id, id DESC);
CREATE TABLE IF NOT EXISTS {s}.likes (
	photo_id bigint NOT NULL,
	user_id bigint NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (photo_id, user_id)
);
CREATE INDEX IF NOT EXISTS likes_user_idx ON {s}.likes (user_id);
CREATE TABLE IF NOT EXISTS {s}.comments (
	id bigint PRIMARY KEY DEFAULT {s}.next_id(),
	photo_id bigint NOT NULL,
	user_id bigint NOT NULL,
	body text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS comments_photo_idx ON {s}.comments (photo_id, id);
`

const fenceDDL = `
DO $do$ BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
		WHERE tgrelid = '{s}.{t}'::regclass AND tgname = '{fence}') THEN
		CREATE TRIGGER {fence} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {s}.{t}
			FOR EACH STATEMENT EXECUTE FUNCTION {s}.fence();
		ALTER TABLE {s}.{t} DISABLE TRIGGER {fence};
	END IF;
END $do$;
`

// FenceSQL returns the statements that enable (on) or disable the fence on every table of
// shard. Enabled as ENABLE (origin) triggers, they stop application writes but not the logical
// replication apply worker, which runs with session_replication_role = replica.
func FenceSQL(shard int, on bool) string {
	verb := "DISABLE"
	if on {
		verb = "ENABLE"
	}
	var b strings.Builder
	for _, t := range Tables {
		fmt.Fprintf(&b, "ALTER TABLE %s.%s %s TRIGGER %s;\n", SchemaName(shard), t, verb, FenceTrigger)
	}
	return b.String()
}

// SetFence enables (on) or disables the fence of shard on the node behind db in one transaction
// with the given lock_timeout, so a long-running writer makes the fence fail fast instead of
// queueing every other writer behind its ACCESS EXCLUSIVE lock request.
func SetFence(ctx context.Context, db DB, shard int, on bool, lockTimeout time.Duration) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("fence shard %d: begin: %w", shard, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if lockTimeout > 0 {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", lockTimeout.Milliseconds())); err != nil {
			return fmt.Errorf("fence shard %d: set lock_timeout: %w", shard, err)
		}
	}
	if _, err := tx.Exec(ctx, FenceSQL(shard, on)); err != nil {
		return fmt.Errorf("fence shard %d (on=%v): %w", shard, on, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("fence shard %d: commit: %w", shard, err)
	}
	return nil
}

// IsFenced reports whether err (or any error it wraps) is the fence error of a moved shard.
func IsFenced(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == FenceSQLState
}
