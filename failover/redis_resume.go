package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/instactl/instactl/topology"
)

// RedisResumeOptions names the group whose journal RedisResume or RedisAbort acts on.
type RedisResumeOptions struct {
	DB         topology.DB
	JournalDir string
	Group      string
	// Fencer and Force are used when the old master has to be fenced to finish (a failover
	// that stopped before its fence, or a switchover whose old master vanished).
	Fencer RedisFencer
	Force  bool
	// Settle bounds the wait for a FAILOVER that Redis is still running (default
	// RedisDefaultSettle beyond the journal's TIMEOUT).
	Settle time.Duration

	crashAt string
}

// RedisResume finishes the operation the journal records. Whatever the step, it looks at the
// servers first: a promoted member is finished forward (old master made its replica and cut
// off from its clients, topology recorded); an operation that promoted nobody is run again
// from its first side effect (a switchover re-checks its preflight, a failover fences if it
// had not and promotes).
func RedisResume(ctx context.Context, opts RedisResumeOptions) (RedisReport, error) {
	return redisConverge(ctx, opts, false)
}

// RedisAbort ends the operation the journal records with the least change: when nobody was
// promoted and the old master still serves, it stays master (the replica follows it again)
// and the topology is left as it was. A promoted member is never demoted (it may hold
// acknowledged writes): abort then finishes forward like RedisResume, and so it does when the
// old master is gone (fenced, unreachable) and the replica is the only member that can serve.
func RedisAbort(ctx context.Context, opts RedisResumeOptions) (RedisReport, error) {
	return redisConverge(ctx, opts, true)
}

func redisConverge(ctx context.Context, opts RedisResumeOptions, abort bool) (RedisReport, error) {
	if opts.Settle <= 0 {
		opts.Settle = RedisDefaultSettle
	}
	verb := "resume"
	if abort {
		verb = "abort"
	}
	rep := RedisReport{Group: opts.Group}
	lock, err := redisLockGroup(opts.JournalDir, opts.Group)
	if err != nil {
		return rep.fail(err)
	}
	defer lock.release()
	j, err := redisReadJournal(opts.JournalDir, opts.Group)
	if err != nil {
		return rep.fail(err)
	}
	if j == nil {
		return rep.fail(fmt.Errorf("%s: no operation of %s to %s (no journal %s): %w", verb, opts.Group, verb, redisJournalPath(opts.JournalDir, opts.Group), RedisErrBadInput))
	}
	rep.Op, rep.OldMaster, rep.NewMaster, rep.EpochBefore, rep.EpochAfter = j.Op+" "+verb, j.OldMaster, j.NewMaster, j.Epoch, j.Epoch
	rep.OldOffset = j.OldOffset
	g, err := redisGroup(ctx, opts.DB, j.Group)
	if err != nil {
		return rep.fail(err)
	}
	old, ok1 := g.Member(j.OldMaster)
	nw, ok2 := g.Member(j.NewMaster)
	if !ok1 || !ok2 {
		return rep.fail(fmt.Errorf("%s: journal names %s and %s, members of %s are %v: %w", verb, j.OldMaster, j.NewMaster, j.Group, redisHosts(g), RedisErrBadInput))
	}
	oc, nc := redisClient(old), redisClient(nw)
	defer oc.Close()
	defer nc.Close()

	// A FAILOVER that Redis runs on its own ends (done or rolled back) within its TIMEOUT.
	_ = rep.step("settle", func() error {
		return redisWait(ctx, time.Duration(j.TimeoutMS)*time.Millisecond+opts.Settle, "FAILOVER on "+j.OldMaster+" to end", func(ctx context.Context) (bool, error) {
			oi, err := redisReadInfo(ctx, oc)
			return err != nil || oi.FailoverState == "" || oi.FailoverState == "no-failover", nil
		})
	})
	oi, oerr := redisReadInfo(ctx, oc)
	ni, nerr := redisReadInfo(ctx, nc)
	newServes := nerr == nil && ni.Role == "master"
	oldServes := oerr == nil && ni.Role != "master" && oi.Role == "master" && (oi.FailoverState == "" || oi.FailoverState == "no-failover")

	switch {
	case newServes:
		if j.Op == redisOpFailover {
			if ni.Offset > 0 && j.NewOffset == 0 {
				j.NewOffset = ni.Offset
			}
			redisLossWindow(&rep, j)
		}
		if err := redisFinishForward(ctx, &rep, opts.DB, opts.JournalDir, j, oc, nc, opts.crashAt); err != nil {
			return rep.fail(fmt.Errorf("%s %s of %s: %w", verb, j.Op, j.Group, err))
		}
		return rep, nil

	case oldServes && (abort || j.Op == redisOpSwitchover):
		if abort {
			return redisStayWithOld(ctx, &rep, opts, j, verb)
		}
		// Resume a switchover that promoted nobody: run it again, preflight first.
		if err := redisRemoveJournal(opts.JournalDir, j.Group); err != nil {
			return rep.fail(err)
		}
		so := RedisSwitchoverOptions{DB: opts.DB, JournalDir: opts.JournalDir, Group: j.Group, Master: j.OldMaster, Replica: j.NewMaster,
			Timeout: time.Duration(j.TimeoutMS) * time.Millisecond, Settle: opts.Settle, crashAt: opts.crashAt}
		so.defaults()
		var nj *redisJournal
		if err := rep.step("preflight", func() error {
			var err error
			nj, err = redisSwitchoverPreflight(ctx, so, &rep)
			return err
		}); err != nil {
			return rep.fail(fmt.Errorf("%s switchover of %s: nothing was promoted and it cannot start again: %w", verb, j.Group, err))
		}
		return redisSwitchoverRun(ctx, so, &rep, nj)

	case nerr == nil && ni.Role == "slave":
		// Nobody promoted, and either this is a failover to resume or the old master no
		// longer serves: fence it (unless done) and promote the replica.
		j.Op = redisOpFailover
		fo := RedisFailoverOptions{DB: opts.DB, JournalDir: opts.JournalDir, Group: j.Group, Fencer: opts.Fencer, Force: opts.Force,
			Timeout: opts.Settle, crashAt: opts.crashAt}
		if !j.Fenced && opts.Fencer == nil && !opts.Force {
			return rep.fail(fmt.Errorf("%s %s of %s: %s must be fenced before %s is promoted, and there is no fencer (Force overrides): %w",
				verb, j.Op, j.Group, j.OldMaster, j.NewMaster, RedisErrHalfway))
		}
		return redisFailoverRun(ctx, fo, &rep, j)
	}
	return rep.fail(fmt.Errorf("%s %s of %s: neither member serves: %s is %s (%v), %s is %s (%v); fix by hand, the journal stays: %w",
		verb, j.Op, j.Group, j.OldMaster, oi.Role, oerr, j.NewMaster, ni.Role, nerr, RedisErrHalfway))
}

