package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/topology"
)

// RedisFailoverOptions says which group lost its master and how to fence it.
type RedisFailoverOptions struct {
	DB         topology.DB
	JournalDir string
	Group      string
	// Master, when set, must be the group's primary now; Replica, when set, is the replica
	// to promote (default: the first one).
	Master, Replica string
	// Fencer stops the old master's host before the replica is promoted.
	Fencer RedisFencer
	// Force promotes even when the fence failed (or there is no Fencer): the old master may
	// then still take writes that will be lost, until min-replicas-max-lag cuts it off.
	Force bool
	// LastKnownOffset is the old master's last master_repl_offset seen (by monitoring); with
	// it the report gives the loss window. 0: instactl asks the old master, if it answers.
	LastKnownOffset int64
	// Timeout bounds the wait for the promoted replica to serve (default RedisDefaultSettle).
	Timeout time.Duration

	crashAt string
}

// RedisFailover promotes the replica of a group whose master is gone: it fences the old
// master through opts.Fencer (and refuses when that fails, unless opts.Force), sends REPLICAOF
// NO ONE to the replica, makes it take writes although it has no replica (min-replicas-to-write
// 0 until RedisRejoin), records it in the topology and reports the possible loss window: the
// old master's last known offset minus the replica's offset at promotion, in bytes.
func RedisFailover(ctx context.Context, opts RedisFailoverOptions) (RedisReport, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = RedisDefaultSettle
	}
	rep := RedisReport{Op: redisOpFailover, Group: opts.Group}
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
		j, err = redisFailoverPreflight(ctx, opts, &rep)
		return err
	})
	if err != nil {
		return rep.fail(fmt.Errorf("failover of %s: %w", opts.Group, err))
	}
	return redisFailoverRun(ctx, opts, &rep, j)
}

func redisFailoverPreflight(ctx context.Context, opts RedisFailoverOptions, rep *RedisReport) (*redisJournal, error) {
	if opts.Fencer == nil && !opts.Force {
		return nil, fmt.Errorf("no fencer to stop the old master (promoting without one needs Force): %w", RedisErrBadInput)
	}
	g, err := redisGroup(ctx, opts.DB, opts.Group)
	if err != nil {
		return nil, err
	}
	if opts.Replica != "" && opts.Replica == g.Primary {
		return nil, fmt.Errorf("%s is the master of %s already: %w", opts.Replica, g.Name, RedisErrBadInput)
	}
	old, cand, err := redisPick(g, opts.Master, opts.Replica)
	if err != nil {
		return nil, err
	}
	rep.OldMaster, rep.NewMaster = old.Host, cand.Host
	rep.EpochBefore, rep.EpochAfter = g.Epoch, g.Epoch
	cc := redisClient(cand)
	defer cc.Close()
	ci, err := redisReadInfo(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("replica %s: %v: %w", cand.Host, err, RedisErrPrecondition)
	}
	if ci.Role != "slave" {
		return nil, fmt.Errorf("%s is %s already, not a replica: %w", cand.Host, ci.Role, RedisErrPrecondition)
	}
	last := opts.LastKnownOffset
	if last == 0 {
		// The old master may still answer (a failover of a live master): its offset is then
		// the best bound there is. The fence stops it right after.
		oc := redisClient(old)
		defer oc.Close()
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if oi, err := redisReadInfo(qctx, oc); err == nil && oi.Role == "master" {
			last = oi.Offset
			rep.warn("old master %s still answers (offset %d); it is fenced before the promotion", old.Host, oi.Offset)
		}
		cancel()
	}
	rep.OldOffset = last
	return &redisJournal{
		Op: redisOpFailover, Group: g.Name, OldMaster: old.Host, NewMaster: cand.Host, Epoch: g.Epoch,
		OldOffset: last, Started: time.Now().UTC(),
	}, nil
}

