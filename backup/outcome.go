package backup

import "errors"

// Outcome is how a run of Create ended, as one value: the most serious of its replicas'
// outcomes. A caller maps it to an exit code; cron tells the outcomes apart by that code.
type Outcome int

// The outcomes of Create, least serious first.
const (
	// OutcomeOK: every replica was backed up.
	OutcomeOK Outcome = iota
	// OutcomeUnsafe: a replica was skipped as unsafe (*UnsafeError); no set was made for it.
	OutcomeUnsafe
	// OutcomeLocked: another run holds a replica's backup lock (*LockedError).
	OutcomeLocked
	// OutcomePartial: a set was recorded but is not usable (*PartialError), or some replicas
	// were backed up and others failed.
	OutcomePartial
	// OutcomeFailed: the run failed and no usable set was made.
	OutcomeFailed
)

// String names the outcome as the metrics and messages do.
func (o Outcome) String() string {
	switch o {
	case OutcomeOK:
		return "ok"
	case OutcomeUnsafe:
		return "unsafe"
	case OutcomeLocked:
		return "locked"
	case OutcomePartial:
		return "partial"
	}
	return "failed"
}

// CreateOutcome ranks what one run of Create returned. Any plain failure is OutcomeFailed, or
// OutcomePartial when some replica was backed up all the same; otherwise a partial set wins
// over a held lock, and a held lock over an unsafe replica. err is the joined error Create
// returned; res may be nil.
func CreateOutcome(res *CreateResult, err error) Outcome {
	if err == nil {
		return OutcomeOK
	}
	var partial, locked, unsafe, failed bool
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var pe *PartialError
		var le *LockedError
		var ue *UnsafeError
		switch {
		case errors.As(e, &pe):
			partial = true
		case errors.As(e, &le):
			locked = true
		case errors.As(e, &ue):
			unsafe = true
		default:
			failed = true
		}
	}
	switch {
	case failed && res.Usable() > 0:
		return OutcomePartial
	case failed:
		return OutcomeFailed
	case partial:
		return OutcomePartial
	case locked:
		return OutcomeLocked
	case unsafe:
		return OutcomeUnsafe
	}
	return OutcomeFailed
}

// Usable counts the sets of the run that can be restored: every set recorded but the partial
// ones. A nil result has none.
func (r *CreateResult) Usable() int {
	if r == nil {
		return 0
	}
	n := 0
	for _, m := range r.Sets {
		if m.State != StatePartial {
			n++
		}
	}
	return n
}
