package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/topology"
)

// Timeouts bound the steps. Zero fields take the defaults.
type Timeouts struct {
	// Pause bounds PAUSE on the pooler (default 1 s); past it the switchover rolls back.
	Pause time.Duration `json:"pause"`
	// Stop bounds the old primary's fast shutdown (default 60 s).
	Stop time.Duration `json:"stop"`
	// CatchUp bounds the wait for the standby to receive the shutdown checkpoint (default 2 s).
	CatchUp time.Duration `json:"catch_up"`
	// Promote is pg_promote's wait_seconds (default 5 s).
	Promote time.Duration `json:"promote"`
	// Stream bounds the wait for a rejoined server to stream (default 60 s).
	Stream time.Duration `json:"stream"`
}

func (t Timeouts) withDefaults() Timeouts {
	t.Pause = defaultDuration(t.Pause, time.Second)
	t.Stop = defaultDuration(t.Stop, 60*time.Second)
	t.CatchUp = defaultDuration(t.CatchUp, 2*time.Second)
	t.Promote = defaultDuration(t.Promote, 5*time.Second)
	t.Stream = defaultDuration(t.Stream, 60*time.Second)
	return t
}

// op is one running operation: its dependencies, journal and lock.
type op struct {
	d        Deps
	j        Journal
	timeouts Timeouts
}

type step struct {
	name string
	run  func(ctx context.Context) error
}

// errStopped is the test hook's stop (Deps.StopAfter).
var errStopped = errors.New("stopped by the test hook")

// run runs steps from the one named from ("" = the first), journaling each before it runs.
func (o *op) run(ctx context.Context, steps []step, from string) error {
	i := 0
	if from != "" {
		i = slices.IndexFunc(steps, func(s step) bool { return s.name == from })
		if i < 0 {
			return fmt.Errorf("journal of %s names step %q, which a %s does not have", o.j.Group, from, o.j.Op)
		}
	}
	for _, s := range steps[i:] {
		o.j.Step = s.name
		if s.name == StepPromote {
			o.j.Promoting = true
		}
		o.j.Error = ""
		if err := writeJournal(o.d.JournalDir, &o.j); err != nil {
			return err
		}
		o.d.logf("%s %s: %s", o.j.Op, o.j.Group, s.name)
		start := time.Now()
		err := s.run(ctx)
		res := StepResult{Name: s.name, Duration: time.Since(start)}
		if err != nil {
			res.Err = err.Error()
			o.j.Error = err.Error()
		}
		o.j.Report.Steps = append(o.j.Report.Steps, res)
		if err != nil {
			_ = writeJournal(o.d.JournalDir, &o.j)
			return fmt.Errorf("step %s: %w", s.name, err)
		}
		if o.d.AfterStep != nil {
			o.d.AfterStep(s.name)
		}
		if o.d.StopAfter == s.name {
			_ = writeJournal(o.d.JournalDir, &o.j)
			return errStopped
		}
	}
	return nil
}

// finish ends the journal at step (StepDone or StepRolledBack) and returns the report.
func (o *op) finish(step string) (Report, error) {
	o.j.Step = step
	o.j.Error = ""
	err := writeJournal(o.d.JournalDir, &o.j)
	return o.j.Report, err
}

// halfDone says what the journal will do after an error past the point of no return.
func (o *op) halfDone(err error) error {
	what := "resume finishes it forward; abort does the same (a promoted standby is never demoted)"
	switch {
	case o.j.Promoting:
	case o.j.Op == OpFailover:
		what = "resume continues it; abort resumes the pooler without promoting anything"
	default:
		what = "resume continues it; abort returns to the old primary " + o.j.OldPrimary
	}
	return fmt.Errorf("%s of %s stopped at step %s: %w: %w\n(%s; journal %s)", o.j.Op, o.j.Group, o.j.Step, ErrHalfDone, err,
		what, journalPath(o.d.JournalDir, o.j.Group))
}

func (o *op) oldMember() topology.Member {
	return topology.Member{Host: o.j.OldPrimary, Addr: o.j.OldAddr}
}
func (o *op) newMember() topology.Member {
	return topology.Member{Host: o.j.NewPrimary, Addr: o.j.NewAddr}
}

func (o *op) server(m topology.Member) (Server, error) {
	if o.d.Server == nil {
		return nil, fmt.Errorf("no Server for %s: Deps.Server is not set", m.Host)
	}
	return o.d.Server(m)
}

