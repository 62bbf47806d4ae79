package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// TestApplyHints: an apply that created resources of a stack with backup.wal_archive says that
// wal install comes next; no hint without the archive, after a delete-only or failed apply.
func TestApplyHints(t *testing.T) {
	create := provision.Plan{Changes: []provision.Change{{Action: provision.Create, Kind: provision.KindInstance, Address: "instance.pg-0"}}}
	remove := provision.Plan{Changes: []provision.Change{{Action: provision.Delete, Kind: provision.KindInstance, Address: "instance.pg-1", ID: "i-1"}}}
	withWAL := &stack.Stack{Backup: stack.Backup{WALArchive: true}}
	failed := errors.New("apply failed")
	for _, tc := range []struct {
		name string
		st   *stack.Stack
		plan provision.Plan
		err  error
		hint bool
	}{
		{"created, archive on", withWAL, create, nil, true},
		{"created, no archive", &stack.Stack{}, create, nil, false},
		{"deleted only", withWAL, remove, nil, false},
		{"failed", withWAL, create, failed, false},
	} {
		var errOut bytes.Buffer
		f := &Factory{IO: &IOStreams{ErrOut: &errOut}}
		if err := applyHints(f, tc.st, tc.plan, tc.err); !errors.Is(err, tc.err) {
			t.Errorf("%s: error %v, want %v unchanged", tc.name, err, tc.err)
		}
		if got := strings.Contains(errOut.String(), "next: instactl wal install"); got != tc.hint {
			t.Errorf("%s: hint %v, want %v: %q", tc.name, got, tc.hint, errOut.String())
		}
	}
}
