package backup

import (
	"errors"
	"fmt"
	"testing"
)

func TestCreateOutcome(t *testing.T) {
	unsafe := &UnsafeError{Host: "pg-1", Target: "pg", Reason: "lag"}
	locked := &LockedError{Host: "pg-1"}
	partial := &PartialError{Set: "s", Reason: "x"}
	ok := &CreateResult{Sets: []*Manifest{{State: StateComplete}}}
	onlyPartial := &CreateResult{Sets: []*Manifest{{State: StatePartial}}}
	none := &CreateResult{}
	for _, tc := range []struct {
		name string
		res  *CreateResult
		err  error
		want Outcome
	}{
		{"ok", ok, nil, OutcomeOK},
		{"ok without a result", nil, nil, OutcomeOK},
		{"unsafe", none, unsafe, OutcomeUnsafe},
		{"unsafe wrapped", none, fmt.Errorf("x: %w", unsafe), OutcomeUnsafe},
		{"locked beats unsafe", none, errors.Join(unsafe, locked), OutcomeLocked},
		{"partial beats locked", none, errors.Join(locked, partial), OutcomePartial},
		{"failure", none, errors.New("ssh: boom"), OutcomeFailed},
		{"failure without a result", nil, errors.New("stack: boom"), OutcomeFailed},
		{"failure beside a usable set", ok, errors.New("ssh: boom"), OutcomePartial},
		{"failure beside a partial set only", onlyPartial, errors.Join(partial, errors.New("ssh: boom")), OutcomeFailed},
		{"failure beats locked", none, errors.Join(locked, errors.New("ssh: boom")), OutcomeFailed},
		{"unsafe beside a usable set", ok, unsafe, OutcomeUnsafe},
	} {
		if got := CreateOutcome(tc.res, tc.err); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestCreateResultUsable(t *testing.T) {
	res := &CreateResult{Sets: []*Manifest{{State: StateComplete}, {State: StatePartial}, {State: StateVerified}}}
	if got := res.Usable(); got != 2 {
		t.Errorf("Usable() = %d, want 2 (partial sets do not count)", got)
	}
	if got := (*CreateResult)(nil).Usable(); got != 0 {
		t.Errorf("nil result: Usable() = %d, want 0", got)
	}
}
