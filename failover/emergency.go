package failover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/topology"
)

// FailoverOptions say which group lost its primary.
type FailoverOptions struct {
	Deps
	Group string
	// From, when set, is the host the caller takes for the lost primary: anything else is bad
	// input.
	From string
	// To, when set, is the standby to promote; otherwise the one that received the most WAL.
	To string
	// Force promotes even when fencing the old host failed (two primaries become possible if
	// it still runs: the pooler fence alone holds the app's writes away from it).
	Force bool
	// LastKnownLSN is the old primary's last WAL position monitoring saw, for the loss window.
	LastKnownLSN LSN
	// Topology is used when the control database cannot be read (it lives on the lost
	// primary: a failover of the control group). It should be the topology last read from
	// the control database (a cached copy), not the stack file's seed, which does not know
	// of earlier failovers. Nil: the control database must answer.
	Topology *topology.Topology
	Timeouts Timeouts
}

// Failover promotes a standby of opts.Group whose primary is gone. It fences first, on two
// layers: the pooler drops and holds the group's connections (KILL), and the Fencer stops the
// old host; if that fails it refuses unless opts.Force. Then it promotes the standby that
// received the most WAL, records it in the topology, repoints and resumes the pooler. The
// report's loss window compares the old primary's last known LSN with what the promoted
// standby had received.
func Failover(ctx context.Context, opts FailoverOptions) (Report, error) {
	o, lk, err := newOp(opts.Deps, opts.Group)
	if err != nil {
		return Report{}, err
	}
	defer lk.release()
	if err := checkFree(opts.JournalDir, opts.Group); err != nil {
		return Report{}, err
	}
	if opts.Fencer == nil {
		return Report{}, fmt.Errorf("%w: no Fencer", ErrBadInput)
	}
	g, err := opts.loadGroup(ctx, opts.Group)
	epoch := g.Epoch
	if err != nil && !errors.Is(err, ErrBadInput) && opts.Topology != nil {
		var ok bool
		if g, ok = opts.Topology.Group(opts.Group); !ok || g.Kind != topology.KindPostgres {
			return Report{}, fmt.Errorf("%w: no PostgreSQL replication group %q", ErrBadInput, opts.Group)
		}
		epoch = 0 // read from the control database once it is back, after the promotion
		err = nil
	}
	if err != nil {
		return Report{}, err
	}
	if opts.From != "" && opts.From != g.Primary {
		return Report{}, fmt.Errorf("%w: %s is not the primary of %s (%s is, epoch %d)", ErrBadInput, opts.From, g.Name, g.Primary, g.Epoch)
	}
	if len(g.Standbys()) == 0 {
		return Report{}, fmt.Errorf("%w: %s has no standby to fail over to", ErrBadInput, g.Name)
	}
	if opts.To != "" {
		if m, ok := g.Member(opts.To); !ok || m.Host == g.Primary {
			return Report{}, fmt.Errorf("%w: %s is not a standby of %s (primary %s, standbys %s)", ErrBadInput, opts.To, g.Name, g.Primary, hosts(g.Standbys()))
		}
	}
	old, err := g.PrimaryMember()
	if err != nil {
		return Report{}, err
	}
	o.timeouts = opts.Timeouts.withDefaults()
	o.j = Journal{Op: OpFailover, Group: g.Name, OldPrimary: old.Host, OldAddr: old.Addr, Epoch: epoch,
		LastKnownLSN: opts.LastKnownLSN, Started: time.Now().UTC(), Timeouts: o.timeouts,
		Standbys: g.Standbys(), Force: opts.Force,
		Report: Report{Op: OpFailover, Group: g.Name, OldPrimary: old.Host, OldEpoch: epoch, NewEpoch: epoch}}
	if m, ok := g.Member(opts.To); ok {
		o.j.NewPrimary, o.j.NewAddr = m.Host, m.Addr // so a resumed run chooses it too
	}
	// The old primary may still answer (a partition, not a crash): its position bounds the loss.
	_ = o.d.query(ctx, old, func(c *pgx.Conn) error {
		l, err := scanLSN(c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text"))
		if err == nil && l > o.j.LastKnownLSN {
			o.j.LastKnownLSN = l
			o.j.Report.note("the old primary %s still answered (at %s) before it was fenced", old.Host, l)
		}
		return err
	})
	return o.failover(ctx, o.failoverSteps(opts.To), "")
}

// failoverSteps are the steps of a failover before the promotion.
func (o *op) failoverSteps(to string) []step {
	return []step{
		{StepFencePooler, o.fencePooler},
		{StepFenceHost, o.fenceHost},
		{StepChoose, func(ctx context.Context) error { return o.choose(ctx, to) }},
	}
}

func (o *op) failover(ctx context.Context, pre []step, from string) (Report, error) {
	err := o.run(ctx, append(pre, o.forwardSteps()...), from)
	if err == nil {
		o.lossWindow()
		return o.finish(StepDone)
	}
	if errors.Is(err, errStopped) || o.j.Promoting {
		return o.j.Report, o.halfDone(err)
	}
	rep, rerr := o.refuse(ctx, err)
	if errors.Is(err, errRefused) {
		return rep, rerr
	}
	if errors.Is(rerr, ErrPrecondition) {
		rerr = fmt.Errorf("failover of %s: %w: nothing promoted, the pooler resumed: %w", o.j.Group, ErrRolledBack, err)
	}
	return rep, rerr
}

func (o *op) lossWindow() {
	o.j.Report.ReceiveLSN, o.j.Report.LastKnownLSN = o.j.ReceiveLSN, o.j.LastKnownLSN
	if o.j.LastKnownLSN == 0 {
		o.j.Report.LossWindowKnown = false
		o.j.Report.note("the old primary's last LSN is unknown: up to everything after %s may be lost", o.j.ReceiveLSN)
		return
	}
	o.j.Report.LossWindowKnown = true
	o.j.Report.LossWindowBytes = max(int64(o.j.LastKnownLSN)-int64(o.j.ReceiveLSN), 0)
}

func (o *op) fencePooler(ctx context.Context) error {
	if o.j.PausedAt.IsZero() {
		o.j.PausedAt = time.Now().UTC()
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return o.d.Pooler.Kill(ctx, o.j.Group)
}

var errRefused = errors.New("refused")

func (o *op) fenceHost(ctx context.Context) error {
	fctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	err := o.d.Fencer.Fence(fctx, o.j.OldPrimary)
	if err == nil {
		return nil
	}
	if o.j.Force {
		o.j.Report.note("FORCED: fencing host %s failed (%v); promoting anyway: if it still runs, only the pooler keeps the app's writes away from it", o.j.OldPrimary, err)
		return nil
	}
	return fmt.Errorf("%w: fencing host %s failed, so it may still run as a primary: %w (check it and use force to promote anyway)", errRefused, o.j.OldPrimary, err)
}

// refuse undoes the pooler fence after a refused host fence: nothing was promoted, so the
// group stays as it was.
func (o *op) refuse(ctx context.Context, cause error) (Report, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := o.resumePooler(ctx); err != nil {
		return o.j.Report, o.halfDone(fmt.Errorf("%w; resuming the pooler failed too: %w", cause, err))
	}
	rep, err := o.finish(StepRolledBack)
	if err != nil {
		return rep, err
	}
	return rep, fmt.Errorf("failover of %s: %w: nothing promoted, the pooler resumed: %w", o.j.Group, ErrPrecondition, cause)
}

// choose picks the standby that received the most WAL (or to), now that the old primary is
// fenced and sends nothing more.
func (o *op) choose(ctx context.Context, to string) error {
	var errs []error
	best := LSN(0)
	found := false
	for _, s := range o.j.Standbys {
		if to != "" && s.Host != to {
			continue
		}
		var l LSN
		err := o.d.query(ctx, s, func(c *pgx.Conn) error {
			rec, err := inRecovery(ctx, c)
			if err != nil {
				return err
			}
			if !rec {
				return errors.New("not in recovery: not a standby")
			}
			l, err = receiveLSN(ctx, c)
			return err
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !found || l > best {
			best, found = l, true
			o.j.NewPrimary, o.j.NewAddr = s.Host, s.Addr
		}
	}
	if !found {
		return fmt.Errorf("no standby of %s can be promoted: %w", o.j.Group, errors.Join(errs...))
	}
	for _, err := range errs {
		o.j.Report.note("not considered for promotion: %v", err)
	}
	o.j.ReceiveLSN = best
	o.j.Report.NewPrimary, o.j.Report.ReceiveLSN = o.j.NewPrimary, best
	return nil
}