// redisStayWithOld ends an operation that promoted nobody: the old master keeps serving, the
// replica follows it, the topology names it.
func redisStayWithOld(ctx context.Context, rep *RedisReport, opts RedisResumeOptions, j *redisJournal, verb string) (RedisReport, error) {
	g, err := redisGroup(ctx, opts.DB, j.Group)
	if err != nil {
		return rep.fail(err)
	}
	if g.Primary != j.OldMaster {
		return rep.fail(fmt.Errorf("%s: %s serves as master but the topology names %s (epoch %d); the journal stays: %w", verb, j.OldMaster, g.Primary, g.Epoch, RedisErrHalfway))
	}
	old, _ := g.Member(j.OldMaster)
	nw, _ := g.Member(j.NewMaster)
	oc, nc := redisClient(old), redisClient(nw)
	defer oc.Close()
	defer nc.Close()
	if ni, err := redisReadInfo(ctx, nc); err == nil && (ni.MasterHost != old.Addr.Addr().String() || ni.MasterPort != int(old.Addr.Port())) {
		if err := rep.step("replicaof", func() error { return redisReplicaOf(ctx, nc, old) }); err != nil {
			rep.warn("%v", err)
		}
	}
	if err := rep.step("probe-write", func() error {
		return redisWait(ctx, RedisDefaultSettle, "master "+j.OldMaster+" to accept writes", func(ctx context.Context) (bool, error) {
			return true, redisProbeWrite(ctx, oc)
		})
	}); err != nil {
		rep.warn("%v", err)
	}
	rep.NewMaster = j.OldMaster
	if err := redisRemoveJournal(opts.JournalDir, j.Group); err != nil {
		return rep.fail(err)
	}
	return *rep, nil
}
