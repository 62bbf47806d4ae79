package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBackupPITRFlags(t *testing.T) {
	var got *BackupRestoreOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdBackupRestore(f, func() Output { return OutputText }, func(o *BackupRestoreOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"pg-0", "--to", "scratch-0", "--to-time", "2026-12-07 14:02:59", "--prefetch", "4"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Set != "pg-0" || got.To != "scratch-0" || got.PITR.Prefetch != 4 ||
		!got.PITR.Time.Equal(time.Date(2026, 12, 7, 14, 2, 59, 0, time.UTC)) {
		t.Fatalf("options %+v", got)
	}
}

func TestBackupPITRUsageErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stack.yaml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", "restore", "pg-0", "--to", "s", "--to-time", "yesterday"}, "--to-time: \"yesterday\" is no time"},
		{[]string{"backup", "restore", "pg-0", "--to", "s", "--to-lsn", "16B"}, "--to-lsn: invalid LSN"},
		{[]string{"backup", "restore", "pg-0", "--to", "s", "--to-lsn", "0/1", "--to-time", "2026-12-07T14:02:59Z"}, "not both"},
		{[]string{"backup", "restore", "pg-0", "--to-lsn", "0/1"}, "--to HOST is required"},
		{[]string{"backup", "restore", "pg-0", "--to", "s", "--to-lsn", "0/1", "--prefetch", "0"}, "--prefetch must be 1-64"},
		{[]string{"backup", "restore", "pg-0", "--to", "s", "--to-lsn", "0/1", "--allow-incomplete"}, "complete sets only"},
		{[]string{"backup", "restore", "pg-0", "--to", "s", "--to-lsn", "0/1", "--shard", "-2"}, "--shard must be a logical shard number"},
		{[]string{"backup", "restore", "SET", "--to", "s", "--shard", "3"}, "give --to-time or --to-lsn with it"},
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

func TestBackupVerifyArchiveFlags(t *testing.T) {
	var got *BackupVerifyOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdBackupVerify(f, func() Output { return OutputText }, func(o *BackupVerifyOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--archive", "--node", "pg-0"})
	if err := cmd.Execute(); err != nil || got == nil || !got.Archive || got.Node != "pg-0" {
		t.Fatalf("options %+v %v", got, err)
	}
	path := filepath.Join(t.TempDir(), "stack.yaml")
	_, stderr, code := run(t, "--stack", path, "backup", "verify", "--archive", "--target", "pg")
	if code != ExitUsage || !strings.Contains(stderr, "--archive checks the WAL archive") {
		t.Errorf("verify --archive --target: exit %d, %q", code, stderr)
	}
}

func TestBackupVerifyPITRDrillFlags(t *testing.T) {
	var got *BackupVerifyOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdBackupVerify(f, func() Output { return OutputText }, func(o *BackupVerifyOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--pitr-ago", "10m", "--node", "pg-0"})
	if err := cmd.Execute(); err != nil || got == nil || got.PITRAgo != 10*time.Minute || got.Node != "pg-0" {
		t.Fatalf("options %+v %v", got, err)
	}
	path := filepath.Join(t.TempDir(), "stack.yaml")
	_, stderr, code := run(t, "--stack", path, "backup", "verify", "--pitr-ago", "10m")
	if code != ExitUsage || !strings.Contains(stderr, "--pitr-ago needs --node") {
		t.Errorf("verify --pitr-ago without --node: exit %d, %q", code, stderr)
	}
}