// redisFailoverRun fences (unless the journal says it is done) and promotes, then finishes.
func redisFailoverRun(ctx context.Context, opts RedisFailoverOptions, rep *RedisReport, j *redisJournal) (RedisReport, error) {
	g, err := redisGroup(ctx, opts.DB, j.Group)
	if err != nil {
		return rep.fail(err)
	}
	old, _ := g.Member(j.OldMaster)
	cand, _ := g.Member(j.NewMaster)
	oc, cc := redisClient(old), redisClient(cand)
	defer oc.Close()
	defer cc.Close()
	dir := opts.JournalDir

	if !j.Fenced {
		j.Step = redisStepFence
		if err := redisWriteJournal(dir, j); err != nil {
			return rep.fail(err)
		}
		if err := redisCrash(opts.crashAt, j.Step); err != nil {
			return rep.fail(err)
		}
		err := rep.step("fence", func() error {
			if opts.Fencer == nil {
				return fmt.Errorf("no fencer")
			}
			return opts.Fencer.Fence(ctx, j.OldMaster)
		})
		if err != nil && !opts.Force {
			// Nothing was promoted: the group is as it was (the old master possibly stopped).
			_ = redisRemoveJournal(dir, j.Group)
			return rep.fail(fmt.Errorf("failover of %s: fence %s: %v (refusing to promote %s while the old master may take writes; Force overrides): %w",
				j.Group, j.OldMaster, err, j.NewMaster, RedisErrPrecondition))
		}
		if err != nil {
			rep.warn("fence %s failed, promoting anyway (Force): %v", j.OldMaster, err)
		}
		j.Fenced = true
	}

	j.Step = redisStepPromote
	ci, err := redisReadInfo(ctx, cc)
	if err != nil {
		return rep.fail(fmt.Errorf("failover of %s: replica %s: %v: %w", j.Group, j.NewMaster, err, RedisErrHalfway))
	}
	if ci.Role == "slave" {
		j.NewOffset = ci.Offset
	}
	if err := redisWriteJournal(dir, j); err != nil {
		return rep.fail(err)
	}
	if err := redisCrash(opts.crashAt, j.Step); err != nil {
		return rep.fail(err)
	}
	if err := rep.step("promote", func() error { return redisPromote(ctx, cc, opts.Timeout) }); err != nil {
		return rep.fail(fmt.Errorf("failover of %s: %v: %w", j.Group, err, RedisErrHalfway))
	}
	redisLossWindow(rep, j)
	if err := redisFinishForward(ctx, rep, opts.DB, dir, j, oc, cc, opts.crashAt); err != nil {
		return rep.fail(fmt.Errorf("failover of %s: %w", j.Group, err))
	}
	return *rep, nil
}

// redisPromote turns a replica into a master that takes writes.
func redisPromote(ctx context.Context, c *redis.Client, bound time.Duration) error {
	if err := c.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		return fmt.Errorf("REPLICAOF NO ONE on %s: %w", c.Options().Addr, err)
	}
	// Alone, a master with min-replicas-to-write 1 refuses every write.
	if err := redisSetMinReplicas(ctx, c, 0); err != nil {
		return err
	}
	return redisWait(ctx, bound, "promoted "+c.Options().Addr+" to be master and accept writes", func(ctx context.Context) (bool, error) {
		i, err := redisReadInfo(ctx, c)
		if err != nil || i.Role != "master" {
			return false, err
		}
		return true, redisProbeWrite(ctx, c)
	})
}

// redisLossWindow fills the report's offsets and loss window from the journal.
func redisLossWindow(rep *RedisReport, j *redisJournal) {
	rep.OldOffset, rep.NewOffset = j.OldOffset, j.NewOffset
	if j.OldOffset > 0 && j.NewOffset > 0 {
		rep.LossWindowKnown = true
		rep.LossWindowBytes = max(0, j.OldOffset-j.NewOffset)
	}
}

// RedisRejoinOptions names the former master that is to follow the current one.
type RedisRejoinOptions struct {
	DB         topology.DB
	JournalDir string
	Group      string
	// Host is the member to make a replica; it must not be the group's primary.
	Host string
	// Timeout bounds the wait for its link to come up (default RedisDefaultLinkTimeout;
	// a full resync of a large dataset takes longer).
	Timeout time.Duration
}

