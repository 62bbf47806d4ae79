package failover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/topology"
)

// RedisSwitchoverOptions says which group to switch over and how long each wait may last.
type RedisSwitchoverOptions struct {
	// DB is a connection to the control database, which holds the topology.
	DB topology.DB
	// JournalDir holds the journal and the lock (<state>/failover).
	JournalDir string
	Group      string
	// Master, when set, is the host the caller believes is master; it must be the group's
	// primary now. Replica, when set, is the replica to promote (default: the first one).
	Master, Replica string
	// Timeout is FAILOVER's TIMEOUT: how long writes may stay paused while the replica
	// catches up before Redis rolls back (default RedisDefaultFailoverTimeout).
	Timeout time.Duration
	// MaxLagBytes bounds how far behind the replica may be at preflight (default 1 MiB).
	MaxLagBytes int64
	// Settle bounds how long instactl waits, beyond Timeout, for the roles to settle
	// (default RedisDefaultSettle).
	Settle time.Duration

	crashAt        string // tests: stop as if killed right after recording this step
	beforeFailover func() // tests: runs right before FAILOVER is sent
}

// redisCrashFailoverIssued is a crash point, not a step: right after Redis accepted FAILOVER.
const redisCrashFailoverIssued = "failover-issued"

// errRedisCrashed is what a run stopped by a test's crash point returns.
var errRedisCrashed = errors.New("simulated crash")

// redisCrash returns errRedisCrashed when a test asked to stop at step.
func redisCrash(crashAt, step string) error {
	if crashAt == step {
		return fmt.Errorf("after recording step %s: %w", step, errRedisCrashed)
	}
	return nil
}

func (o *RedisSwitchoverOptions) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = RedisDefaultFailoverTimeout
	}
	if o.MaxLagBytes <= 0 {
		o.MaxLagBytes = RedisDefaultMaxLagBytes
	}
	if o.Settle <= 0 {
		o.Settle = RedisDefaultSettle
	}
}

// RedisSwitchover moves the master of a Redis group to its replica without losing an
// acknowledged write: FAILOVER TO the replica (no FORCE) pauses writes on the master until the
// replica has its whole stream, then swaps the roles. The topology records the new master
// (app servers follow its NOTIFY) and the demoted master's clients are disconnected. If the
// replica does not catch up within Timeout, Redis rolls back by itself: the error wraps
// RedisErrRolledBack, the old master serves and the topology is unchanged.
func RedisSwitchover(ctx context.Context, opts RedisSwitchoverOptions) (RedisReport, error) {
	opts.defaults()
	rep := RedisReport{Op: redisOpSwitchover, Group: opts.Group}
	lock, err := redisLockGroup(opts.JournalDir, opts.Group)
	if err != nil {
		return rep.fail(err)
	}
	defer lock.release()
	if err := redisNoJournal(opts.JournalDir, opts.Group); err != nil {
		return rep.fail(err)
	}
	var j *redisJournal
	err = rep.step("preflight", func() error {
		var err error
		j, err = redisSwitchoverPreflight(ctx, opts, &rep)
		return err
	})
	if err != nil {
		return rep.fail(fmt.Errorf("switchover of %s: %w", opts.Group, err))
	}
	return redisSwitchoverRun(ctx, opts, &rep, j)
}

// redisNoJournal refuses to start an operation while another one is half way.
func redisNoJournal(dir, group string) error {
	j, err := redisReadJournal(dir, group)
	if err != nil {
		return err
	}
	if j != nil {
		return fmt.Errorf("a %s of %s (%s -> %s) stopped at step %s (%s): %w", j.Op, group, j.OldMaster, j.NewMaster, j.Step, redisJournalPath(dir, group), RedisErrHalfway)
	}
	return nil
}

