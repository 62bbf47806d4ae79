package failover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/topology"
)

// SwitchoverOptions say which group changes primary and how patiently.
type SwitchoverOptions struct {
	Deps
	// Group is the replication group ("pg-0").
	Group string
	// From, when set, is the host the caller takes for the primary: anything else is bad input.
	From string
	// To, when set, is the standby to promote; otherwise the streaming standby with the least
	// lag.
	To string
	// MaxLag is the largest replay lag, in bytes, a standby may have to be promoted (default
	// 16 MiB).
	MaxLag   int64
	Timeouts Timeouts
}

// DefaultMaxLag is SwitchoverOptions.MaxLag's default.
const DefaultMaxLag = 16 << 20

// Switchover makes a standby of opts.Group the primary without losing an acknowledged write:
// preflight; CHECKPOINT; PAUSE on the pooler; fast shutdown of the old primary; wait until the
// standby has received its shutdown checkpoint; promote; record in the topology (epoch + 1);
// repoint and RESUME the pooler; then the old primary follows the new one. Any failure before
// the promotion rolls back (ErrRolledBack: the old primary starts again and serves, the
// topology is unchanged); a failure after it leaves the journal for Resume (ErrHalfDone).
func Switchover(ctx context.Context, opts SwitchoverOptions) (Report, error) {
	o, lk, err := newOp(opts.Deps, opts.Group)
	if err != nil {
		return Report{}, err
	}
	defer lk.release()
	if err := checkFree(opts.JournalDir, opts.Group); err != nil {
		return Report{}, err
	}
	old, target, epoch, err := preflightSwitchover(ctx, opts)
	if err != nil {
		return Report{}, err
	}
	o.timeouts = opts.Timeouts.withDefaults()
	o.j = Journal{Op: OpSwitchover, Group: opts.Group, OldPrimary: old.Host, OldAddr: old.Addr,
		NewPrimary: target.Host, NewAddr: target.Addr, Epoch: epoch, Started: time.Now().UTC(), Timeouts: o.timeouts,
		Report: Report{Op: OpSwitchover, Group: opts.Group, OldPrimary: old.Host, NewPrimary: target.Host,
			OldEpoch: epoch, NewEpoch: epoch}}
	return o.switchover(ctx, "")
}

// switchover runs (or resumes at step from) the steps of a switchover.
func (o *op) switchover(ctx context.Context, from string) (Report, error) {
	err := o.run(ctx, o.switchoverSteps(), from)
	switch {
	case err == nil:
		return o.finish(StepDone)
	case errors.Is(err, errStopped) || o.j.Promoting:
		return o.j.Report, o.halfDone(err)
	}
	return o.rollback(ctx, err)
}

func (o *op) switchoverSteps() []step {
	steps := []step{
		{StepCheckpoint, o.checkpoint},
		{StepPause, o.pause},
		{StepStopOld, o.stopOld},
		{StepCatchUp, o.catchUp},
	}
	steps = append(steps, o.forwardSteps()...)
	return append(steps, step{StepRejoin, o.rejoinOld})
}

// preflightSwitchover checks the input and the group; it changes nothing.
func preflightSwitchover(ctx context.Context, opts SwitchoverOptions) (old, target topology.Member, epoch int64, err error) {
	g, err := opts.loadGroup(ctx, opts.Group)
	if err != nil {
		return old, target, 0, err
	}
	if opts.From != "" && opts.From != g.Primary {
		return old, target, 0, fmt.Errorf("%w: %s is not the primary of %s (%s is, epoch %d)", ErrBadInput, opts.From, g.Name, g.Primary, g.Epoch)
	}
	standbys := g.Standbys()
	if len(standbys) == 0 {
		return old, target, 0, fmt.Errorf("%w: %s has no standby to switch over to", ErrBadInput, g.Name)
	}
	if opts.To != "" {
		m, ok := g.Member(opts.To)
		if !ok || m.Host == g.Primary {
			return old, target, 0, fmt.Errorf("%w: %s is not a standby of %s (primary %s, standbys %s)", ErrBadInput, opts.To, g.Name, g.Primary, hosts(standbys))
		}
		standbys = []topology.Member{m}
	}
	old, err = g.PrimaryMember()
	if err != nil {
		return old, target, 0, err
	}
	maxLag := opts.MaxLag
	if maxLag <= 0 {
		maxLag = DefaultMaxLag
	}
	var problems []string
	best := int64(-1)
	err = opts.query(ctx, old, func(c *pgx.Conn) error {
		if rec, err := inRecovery(ctx, c); err != nil {
			return err
		} else if rec {
			return fmt.Errorf("%w: %s, recorded as primary of %s, is in recovery", ErrPrecondition, old.Host, g.Name)
		}
		var hints, sums string
		if err := c.QueryRow(ctx, "SELECT current_setting('wal_log_hints'), current_setting('data_checksums')").Scan(&hints, &sums); err != nil {
			return err
		}
		if hints != "on" && sums != "on" {
			return fmt.Errorf("%w: neither wal_log_hints nor data checksums are on, so pg_rewind could not rejoin %s", ErrPrecondition, old.Host)
		}
		for _, s := range standbys {
			state, lag, err := streamingState(ctx, c, s.Host)
			if err != nil {
				return err
			}
			switch {
			case state != "streaming":
				problems = append(problems, fmt.Sprintf("%s is not streaming from %s (pg_stat_replication state %q)", s.Host, old.Host, state))
			case lag > maxLag:
				problems = append(problems, fmt.Sprintf("%s replays %d bytes behind (max %d)", s.Host, lag, maxLag))
			case best < 0 || lag < best:
				best, target = lag, s
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrPrecondition) {
			return old, target, 0, err
		}
		return old, target, 0, fmt.Errorf("%w: preflight on the primary: %w", ErrPrecondition, err)
	}
	if best < 0 {
		return old, target, 0, fmt.Errorf("%w: no standby of %s can be promoted: %s", ErrPrecondition, g.Name, strings.Join(problems, "; "))
	}
	err = opts.query(ctx, target, func(c *pgx.Conn) error {
		var status string
		err := c.QueryRow(ctx, "SELECT status FROM pg_stat_wal_receiver").Scan(&status)
		if errors.Is(err, pgx.ErrNoRows) {
			status = "no WAL receiver"
		} else if err != nil {
			return err
		}
		if status != "streaming" {
			return fmt.Errorf("%w: %s's WAL receiver is %q, not streaming", ErrPrecondition, target.Host, status)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrPrecondition) {
			return old, target, 0, err
		}
		return old, target, 0, fmt.Errorf("%w: preflight on the standby: %w", ErrPrecondition, err)
	}
	return old, target, g.Epoch, nil
}

func hosts(ms []topology.Member) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Host)
	}
	return strings.Join(out, " ")
}

