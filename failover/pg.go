package failover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/topology"
)

// connect opens a direct session to member m, bounded by timeout.
func (d Deps) connect(ctx context.Context, m topology.Member, timeout time.Duration) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := pgx.Connect(cctx, m.DSN(d.sqlUser(), d.sqlDB()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s (%s): %w", m.Host, m.Addr, err)
	}
	return c, nil
}

// query runs fn on a fresh session to m and closes it.
func (d Deps) query(ctx context.Context, m topology.Member, fn func(c *pgx.Conn) error) error {
	c, err := d.connect(ctx, m, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if err := fn(c); err != nil {
		return fmt.Errorf("%s: %w", m.Host, err)
	}
	return nil
}

// loadGroup reads group from the control database. A group it does not hold, or one that is
// not PostgreSQL, is bad input.
func (d Deps) loadGroup(ctx context.Context, group string) (topology.Group, error) {
	t, err := d.loadTopology(ctx)
	if err != nil {
		return topology.Group{}, err
	}
	g, ok := t.Group(group)
	if !ok {
		var names []string
		for _, g := range t.OfKind(topology.KindPostgres) {
			names = append(names, g.Name)
		}
		return topology.Group{}, fmt.Errorf("%w: no PostgreSQL replication group %q (known: %s)", ErrBadInput, group, strings.Join(names, " "))
	}
	if g.Kind != topology.KindPostgres {
		return topology.Group{}, fmt.Errorf("%w: %s is a %s group, not PostgreSQL", ErrBadInput, group, g.Kind)
	}
	return g, nil
}

func (d Deps) loadTopology(ctx context.Context) (topology.Topology, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, d.ControlDSN)
	if err != nil {
		return topology.Topology{}, fmt.Errorf("connect to the control database: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	return topology.Load(cctx, c)
}

func scanLSN(row pgx.Row) (LSN, error) {
	var s *string
	if err := row.Scan(&s); err != nil {
		return 0, err
	}
	if s == nil {
		return 0, nil
	}
	return ParseLSN(*s)
}

func inRecovery(ctx context.Context, c *pgx.Conn) (bool, error) {
	var r bool
	err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&r)
	return r, err
}

// receiveLSN is the WAL a standby has received (or replayed, if its walreceiver never ran).
func receiveLSN(ctx context.Context, c *pgx.Conn) (LSN, error) {
	return scanLSN(c.QueryRow(ctx, "SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text"))
}

// streamingState is the state of standby app (its application_name) in the primary's
// pg_stat_replication, and how far behind it replays; "" when it is not connected.
func streamingState(ctx context.Context, primary *pgx.Conn, app string) (state string, lag int64, err error) {
	err = primary.QueryRow(ctx, `SELECT state, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
		FROM pg_stat_replication WHERE application_name = $1 ORDER BY state = 'streaming' DESC LIMIT 1`, app).Scan(&state, &lag)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, nil
	}
	return state, lag, err
}

// timeline is the timeline a primary writes on now.
func timeline(ctx context.Context, c *pgx.Conn) (int, error) {
	var name string
	if err := c.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&name); err != nil {
		return 0, err
	}
	tl, err := strconv.ParseUint(name[:8], 16, 32)
	return int(tl), err
}

// switchPoint reads the timeline history of the primary on c and returns where timeline tl
// ended (the fork point of its successor); ok is false when the history does not name tl.
func switchPoint(ctx context.Context, c *pgx.Conn, current, tl int) (LSN, bool, error) {
	if current <= 1 {
		return 0, false, nil
	}
	var hist string
	if err := c.QueryRow(ctx, "SELECT pg_read_file($1)", fmt.Sprintf("pg_wal/%08X.history", current)).Scan(&hist); err != nil {
		return 0, false, fmt.Errorf("read the history of timeline %d: %w", current, err)
	}
	for _, line := range strings.Split(hist, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if n, err := strconv.Atoi(f[0]); err == nil && n == tl {
			l, err := ParseLSN(f[1])
			return l, err == nil, err
		}
	}
	return 0, false, nil
}

// Poll intervals of waitFor: the waits inside a switchover's write block poll fast on one
// session; the others poll gently, as they may open a session per check.
const (
	pollFast = 5 * time.Millisecond
	pollSlow = 100 * time.Millisecond
)

// waitFor polls check every interval until it reports done, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, check func(ctx context.Context) (bool, string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		done, state, err := check(ctx)
		if err == nil && done {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = state
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s (last seen: %s)", what, timeout, last)
		case <-time.After(interval):
		}
	}
}
