package failover

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Resume finishes the operation the journal of group recorded: from the recorded step on
// (every step is idempotent). Before the promotion a failure still rolls back; after it, only
// forward. A journal that ended (or none) is nothing to do.
func Resume(ctx context.Context, d Deps, group string) (Report, error) {
	o, lk, err := reopen(d, group)
	if err != nil || o == nil {
		return Report{}, err
	}
	defer lk.release()
	if o.j.Ended() {
		return o.j.Report, nil
	}
	return o.forward(ctx)
}

// Abort undoes the operation the journal of group recorded if no promotion may have happened:
// the old primary starts again (a switchover) and the pooler resumes. Once a promotion may
// have happened it finishes forward like Resume: a promoted standby may already hold
// acknowledged writes, so it is never demoted.
func Abort(ctx context.Context, d Deps, group string) (Report, error) {
	o, lk, err := reopen(d, group)
	if err != nil || o == nil {
		return Report{}, err
	}
	defer lk.release()
	if o.j.Ended() {
		return o.j.Report, nil
	}
	if o.j.Promoting {
		o.j.Report.note("abort after the promotion was sent finishes forward")
		return o.forward(ctx)
	}
	cause := errors.New("aborted by the operator")
	var rep Report
	switch o.j.Op {
	case OpSwitchover:
		rep, err = o.rollback(ctx, cause)
	case OpFailover:
		o.j.Report.note("the old primary's host %s may have been stopped by the fence: start it and check it before use", o.j.OldPrimary)
		rep, err = o.refuse(ctx, cause)
		if errors.Is(err, ErrPrecondition) {
			err = nil
		}
	default:
		return Report{}, fmt.Errorf("journal of %s: unknown operation %q", group, o.j.Op)
	}
	if errors.Is(err, ErrRolledBack) {
		err = nil
	}
	return rep, err
}

func reopen(d Deps, group string) (*op, *lock, error) {
	o, lk, err := newOp(d, group)
	if err != nil {
		return nil, nil, err
	}
	j, ok, err := ReadJournal(d.JournalDir, group)
	if err != nil || !ok {
		lk.release()
		return nil, nil, err
	}
	o.j, o.timeouts = j, j.Timeouts.withDefaults()
	o.j.Report.Steps = append(o.j.Report.Steps, StepResult{Name: "resumed at " + j.Step})
	return o, lk, nil
}

func (o *op) forward(ctx context.Context) (Report, error) {
	o.d.logf("%s %s: continuing at step %s (journal of %s)", o.j.Op, o.j.Group, o.j.Step, o.j.Updated.Format(time.RFC3339))
	switch o.j.Op {
	case OpSwitchover:
		return o.switchover(ctx, o.j.Step)
	case OpFailover:
		return o.failover(ctx, o.failoverSteps(o.j.NewPrimary), o.j.Step)
	}
	return Report{}, fmt.Errorf("journal of %s: unknown operation %q", o.j.Group, o.j.Op)
}