// checkpoint shortens the shutdown checkpoint that follows.
func (o *op) checkpoint(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return o.d.query(ctx, o.oldMember(), func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "CHECKPOINT")
		return err
	})
}

func (o *op) pause(ctx context.Context) error {
	if o.j.PausedAt.IsZero() {
		o.j.PausedAt = time.Now().UTC()
	}
	pctx, cancel := context.WithTimeout(ctx, o.timeouts.Pause)
	defer cancel()
	if err := o.d.Pooler.Pause(pctx, o.j.Group); err != nil {
		return fmt.Errorf("pause %s on the pooler (deadline %s): %w", o.j.Group, o.timeouts.Pause, err)
	}
	return nil
}

// stopOld stops the old primary fast and reads its shutdown checkpoint.
func (o *op) stopOld(ctx context.Context) error {
	srv, err := o.server(o.oldMember())
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, o.timeouts.Stop)
	defer cancel()
	if err := srv.Stop(sctx); err != nil {
		return err
	}
	cd, err := srv.ControlData(sctx)
	if err != nil {
		return err
	}
	if !cd.CleanShutdown() {
		return fmt.Errorf("%s is %q after its stop, not shut down", o.j.OldPrimary, cd.State)
	}
	o.j.ShutdownLSN, o.j.Report.ShutdownLSN = cd.Checkpoint, cd.Checkpoint
	return nil
}

// catchUp waits until the standby has received the old primary's shutdown checkpoint: then
// it holds every write the old primary acknowledged (the Patroni/repmgr rule).
func (o *op) catchUp(ctx context.Context) error {
	c, err := o.d.connect(ctx, o.newMember(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	var got LSN
	err = waitFor(ctx, o.timeouts.CatchUp, pollFast, fmt.Sprintf("%s to receive the shutdown checkpoint %s", o.j.NewPrimary, o.j.ShutdownLSN),
		func(ctx context.Context) (bool, string, error) {
			l, err := receiveLSN(ctx, c)
			got = l
			// The receive LSN is the end of what arrived: past the checkpoint's start means
			// every record before it, so every commit the old primary acknowledged, is here.
			return err == nil && l > o.j.ShutdownLSN, "received " + l.String(), err
		})
	if err != nil {
		return err
	}
	o.j.ReceiveLSN, o.j.Report.ReceiveLSN = got, got
	return nil
}

// rejoinOld makes the old primary a standby of the new one.
func (o *op) rejoinOld(ctx context.Context) error {
	srv, err := o.server(o.oldMember())
	if err != nil {
		return err
	}
	rewound, err := rejoinMember(ctx, o.d, srv, o.oldMember(), o.newMember(), o.timeouts.Stream)
	o.j.Report.Rewound = rewound
	return err
}

// rollback returns to the old primary after a failure before the promotion: it never stopped
// being the primary (no standby.signal was written), so it starts as one; then the pooler
// resumes. The topology was not touched.
func (o *op) rollback(ctx context.Context, cause error) (Report, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	o.d.logf("%s %s: rolling back to %s: %v", o.j.Op, o.j.Group, o.j.OldPrimary, cause)
	if err := o.startOldPrimary(ctx); err != nil {
		return o.j.Report, o.halfDone(fmt.Errorf("%w; the rollback failed too: %w", cause, err))
	}
	if err := o.resumePooler(ctx); err != nil {
		return o.j.Report, o.halfDone(fmt.Errorf("%w; the rollback failed too: %w", cause, err))
	}
	o.j.Report.NewPrimary = o.j.OldPrimary
	o.j.Report.NewEpoch = o.j.Report.OldEpoch
	o.j.Report.note("rolled back: %s is primary again", o.j.OldPrimary)
	rep, err := o.finish(StepRolledBack)
	if err != nil {
		return rep, err
	}
	return rep, fmt.Errorf("%s of %s: %w: %s is primary again, nothing changed in the topology: %w", o.j.Op, o.j.Group, ErrRolledBack, o.j.OldPrimary, cause)
}

// startOldPrimary starts the old primary and waits until it takes writes.
func (o *op) startOldPrimary(ctx context.Context) error {
	srv, err := o.server(o.oldMember())
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	return waitFor(ctx, 60*time.Second, pollSlow, o.j.OldPrimary+" to take writes again", func(ctx context.Context) (bool, string, error) {
		var rec bool
		err := o.d.query(ctx, o.oldMember(), func(c *pgx.Conn) error {
			var err error
			rec, err = inRecovery(ctx, c)
			return err
		})
		return err == nil && !rec, "in recovery", err
	})
}
