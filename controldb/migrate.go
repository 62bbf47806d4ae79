package controldb

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what Migrate needs from a connection: *pgx.Conn, *pgxpool.Pool and pgx.Tx all satisfy
// it (in a pgx.Tx, Begin opens a savepoint).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Migration is one step of the control schema. Its SQL runs inside Migrate's transaction.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Result says what Migrate did.
type Result struct {
	// From is the version found (0: an empty or unversioned database), To the version now.
	From, To int
	// Applied lists the versions applied by this call.
	Applied []int
}

// lockKey is the advisory lock every Migrate takes, so that concurrent runs apply each
// migration once and never race on CREATE TABLE IF NOT EXISTS (which is not safe concurrently).
const lockKey = "instactl_control_schema"

const versionDDL = `CREATE TABLE IF NOT EXISTS schema_version (
	version int PRIMARY KEY,
	name text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`

// Latest is the schema version this build of instactl creates and understands.
func Latest() int { return Migrations[len(Migrations)-1].Version }

// Migrate brings the control database behind db to Latest: it takes a transaction-level
// advisory lock, creates schema_version if missing, and applies every migration above the
// recorded version in order, all in one transaction (a failed migration changes nothing).
// Running it again changes nothing. A database recorded at a newer version than this build
// knows is refused rather than guessed at.
func Migrate(ctx context.Context, db DB) (Result, error) {
	var res Result
	tx, err := db.Begin(ctx)
	if err != nil {
		return res, fmt.Errorf("migrate control database: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", lockKey); err != nil {
		return res, fmt.Errorf("migrate control database: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, versionDDL); err != nil {
		return res, fmt.Errorf("migrate control database: create schema_version: %w", err)
	}
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&res.From); err != nil {
		return res, fmt.Errorf("migrate control database: read schema_version: %w", err)
	}
	res.To = res.From
	if res.From > Latest() {
		return res, fmt.Errorf("control database schema is at version %d, newer than this instactl knows (%d): use the instactl that upgraded it, or a newer one", res.From, Latest())
	}
	for _, m := range Migrations {
		if m.Version <= res.From {
			continue
		}
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return res, fmt.Errorf("migrate control database to version %d (%s): %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO schema_version (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
			return res, fmt.Errorf("migrate control database: record version %d: %w", m.Version, err)
		}
		res.Applied = append(res.Applied, m.Version)
		res.To = m.Version
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("migrate control database: commit: %w", err)
	}
	return res, nil
}

// Version returns the schema version recorded in the control database behind db, 0 when it
// has no schema_version table (empty, or created before versions were recorded).
func Version(ctx context.Context, db DB) (int, error) {
	var exists bool
	if err := db.QueryRow(ctx, "SELECT to_regclass('schema_version') IS NOT NULL").Scan(&exists); err != nil {
		return 0, fmt.Errorf("read control schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := db.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("read control schema version: %w", err)
	}
	return v, nil
}

// Snapshot runs read in one repeatable-read, read-only transaction: a consistent view of
// several tables that also works through PgBouncer in transaction mode.
func Snapshot(ctx context.Context, db DB, read func(tx pgx.Tx) error) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return err
	}
	return read(tx)
}
