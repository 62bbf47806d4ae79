package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/failover"
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
