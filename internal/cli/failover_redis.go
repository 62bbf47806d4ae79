package cli

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/topology"
)

// runRedisOp runs a switchover, failover or rejoin of the Redis group; the control database
// holds its topology, and the provider fences a lost master's host.
func runRedisOp(ctx context.Context, env *foEnv, op string, g topology.Group, name string, fl groupOpFlags, v *FailoverView) (failover.Report, error) {
	dsn, err := topology.ControlDSN(env.topo, "postgres", env.st.Shards.ControlDatabase)
	if err != nil {
		return failover.Report{}, err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return failover.Report{Group: g.Name}, fmt.Errorf("%w: the Redis topology lives in the control database, which does not answer (run instactl shard init first?): %v",
			failover.RedisErrPrecondition, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	fence := fencer{env}
	var rep failover.RedisReport
	switch {
	case op == "rejoin":
		rep, err = failover.RedisRejoin(ctx, failover.RedisRejoinOptions{DB: conn, JournalDir: env.jdir, Group: g.Name, Host: name})
	case fl.resume || fl.abort:
		o := failover.RedisResumeOptions{DB: conn, JournalDir: env.jdir, Group: g.Name, Fencer: fence, Force: fl.force}
		if fl.abort {
			rep, err = failover.RedisAbort(ctx, o)
		} else {
			rep, err = failover.RedisResume(ctx, o)
		}
	case op == "switchover":
		rep, err = failover.RedisSwitchover(ctx, failover.RedisSwitchoverOptions{DB: conn, JournalDir: env.jdir,
			Group: g.Name, Master: fl.from, Replica: fl.to})
	case op == "failover":
		rep, err = failover.RedisFailover(ctx, failover.RedisFailoverOptions{DB: conn, JournalDir: env.jdir,
			Group: g.Name, Master: fl.from, Replica: fl.to, Fencer: fence, Force: fl.force})
	}
	return redisAsReport(rep), err
}

// redisAsReport shows a Redis report in the shape every group operation prints.
func redisAsReport(r failover.RedisReport) failover.Report {
	out := failover.Report{Op: r.Op, Group: r.Group, OldPrimary: r.OldMaster, NewPrimary: r.NewMaster,
		OldEpoch: r.EpochBefore, NewEpoch: r.EpochAfter, LossWindowBytes: r.LossWindowBytes,
		LossWindowKnown: r.LossWindowKnown, WriteBlock: r.WriteBlock}
	for _, s := range r.Steps {
		out.Steps = append(out.Steps, failover.StepResult{Name: s.Name, Duration: s.Took, Err: s.Err})
	}
	if r.Op != "rejoin" && r.NewMaster != "" {
		out.Notes = append(out.Notes, fmt.Sprintf("replication offsets: old master %d, new master %d when it took over", r.OldOffset, r.NewOffset))
	}
	out.Notes = append(out.Notes, r.Warnings...)
	return out
}
