package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/shardmove"
	"github.com/instactl/instactl/topology"
)

// runPostgresOp runs a switchover, failover or rejoin of a Postgres group, with a client-side
// probe through the first app host's pooler around the first two.
func runPostgresOp(ctx context.Context, env *foEnv, op string, g topology.Group, name string, fl groupOpFlags, v *FailoverView) (failover.Report, error) {
	d, err := env.deps(ctx)
	if err != nil {
		return failover.Report{}, err
	}
	if op == "rejoin" {
		return failover.Rejoin(ctx, failover.RejoinOptions{Deps: d, Group: g.Name, Host: name})
	}
	if fl.resume || fl.abort {
		if fl.abort {
			return failover.Abort(ctx, d, g.Name)
		}
		return failover.Resume(ctx, d, g.Name)
	}
	if err := movesHoldGroup(ctx, d.ControlDSN, g.Name); err != nil {
		// A failover of the control group cannot read the control database until a standby is
		// promoted; no move can make progress meanwhile, so only an answer that names moves
		// holds it back.
		if op == "switchover" || errors.Is(err, failover.ErrBusy) {
			return failover.Report{Group: g.Name}, err
		}
		env.status("note: shard moves not checked: %v", err)
	}
	var probe *failover.Probe
	if fl.probe {
		probe = env.startProbe(ctx, g.Name)
	}
	var rep failover.Report
	switch op {
	case "switchover":
		rep, err = failover.Switchover(ctx, failover.SwitchoverOptions{Deps: d, Group: g.Name, From: fl.from, To: fl.to,
			MaxLag: fl.maxLag, Timeouts: failover.Timeouts{Pause: fl.pauseTimeout, CatchUp: fl.catchUpTimeout}})
	case "failover":
		var last failover.LSN
		if fl.lastKnownLSN != "" {
			if last, err = failover.ParseLSN(fl.lastKnownLSN); err != nil {
				return failover.Report{Group: g.Name}, fmt.Errorf("%w: --last-known-lsn %q: %v (want the form 0/3A000060)", failover.ErrBadInput, fl.lastKnownLSN, err)
			}
		}
		topo := env.topo
		rep, err = failover.Failover(ctx, failover.FailoverOptions{Deps: d, Group: g.Name, From: fl.from, To: fl.to,
			Force: fl.force, LastKnownLSN: last, Topology: &topo})
	}
	if probe != nil {
		r := probe.Stop()
		v.ProbeBlock, v.ProbeFailed = r.MaxGap, r.Failed
		if r.Failed > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%d probe writes failed; the last: %s", r.Failed, r.LastError))
		}
	}
	return rep, err
}

// startProbe starts a probe writer through the first running app host's PgBouncer, database
// group; when there is none it says so and the command goes on without one.
func (e *foEnv) startProbe(ctx context.Context, group string) *failover.Probe {
	set, err := e.poolerSet(ctx)
	if err != nil {
		e.status("note: no client-side probe: %v", err)
		return nil
	}
	t := set.Targets()[0]
	dsn := fmt.Sprintf("postgres://app@%s/%s?sslmode=disable&connect_timeout=5", t.Addr, group)
	p, err := failover.StartProbe(ctx, dsn, 5*time.Millisecond)
	if err != nil {
		e.status("note: no client-side probe through %s's pooler: %v", t.Host, err)
		return nil
	}
	return p
}

// withControl runs fn on a connection to the control database.
func withControl(ctx context.Context, dsn string, fn func(db topology.DB) error) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("control database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

// movesHoldGroup refuses a switchover or failover of a node while a shard move to or from it
// is running or stopped half way: its logical replication slot lives on the primary only
// (PostgreSQL 15 does not copy slots to standbys), so a change of primary would break the
// move. Before `shard init` there are no moves.
func movesHoldGroup(ctx context.Context, controlDSN, group string) error {
	var held []string
	err := withControl(ctx, controlDSN, func(db topology.DB) error {
		rows, err := db.Query(ctx, `SELECT id, shard, from_node, to_node, state, step FROM shard_moves
			WHERE state IN ($1, $2) AND (from_node = $3 OR to_node = $3) ORDER BY id`,
			shardmove.StateRunning, shardmove.StateFailed, group)
		if err != nil {
			return err
		}
		var id int64
		var shard int
		var from, to, state, step string
		_, err = pgx.ForEachRow(rows, []any{&id, &shard, &from, &to, &state, &step}, func() error {
			held = append(held, fmt.Sprintf("move %d (shard %d, %s -> %s) is %s at step %s: instactl shard resume %d (or shard abort %d)",
				id, shard, from, to, state, step, id, id))
			return nil
		})
		return err
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // no shard_moves yet
			return nil
		}
		return fmt.Errorf("%w: read the shard moves of %s: %v", failover.ErrPrecondition, group, err)
	}
	if len(held) > 0 {
		return fmt.Errorf("%w: %s has shard moves under way; finish them first:\n  %s", failover.ErrBusy, group, strings.Join(held, "\n  "))
	}
	return nil
}