// redisSwitchoverPreflight checks, changing nothing, that the switchover can start: the
// master is master, the replica is connected to it, online and close behind.
func redisSwitchoverPreflight(ctx context.Context, opts RedisSwitchoverOptions, rep *RedisReport) (*redisJournal, error) {
	g, err := redisGroup(ctx, opts.DB, opts.Group)
	if err != nil {
		return nil, err
	}
	if opts.Replica != "" && opts.Replica == g.Primary {
		return nil, fmt.Errorf("%s is the master of %s already: %w", opts.Replica, g.Name, RedisErrBadInput)
	}
	old, target, err := redisPick(g, opts.Master, opts.Replica)
	if err != nil {
		return nil, err
	}
	rep.OldMaster, rep.NewMaster = old.Host, target.Host
	rep.EpochBefore, rep.EpochAfter = g.Epoch, g.Epoch
	oc, tc := redisClient(old), redisClient(target)
	defer oc.Close()
	defer tc.Close()
	oi, err := redisReadInfo(ctx, oc)
	if err != nil {
		return nil, fmt.Errorf("master %s: %v: %w", old.Host, err, RedisErrPrecondition)
	}
	if oi.Role != "master" {
		return nil, fmt.Errorf("%s is %s per INFO, but the topology names it master of %s (epoch %d): %w", old.Host, oi.Role, g.Name, g.Epoch, RedisErrPrecondition)
	}
	if oi.FailoverState != "" && oi.FailoverState != "no-failover" {
		return nil, fmt.Errorf("master %s is in failover state %s already: %w", old.Host, oi.FailoverState, RedisErrPrecondition)
	}
	ti, err := redisReadInfo(ctx, tc)
	if err != nil {
		return nil, fmt.Errorf("replica %s: %v: %w", target.Host, err, RedisErrPrecondition)
	}
	if ti.Role != "slave" || ti.MasterHost != old.Addr.Addr().String() || ti.MasterPort != int(old.Addr.Port()) || !ti.LinkUp {
		return nil, fmt.Errorf("%s is not a replica of %s (%s) with its link up: role %s, master %s:%d, link up %t: %w",
			target.Host, old.Host, old.Addr, ti.Role, ti.MasterHost, ti.MasterPort, ti.LinkUp, RedisErrPrecondition)
	}
	r, ok := oi.replica(target.Addr.String())
	if !ok {
		return nil, fmt.Errorf("master %s does not list replica %s (%s) in INFO replication: %w", old.Host, target.Host, target.Addr, RedisErrPrecondition)
	}
	if r.State != "online" {
		return nil, fmt.Errorf("replica %s is %s, not online: %w", target.Host, r.State, RedisErrPrecondition)
	}
	if lag := oi.Offset - r.Offset; lag > opts.MaxLagBytes {
		return nil, fmt.Errorf("replica %s is %d bytes behind master %s (bound %d): %w", target.Host, lag, old.Host, opts.MaxLagBytes, RedisErrPrecondition)
	}
	if r.Lag > RedisMinReplicasMaxLag {
		return nil, fmt.Errorf("replica %s last acknowledged %d s ago (bound %d s): %w", target.Host, r.Lag, RedisMinReplicasMaxLag, RedisErrPrecondition)
	}
	rep.OldOffset = oi.Offset
	return &redisJournal{
		Op: redisOpSwitchover, Group: g.Name, OldMaster: old.Host, NewMaster: target.Host, Epoch: g.Epoch,
		OldOffset: oi.Offset, TimeoutMS: opts.Timeout.Milliseconds(), Started: time.Now().UTC(),
	}, nil
}

