package topology

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/controldb"
	"github.com/instactl/instactl/shardmap"
)

// NotifyChannel is the LISTEN/NOTIFY channel a change of primary is announced on; the payload
// is "GROUP EPOCH".
const NotifyChannel = "topology"

// ErrConflict is returned by RecordPrimary when the group is not at the epoch the caller
// expected: someone else changed it first.
var ErrConflict = errors.New("topology changed concurrently")

// DB is what the functions of this package need from a connection: *pgx.Conn, *pgxpool.Pool
// and pgx.Tx all satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Seed migrates the control schema and records every group and member of t that the control
// database does not have yet. Recorded groups are left alone: after a failover the control
// database, not the stack file, knows the primary. It is idempotent.
func Seed(ctx context.Context, db DB, t Topology) error {
	if _, err := controldb.Migrate(ctx, db); err != nil {
		return fmt.Errorf("seed topology: %w", err)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("seed topology: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	for gi, g := range t.Groups {
		if _, err := tx.Exec(ctx, `INSERT INTO replication_groups (name, kind, ordinal, primary_host, epoch)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING`, g.Name, g.Kind, gi, g.Primary, max(g.Epoch, 1)); err != nil {
			return fmt.Errorf("seed topology: group %s: %w", g.Name, err)
		}
		for mi, m := range g.Members {
			if _, err := tx.Exec(ctx, `INSERT INTO replication_members (group_name, host, ordinal, address, port)
				VALUES ($1, $2, $3, $4, $5) ON CONFLICT (group_name, host) DO NOTHING`,
				g.Name, m.Host, mi, m.Addr.Addr().String(), int(m.Addr.Port())); err != nil {
				return fmt.Errorf("seed topology: member %s of %s: %w", m.Host, g.Name, err)
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("seed topology: commit: %w", err)
	}
	return nil
}

// Load reads the topology recorded in the control database, in one repeatable-read
// transaction (so it also works through PgBouncer in transaction mode).
func Load(ctx context.Context, db DB) (Topology, error) {
	var t Topology
	err := controldb.Snapshot(ctx, db, func(tx pgx.Tx) error {
		var err error
		t, err = readTopology(ctx, tx)
		return err
	})
	if err != nil {
		return Topology{}, fmt.Errorf("load topology: %w", err)
	}
	return t, nil
}

func readTopology(ctx context.Context, tx pgx.Tx) (Topology, error) {
	rows, err := tx.Query(ctx, `SELECT g.name, g.kind, g.primary_host, g.epoch, m.host, m.address, m.port
		FROM replication_groups g JOIN replication_members m ON m.group_name = g.name
		ORDER BY g.ordinal, g.name, m.ordinal`)
	if err != nil {
		return Topology{}, fmt.Errorf("is the control schema migrated? run `instactl shard init`: %w", err)
	}
	t := Topology{Source: SourceControl}
	var name, kind, primary, host, addr string
	var epoch int64
	var port int
	_, err = pgx.ForEachRow(rows, []any{&name, &kind, &primary, &epoch, &host, &addr, &port}, func() error {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return fmt.Errorf("member %s of %s: address %q: %w", host, name, addr, err)
		}
		if n := len(t.Groups); n == 0 || t.Groups[n-1].Name != name {
			t.Groups = append(t.Groups, Group{Name: name, Kind: kind, Primary: primary, Epoch: epoch})
		}
		g := &t.Groups[len(t.Groups)-1]
		g.Members = append(g.Members, Member{Host: host, Addr: netip.AddrPortFrom(a, uint16(port))})
		return nil
	})
	return t, err
}

// Current seeds the control database from the stack's topology where it has no record yet and
// returns what the control database records: the primaries now.
func Current(ctx context.Context, db DB, seed Topology) (Topology, error) {
	if err := Seed(ctx, db, seed); err != nil {
		return Topology{}, err
	}
	return Load(ctx, db)
}

// RecordPrimary records that host is now the primary of group, if the group is still at
// expectEpoch (compare-and-set), bumps its epoch and announces "GROUP EPOCH" on NotifyChannel
// on commit. In the same transaction the shard map's node registry entry named after the group
// (if any) is pointed at host's address, with the map version bumped and announced on
// shardmap.NotifyChannel. It changes no server: promoting and fencing are the caller's. A lost race
// returns an error wrapping ErrConflict.
func RecordPrimary(ctx context.Context, db DB, group, host string, expectEpoch int64) (Group, error) {
	what := fmt.Sprintf("record %s as primary of %s", host, group)
	tx, err := db.Begin(ctx)
	if err != nil {
		return Group{}, fmt.Errorf("%s: begin: %w", what, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	var epoch int64
	var primary string
	err = tx.QueryRow(ctx, "SELECT epoch, primary_host FROM replication_groups WHERE name = $1 FOR UPDATE", group).Scan(&epoch, &primary)
	if errors.Is(err, pgx.ErrNoRows) {
		return Group{}, fmt.Errorf("%s: no such replication group in the control database", what)
	}
	if err != nil {
		return Group{}, fmt.Errorf("%s: %w", what, err)
	}
	if epoch != expectEpoch {
		return Group{}, fmt.Errorf("%s: expected epoch %d, found epoch %d with primary %s: %w", what, expectEpoch, epoch, primary, ErrConflict)
	}
	var address string
	var port int
	err = tx.QueryRow(ctx, "SELECT address, port FROM replication_members WHERE group_name = $1 AND host = $2",
		group, host).Scan(&address, &port)
	if errors.Is(err, pgx.ErrNoRows) {
		return Group{}, fmt.Errorf("%s: %s is not a member of %s", what, host, group)
	}
	if err != nil {
		return Group{}, fmt.Errorf("%s: %w", what, err)
	}
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return Group{}, fmt.Errorf("%s: address %q of %s: %w", what, address, host, err)
	}
	// The shard map's node registry names the group's primary by address: it changes in the
	// same commit, so no reader sees the new primary with the old node address or the reverse.
	if _, err := shardmap.SetNodeAddr(ctx, tx, group, netip.AddrPortFrom(addr, uint16(port))); err != nil {
		return Group{}, fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.QueryRow(ctx, `UPDATE replication_groups SET primary_host = $2, epoch = epoch + 1, updated_at = now()
		WHERE name = $1 RETURNING epoch`, group, host).Scan(&epoch); err != nil {
		return Group{}, fmt.Errorf("%s: %w", what, err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, group+" "+strconv.FormatInt(epoch, 10)); err != nil {
		return Group{}, fmt.Errorf("%s: notify %s: %w", what, NotifyChannel, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Group{}, fmt.Errorf("%s: commit: %w", what, err)
	}
	t, err := Load(ctx, db)
	if err != nil {
		return Group{}, err
	}
	g, _ := t.Group(group)
	return g, nil
}

// Listen subscribes conn to NotifyChannel and calls fn with the group and its new epoch for
// every change until ctx ends or the connection fails. conn must be a dedicated session (not
// a PgBouncer transaction-mode connection); callers reconnect and reload on error.
func Listen(ctx context.Context, conn *pgx.Conn, fn func(group string, epoch int64)) error {
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return fmt.Errorf("listen %s: %w", NotifyChannel, err)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for %s notification: %w", NotifyChannel, err)
		}
		group, e, _ := strings.Cut(n.Payload, " ")
		epoch, _ := strconv.ParseInt(e, 10, 64)
		fn(group, epoch)
	}
}
