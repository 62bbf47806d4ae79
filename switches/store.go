package switches

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/controldb"
)

// NotifyChannel is the LISTEN/NOTIFY channel a change is announced on; the payload is the new
// global version.
const NotifyChannel = "switches"

// DB is what the functions of this package need from a connection to the control database:
// *pgx.Conn, *pgxpool.Pool and pgx.Tx all satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Change is one `switch set`.
type Change struct {
	Name string
	On   bool
	// Reason is required: the audit says why.
	Reason string
	// By names who changed it (user@host).
	By string
	// For, when positive, makes the setting expire that long after the change.
	For time.Duration
}

// Validate checks c before anything is written.
func (c Change) Validate() error {
	if _, err := Lookup(c.Name); err != nil {
		return err
	}
	if strings.TrimSpace(c.Reason) == "" {
		return errors.New("a reason is required (--reason \"...\"): the audit records why each switch changed")
	}
	if strings.TrimSpace(c.By) == "" {
		return errors.New("the change needs an author (who set it)")
	}
	if c.For < 0 {
		return fmt.Errorf("--for must be positive (got %s)", c.For)
	}
	return nil
}

// Prepare migrates the control schema (a control database made before the switches existed
// gets their tables) and lets appRole, the role the app servers connect as, read them.
func Prepare(ctx context.Context, db DB, appRole string) error {
	if _, err := controldb.Migrate(ctx, db); err != nil {
		return fmt.Errorf("prepare the switch tables: %w", err)
	}
	if err := controldb.GrantRead(ctx, db, appRole); err != nil {
		return fmt.Errorf("prepare the switch tables: %w", err)
	}
	return nil
}

// Event is one audited change: who, when, why, the effective value before and after.
type Event struct {
	ID        int64      `json:"id"`
	Name      string     `json:"name"`
	Before    bool       `json:"before"`
	After     bool       `json:"after"`
	Reason    string     `json:"reason"`
	SetBy     string     `json:"set_by"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	Version   int64      `json:"version"`
	At        time.Time  `json:"at"`
}

// Set records c: the switch's row, an audit event and the next global version, in one
// transaction that NOTIFYs NotifyChannel on commit. "Before" is the effective value at the
// database's clock (an expired setting counts as the default). It migrates the control schema
// first. Setting a switch to the value it has is recorded too (it may renew a reason or an
// expiry) and still bumps the version.
func Set(ctx context.Context, db DB, c Change) (Event, error) {
	if err := c.Validate(); err != nil {
		return Event{}, err
	}
	if _, err := controldb.Migrate(ctx, db); err != nil {
		return Event{}, fmt.Errorf("set switch %s: %w", c.Name, err)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return Event{}, fmt.Errorf("set switch %s: begin: %w", c.Name, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	var version int64
	var at time.Time
	// The row lock on switch_meta orders concurrent changes: versions follow commit order.
	if err := tx.QueryRow(ctx, `SELECT version, now() FROM switch_meta FOR UPDATE`).Scan(&version, &at); err != nil {
		return Event{}, fmt.Errorf("set switch %s: read version: %w", c.Name, err)
	}
	before := State{Settings: map[string]Setting{}}
	var old Setting
	err = tx.QueryRow(ctx, `SELECT enabled, expires_at FROM switches WHERE name = $1`, c.Name).Scan(&old.On, &old.ExpiresAt)
	switch {
	case err == nil:
		before.Settings[c.Name] = old
	case !errors.Is(err, pgx.ErrNoRows):
		return Event{}, fmt.Errorf("set switch %s: read it: %w", c.Name, err)
	}
	ev := Event{Name: c.Name, Before: before.On(c.Name, at), After: c.On, Reason: c.Reason, SetBy: c.By,
		Version: version + 1, At: at}
	if c.For > 0 {
		exp := at.Add(c.For)
		ev.ExpiresAt = &exp
	}
	if _, err := tx.Exec(ctx, `INSERT INTO switches (name, enabled, reason, set_by, set_at, expires_at, version)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, reason = EXCLUDED.reason,
			set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at, expires_at = EXCLUDED.expires_at, version = EXCLUDED.version`,
		c.Name, c.On, c.Reason, c.By, at, ev.ExpiresAt, ev.Version); err != nil {
		return Event{}, fmt.Errorf("set switch %s: %w", c.Name, err)
	}
	if err := tx.QueryRow(ctx, `INSERT INTO switch_events (name, before_enabled, after_enabled, reason, set_by, expires_at, version, at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`,
		c.Name, ev.Before, ev.After, c.Reason, c.By, ev.ExpiresAt, ev.Version, at).Scan(&ev.ID); err != nil {
		return Event{}, fmt.Errorf("set switch %s: audit: %w", c.Name, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE switch_meta SET version = $1`, ev.Version); err != nil {
		return Event{}, fmt.Errorf("set switch %s: bump version: %w", c.Name, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, NotifyChannel, fmt.Sprint(ev.Version)); err != nil {
		return Event{}, fmt.Errorf("set switch %s: notify: %w", c.Name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Event{}, fmt.Errorf("set switch %s: commit: %w", c.Name, err)
	}
	return ev, nil
}

// Load reads the state in one statement (one snapshot: the version matches the rows). A
// control database whose schema predates the switches has none set: version 0.
func Load(ctx context.Context, db DB) (State, error) {
	rows, err := db.Query(ctx, `SELECT m.version, s.name, s.enabled, s.reason, s.set_by, s.set_at, s.expires_at, s.version
		FROM switch_meta m LEFT JOIN switches s ON true`)
	if err != nil {
		return loadErr(err)
	}
	defer rows.Close()
	st := State{Settings: map[string]Setting{}}
	for rows.Next() {
		var name, reason, by *string
		var on *bool
		var setAt *time.Time
		var ver *int64
		var s Setting
		if err := rows.Scan(&st.Version, &name, &on, &reason, &by, &setAt, &s.ExpiresAt, &ver); err != nil {
			return State{}, fmt.Errorf("load switches: %w", err)
		}
		if name == nil {
			continue // no switch set yet
		}
		s.Name, s.On, s.Reason, s.SetBy, s.SetAt, s.Version = *name, *on, *reason, *by, *setAt, *ver
		st.Settings[s.Name] = s
	}
	if err := rows.Err(); err != nil {
		return loadErr(err)
	}
	return st, nil
}

func loadErr(err error) (State, error) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: schema before version 4
		return State{Settings: map[string]Setting{}}, nil
	}
	return State{}, fmt.Errorf("load switches: %w", err)
}

// History returns the last limit audited changes, newest first; name, when set, keeps one
// switch's.
func History(ctx context.Context, db DB, name string, limit int) ([]Event, error) {
	if name != "" {
		if _, err := Lookup(name); err != nil {
			return nil, err
		}
	}
	rows, err := db.Query(ctx, `SELECT id, name, before_enabled, after_enabled, reason, set_by, expires_at, version, at
		FROM switch_events WHERE $1 = '' OR name = $1 ORDER BY id DESC LIMIT $2`, name, limit)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return nil, nil
		}
		return nil, fmt.Errorf("switch history: %w", err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		err := r.Scan(&e.ID, &e.Name, &e.Before, &e.After, &e.Reason, &e.SetBy, &e.ExpiresAt, &e.Version, &e.At)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("switch history: %w", err)
	}
	return evs, nil
}