// redisSwitchoverRun does the switchover the journal describes, from its first side effect.
func redisSwitchoverRun(ctx context.Context, opts RedisSwitchoverOptions, rep *RedisReport, j *redisJournal) (RedisReport, error) {
	g, err := redisGroup(ctx, opts.DB, j.Group)
	if err != nil {
		return rep.fail(err)
	}
	old, _ := g.Member(j.OldMaster)
	target, _ := g.Member(j.NewMaster)
	oc, tc := redisClient(old), redisClient(target)
	defer oc.Close()
	defer tc.Close()
	dir := opts.JournalDir

	// The replica will be the master: it must refuse writes it cannot replicate, like the
	// master does. On a replica the setting has no effect until it is promoted.
	j.Step = redisStepPrepare
	if err := redisWriteJournal(dir, j); err != nil {
		return rep.fail(err)
	}
	if err := redisCrash(opts.crashAt, j.Step); err != nil {
		return rep.fail(err)
	}
	if err := rep.step("prepare", func() error { return redisSetMinReplicas(ctx, tc, RedisMinReplicasToWrite) }); err != nil {
		_ = redisRemoveJournal(dir, j.Group) // a replica's setting: nothing to undo
		return rep.fail(fmt.Errorf("switchover of %s: %v: %w", j.Group, err, RedisErrPrecondition))
	}

	j.Step = redisStepFailoverSent
	if err := redisWriteJournal(dir, j); err != nil {
		return rep.fail(err)
	}
	if err := redisCrash(opts.crashAt, j.Step); err != nil {
		return rep.fail(err)
	}
	if opts.beforeFailover != nil {
		opts.beforeFailover()
	}
	blockStart := time.Now()
	err = rep.step("failover", func() error {
		return oc.Do(ctx, "FAILOVER", "TO", target.Addr.Addr().String(), strconv.Itoa(int(target.Addr.Port())),
			"TIMEOUT", strconv.FormatInt(j.TimeoutMS, 10)).Err()
	})
	if err != nil {
		// Refused at once: Redis started nothing.
		_ = redisRemoveJournal(dir, j.Group)
		return rep.fail(fmt.Errorf("switchover of %s: %v: %w", j.Group, err, RedisErrPrecondition))
	}
	if err := redisCrash(opts.crashAt, redisCrashFailoverIssued); err != nil {
		return rep.fail(err)
	}
	var outcome string
	err = rep.step("wait-roles", func() error {
		var err error
		outcome, err = redisAwaitFailover(ctx, oc, tc, time.Duration(j.TimeoutMS)*time.Millisecond+opts.Settle, blockStart, rep)
		return err
	})
	if err != nil {
		return rep.fail(fmt.Errorf("switchover of %s: %v: %w", j.Group, err, RedisErrHalfway))
	}
	if outcome == "rolled-back" {
		if err := redisRemoveJournal(dir, j.Group); err != nil {
			return rep.fail(err)
		}
		return rep.fail(fmt.Errorf("switchover of %s: replica %s did not catch up within FAILOVER TIMEOUT %d ms; Redis rolled back, %s is master: %w",
			j.Group, j.NewMaster, j.TimeoutMS, j.OldMaster, RedisErrRolledBack))
	}
	if err := redisFinishForward(ctx, rep, opts.DB, dir, j, oc, tc, opts.crashAt); err != nil {
		return rep.fail(fmt.Errorf("switchover of %s: %w", j.Group, err))
	}
	return *rep, nil
}

// redisAwaitFailover watches a FAILOVER until it is done ("done": the target is master and
// accepts writes, the old master is its replica) or rolled back ("rolled-back": the old master
// is master again and accepts writes). It measures the write block from blockStart. Past the
// bound it aborts the FAILOVER and looks once more.
func redisAwaitFailover(ctx context.Context, oc, tc *redis.Client, bound time.Duration, blockStart time.Time, rep *RedisReport) (string, error) {
	var outcome string
	check := func(ctx context.Context) (bool, error) {
		oi, oerr := redisReadInfo(ctx, oc)
		// A target that does not answer soon (stopped, overloaded) must not stretch each
		// round: its role only decides once the old master has settled.
		tctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		ti, terr := redisReadInfo(tctx, tc)
		cancel()
		switch {
		case terr == nil && ti.Role == "master":
			if err := redisProbeWrite(ctx, tc); err != nil {
				return false, fmt.Errorf("new master: %w", err)
			}
			if rep.WriteBlock == 0 {
				rep.WriteBlock = time.Since(blockStart)
				rep.NewOffset = ti.Offset
			}
			if oerr != nil || oi.Role != "slave" || oi.FailoverState != "no-failover" {
				return false, fmt.Errorf("old master not yet its replica (role %s, failover state %s, %v)", oi.Role, oi.FailoverState, oerr)
			}
			outcome = "done"
			return true, nil
		case oerr == nil && oi.Role == "master" && oi.FailoverState == "no-failover":
			// Rolled back. A target that does not answer cannot be told apart from one that
			// was promoted just before the rollback; such a target has no replica and
			// min-replicas-to-write 1 (prepare), so it takes no write either way.
			if err := redisProbeWrite(ctx, oc); err != nil {
				return false, fmt.Errorf("old master after the rollback: %w", err)
			}
			if terr != nil {
				rep.warn("target does not answer after the rollback: %v", terr)
			}
			rep.WriteBlock = time.Since(blockStart)
			outcome = "rolled-back"
			return true, nil
		}
		return false, errors.Join(oerr, terr)
	}
	err := redisWait(ctx, bound, "roles to settle after FAILOVER", check)
	if err == nil {
		return outcome, nil
	}
	rep.warn("FAILOVER did not settle: %v; sending FAILOVER ABORT", err)
	if aerr := oc.Do(ctx, "FAILOVER", "ABORT").Err(); aerr != nil {
		rep.warn("FAILOVER ABORT: %v", aerr)
	}
	if err := redisWait(ctx, RedisDefaultSettle, "roles to settle after FAILOVER ABORT", check); err != nil {
		return "", err
	}
	return outcome, nil
}

