package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWALInstallUsageErrors: bad input to wal install names the fix and exits 2 before the
// stack file is read.
func TestWALInstallUsageErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stack.yaml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"wal", "install", "--binary", filepath.Join(dir, "nope")}, "--binary " + filepath.Join(dir, "nope") + ": not a file"},
		{[]string{"wal", "install", "--binary", dir}, "not a file"},
		{[]string{"wal", "install", "pg-0"}, "takes no arguments"},
	} {
		_, stderr, code := run(t, append([]string{"--stack", path}, tc.args...)...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("a usage error read or wrote the stack file")
	}
}
