package controldb

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// EnsureDatabase creates database name owned by role owner through admin, a superuser session
// on the node that holds the control database. It does nothing when the database exists, and
// refuses when owner does not exist yet (the host has not finished its bootstrap).
func EnsureDatabase(ctx context.Context, admin DB, name, owner string) (created bool, err error) {
	var exists, ownerExists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1),
		EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)`, name, owner).Scan(&exists, &ownerExists); err != nil {
		return false, fmt.Errorf("look for database %s: %w", name, err)
	}
	if !ownerExists {
		return false, fmt.Errorf("role %s does not exist: the host has not finished its bootstrap", owner)
	}
	if exists {
		return false, nil
	}
	sql := fmt.Sprintf("CREATE DATABASE %s OWNER %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{owner}.Sanitize())
	if _, err := admin.Exec(ctx, sql); err != nil {
		return false, fmt.Errorf("create database %s: %w", name, err)
	}
	return true, nil
}

// GrantRead gives role SELECT on ReadTables, so app servers can follow the shard map and the
// topology. The schema must be migrated first.
func GrantRead(ctx context.Context, db DB, role string) error {
	sql := fmt.Sprintf("GRANT SELECT ON %s TO %s", strings.Join(ReadTables, ", "), pgx.Identifier{role}.Sanitize())
	if _, err := db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("grant %s read access to the shard map and topology: %w", role, err)
	}
	return nil
}