// RedisRejoin makes Host (a former master) a replica of the group's master now, waits until
// its link is up and the master counts it, and then gives the master back
// min-replicas-to-write 1. Whatever Host wrote after it lost the master role is discarded by
// the full resync (the failover report gave that loss). It is idempotent: after a crash, run
// it again.
func RedisRejoin(ctx context.Context, opts RedisRejoinOptions) (RedisReport, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = RedisDefaultLinkTimeout
	}
	rep := RedisReport{Op: "rejoin", Group: opts.Group, OldMaster: opts.Host}
	lock, err := redisLockGroup(opts.JournalDir, opts.Group)
	if err != nil {
		return rep.fail(err)
	}
	defer lock.release()
	if err := redisNoJournal(opts.JournalDir, opts.Group); err != nil {
		return rep.fail(err)
	}
	g, err := redisGroup(ctx, opts.DB, opts.Group)
	if err != nil {
		return rep.fail(err)
	}
	h, ok := g.Member(opts.Host)
	if !ok {
		return rep.fail(fmt.Errorf("rejoin: %q is not a member of %s (members %v): %w", opts.Host, g.Name, redisHosts(g), RedisErrBadInput))
	}
	if opts.Host == g.Primary {
		return rep.fail(fmt.Errorf("rejoin: %s is the master of %s (epoch %d): %w", opts.Host, g.Name, g.Epoch, RedisErrBadInput))
	}
	m, err := g.PrimaryMember()
	if err != nil {
		return rep.fail(fmt.Errorf("rejoin: %v: %w", err, RedisErrBadInput))
	}
	rep.NewMaster, rep.EpochBefore, rep.EpochAfter = m.Host, g.Epoch, g.Epoch
	mc, hc := redisClient(m), redisClient(h)
	defer mc.Close()
	defer hc.Close()
	mi, err := redisReadInfo(ctx, mc)
	if err != nil || mi.Role != "master" {
		return rep.fail(fmt.Errorf("rejoin: master %s per the topology is not master per INFO (role %q, %v): %w", m.Host, mi.Role, err, RedisErrPrecondition))
	}
	if _, err := redisReadInfo(ctx, hc); err != nil {
		return rep.fail(fmt.Errorf("rejoin: %s: %v: %w", opts.Host, err, RedisErrPrecondition))
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		// Set first so that, if this host is ever promoted by a switchover, it fences itself.
		{"min-replicas-on-replica", func() error { return redisSetMinReplicas(ctx, hc, RedisMinReplicasToWrite) }},
		{"replicaof", func() error { return redisReplicaOf(ctx, hc, m) }},
		// Its clients were talking to a master; they reconnect to the one the topology names.
		{"kill-clients", func() error { return redisKillClients(ctx, hc) }},
		{"wait-link", func() error {
			return redisWait(ctx, opts.Timeout, opts.Host+" to replicate from "+m.Host, func(ctx context.Context) (bool, error) {
				hi, err := redisReadInfo(ctx, hc)
				if err != nil || !hi.LinkUp {
					return false, err
				}
				mi, err := redisReadInfo(ctx, mc)
				if err != nil {
					return false, err
				}
				r, ok := mi.replica(h.Addr.String())
				return ok && r.State == "online", nil
			})
		}},
		{"min-replicas", func() error { return redisSetMinReplicas(ctx, mc, RedisMinReplicasToWrite) }},
		{"probe-write", func() error {
			return redisWait(ctx, RedisDefaultSettle, "master "+m.Host+" to accept writes", func(ctx context.Context) (bool, error) {
				return true, redisProbeWrite(ctx, mc)
			})
		}},
	}
	for _, s := range steps {
		if err := rep.step(s.name, s.fn); err != nil {
			return rep.fail(fmt.Errorf("rejoin %s to %s: step %s: %w", opts.Host, m.Host, s.name, err))
		}
	}
	rep.MinReplicasToWrite = RedisMinReplicasToWrite
	if mi, err := redisReadInfo(ctx, mc); err == nil {
		rep.NewOffset = mi.Offset
	}
	redisRewriteConfig(ctx, hc, &rep, opts.Host)
	redisRewriteConfig(ctx, mc, &rep, m.Host)
	return rep, nil
}