// checkFree refuses to start over an unfinished journal.
func checkFree(dir, group string) error {
	j, ok, err := ReadJournal(dir, group)
	if err != nil {
		return err
	}
	if ok && !j.Ended() {
		return fmt.Errorf("%w: a %s of %s stopped at step %s (%s -> %s): run resume or abort first (journal %s)",
			ErrBusy, j.Op, group, j.Step, j.OldPrimary, j.NewPrimary, journalPath(dir, group))
	}
	return nil
}

// promote promotes the new primary unless it already is one, and checks it left recovery.
func (o *op) promote(ctx context.Context) error {
	wait := int(o.timeouts.Promote / time.Second)
	return o.d.query(ctx, o.newMember(), func(c *pgx.Conn) error {
		rec, err := inRecovery(ctx, c)
		if err != nil {
			return err
		}
		if rec {
			if o.j.ReceiveLSN == 0 {
				if o.j.ReceiveLSN, err = receiveLSN(ctx, c); err != nil {
					return err
				}
			}
			// pg_promote(wait => true) checks every 100 ms; asking without waiting and polling
			// every 5 ms takes that off the write block.
			var ok bool
			if err := c.QueryRow(ctx, "SELECT pg_promote(false)").Scan(&ok); err != nil {
				return fmt.Errorf("pg_promote: %w", err)
			}
			if !ok {
				return errors.New("pg_promote: the promotion could not be signalled")
			}
			// Poll on this session; should it break, on a new one.
			poll := c
			defer func() {
				if poll != c {
					poll.Close(context.WithoutCancel(ctx))
				}
			}()
			err := waitFor(ctx, time.Duration(max(wait, 1))*time.Second, pollFast, o.j.NewPrimary+" to leave recovery",
				func(ctx context.Context) (bool, string, error) {
					if poll.IsClosed() {
						nc, err := o.d.connect(ctx, o.newMember(), time.Second)
						if err != nil {
							return false, "", err
						}
						poll = nc
					}
					rec, err := inRecovery(ctx, poll)
					return err == nil && !rec, "in recovery", err
				})
			if err != nil {
				return fmt.Errorf("pg_promote: %w", err)
			}
		}
		if rec, err = inRecovery(ctx, c); err != nil {
			return err
		} else if rec {
			return errors.New("still in recovery after pg_promote")
		}
		return nil
	})
}

// record records the new primary in the control database: a compare-and-set on the epoch the
// operation started from, and no error when it is already recorded.
func (o *op) record(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, o.d.ControlDSN)
	if err != nil {
		return fmt.Errorf("connect to the control database: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	t, err := topology.Load(cctx, c)
	if err != nil {
		return err
	}
	g, ok := t.Group(o.j.Group)
	if !ok {
		return fmt.Errorf("group %s is gone from the control database", o.j.Group)
	}
	if g.Primary == o.j.NewPrimary && (o.j.Epoch == 0 || g.Epoch == o.j.Epoch+1) {
		o.j.Report.NewEpoch = g.Epoch
		return nil // recorded by an earlier run of this step
	}
	expect := o.j.Epoch
	if expect == 0 && g.Primary == o.j.OldPrimary {
		expect = g.Epoch // the epoch was unknown at the start (failover of the control group)
		o.j.Epoch, o.j.Report.OldEpoch = g.Epoch, g.Epoch
	}
	ng, err := topology.RecordPrimary(cctx, c, o.j.Group, o.j.NewPrimary, expect)
	if err != nil {
		return err
	}
	o.j.Report.NewEpoch = ng.Epoch
	return nil
}

func (o *op) repoint(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return o.d.Pooler.Repoint(ctx, o.j.Group, o.j.NewAddr)
}

func (o *op) resumePooler(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := o.d.Pooler.Resume(rctx, o.j.Group); err != nil {
		return err
	}
	if !o.j.PausedAt.IsZero() {
		o.j.Report.WriteBlock = time.Since(o.j.PausedAt)
	}
	return nil
}

// forwardSteps are the steps after the promotion, common to switchover and failover.
func (o *op) forwardSteps() []step {
	return []step{
		{StepPromote, o.promote},
		{StepRecord, o.record},
		{StepRepoint, o.repoint},
		{StepResume, o.resumePooler},
	}
}

// newOp locks the group; the caller releases.
func newOp(d Deps, group string) (*op, *lock, error) {
	if d.Pooler == nil {
		return nil, nil, fmt.Errorf("%w: no Pooler", ErrBadInput)
	}
	lk, err := acquire(d.JournalDir, group)
	if err != nil {
		return nil, nil, err
	}
	return &op{d: d}, lk, nil
}