// redisFinishForward completes an operation whose new master serves: the old master, when
// reachable, becomes its replica and loses its clients; the new master gets the
// min-replicas-to-write it can honour; the topology records it; the journal goes.
func redisFinishForward(ctx context.Context, rep *RedisReport, db topology.DB, dir string, j *redisJournal, oc, nc *redis.Client, crashAt string) error {
	j.Step = redisStepRecord
	if err := redisWriteJournal(dir, j); err != nil {
		return err
	}
	if err := redisCrash(crashAt, j.Step); err != nil {
		return err
	}
	err := rep.step("record", func() error {
		epoch, err := redisRecordPrimary(ctx, db, j.Group, j.NewMaster, j.Epoch)
		rep.EpochAfter = epoch
		return err
	})
	if err != nil {
		return fmt.Errorf("%s serves as master but the topology does not say so: %v: %w", j.NewMaster, err, RedisErrHalfway)
	}

	j.Step = redisStepKillClients
	if err := redisWriteJournal(dir, j); err != nil {
		return err
	}
	if err := redisCrash(crashAt, j.Step); err != nil {
		return err
	}
	ni, err := redisReadInfo(ctx, nc)
	if err != nil {
		return fmt.Errorf("new master %s: %v: %w", j.NewMaster, err, RedisErrHalfway)
	}
	if oi, err := redisReadInfo(ctx, oc); err != nil {
		rep.warn("old master %s unreachable (fenced or down): %v", j.OldMaster, err)
	} else {
		// A reachable old master that is not the new master's replica (restarted after a
		// fence, or a forced failover whose fence failed) is demoted now: its writes since
		// the promotion are lost either way, and it must not take more.
		if oi.Role != "slave" || oi.MasterHost != redisHostOf(nc) || oi.MasterPort != redisPortOf(nc) {
			rep.warn("old master %s was %s (master %s:%d); made it a replica of %s", j.OldMaster, oi.Role, oi.MasterHost, oi.MasterPort, j.NewMaster)
			if err := rep.step("demote-old", func() error { return redisReplicaOfAddr(ctx, oc, nc.Options().Addr) }); err != nil {
				return fmt.Errorf("%v: %w", err, RedisErrHalfway)
			}
		}
		if err := rep.step("kill-clients", func() error { return redisKillClients(ctx, oc) }); err != nil {
			rep.warn("%v", err)
		}
		redisRewriteConfig(ctx, oc, rep, j.OldMaster)
	}
	// With a replica online the master keeps min-replicas-to-write 1; alone it must take
	// writes, so 0 until RedisRejoin gives it a replica back.
	min := 0
	for _, r := range ni.Replicas {
		if r.State == "online" {
			min = RedisMinReplicasToWrite
		}
	}
	if err := rep.step("min-replicas", func() error { return redisSetMinReplicas(ctx, nc, min) }); err != nil {
		return fmt.Errorf("%v: %w", err, RedisErrHalfway)
	}
	rep.MinReplicasToWrite = min
	if err := redisWait(ctx, RedisDefaultSettle, "new master "+j.NewMaster+" to accept writes", func(ctx context.Context) (bool, error) {
		return true, redisProbeWrite(ctx, nc)
	}); err != nil {
		return fmt.Errorf("%v: %w", err, RedisErrHalfway)
	}
	redisRewriteConfig(ctx, nc, rep, j.NewMaster)
	return redisRemoveJournal(dir, j.Group)
}
