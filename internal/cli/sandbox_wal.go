package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/stack"
)

// sandboxWALInstall is `instactl wal install` as the last step of `sandbox up` on stacks with
// backup.wal_archive: the sandbox's hosts run on this machine, so this very binary is the
// archiver they need, and the archive runs from the first segment instead of waiting in
// pg_wal for an operator. (apply does not do it: on AWS the hosts may still be booting when
// it returns, and the binary must be built for their architecture: `wal install --binary`.)
func sandboxWALInstall(ctx context.Context, f *Factory, st *stack.Stack) error {
	if !st.Backup.WALArchive {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("wal install: find this instactl binary: %w", err)
	}
	// A Go test binary running the command in-process is no archiver: the test installs one.
	if strings.HasSuffix(filepath.Base(self), ".test") {
		f.IO.Statusf("sandbox: WAL archiver not installed: %s is a test binary; run `instactl wal install`", self)
		return nil
	}
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	r, err := backup.WALInstall(ctx, backup.WALInstallOptions{Env: d.env, Binary: self})
	if err != nil {
		return fmt.Errorf("the sandbox is up but its WAL archiver is not installed (Postgres keeps the WAL in pg_wal until it is; "+
			"run `instactl wal install`): %w", err)
	}
	state := "exists"
	if r.BucketCreated {
		state = "created"
	}
	f.IO.Statusf("sandbox: WAL archive: bucket %s %s, archiver %s installed on %d Postgres hosts", r.Bucket, state, r.Path, len(r.Hosts))
	return nil
}
