package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/backup"
)

// WALInstallOptions are the flags of `instactl wal install`.
type WALInstallOptions struct {
	Binary string
}

// addWALInstallCommand adds `wal install` under the wal command addWALCommands made.
func addWALInstallCommand(root *cobra.Command, f *Factory, out func() Output) {
	for _, c := range root.Commands() {
		if c.Name() == "wal" {
			c.AddCommand(NewCmdWALInstall(f, out, nil))
			return
		}
	}
}

// NewCmdWALInstall builds `instactl wal install`. runF replaces the run in tests.
func NewCmdWALInstall(f *Factory, out func() Output, runF func(*WALInstallOptions) error) *cobra.Command {
	o := &WALInstallOptions{}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Create the WAL archive's bucket and install the archiver on every Postgres host",
		Long: `What backup.wal_archive needs before Postgres can archive: run it once after ` + "`instactl apply`" + `
turns the archive on, and again after each upgrade of instactl.

  1. The bucket STACK-wal is created unless it exists, tagged instactl:stack=STACK like the
     photo bucket. A bucket of that name owned by another stack (or account) is refused:
     bucket names are global, rename the stack.
  2. This instactl binary (or --binary) is copied to ` + "/opt/instagram/bin/instactl" + ` on every running
     Postgres host, the path archive_command and restore_command run. The copy is atomic: a
     temporary file beside it, checked against its SHA-256, renamed into place, so a running
     archive_command never sees half a binary.
  3. The installed binary is run there (instactl version): one that cannot run (another OS
     or CPU) is an error here, not an archiver failing forever while pg_wal fills.

Until the archiver is installed Postgres keeps every WAL segment in pg_wal and retries; it
loses nothing, but the disk fills. ` + "`instactl backup verify --archive`" + ` reports segments waiting.
Running install again is harmless. See docs/pitr.md.`,
		Example: `  # after apply turned backup.wal_archive on
  instactl wal install

  # install a binary built for the hosts (when this machine is not linux/amd64 like them)
  GOOS=linux GOARCH=amd64 go build -o /tmp/instactl-linux ./cmd/instactl
  instactl wal install --binary /tmp/instactl-linux`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return walInstallRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.Binary, "binary", "", "the instactl binary to install (default: this one)")
	return cmd
}

func walInstallRun(ctx context.Context, f *Factory, out Output, o *WALInstallOptions) error {
	bin := o.Binary
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("wal install: find this instactl binary (or pass --binary): %w", err)
		}
		bin = self
	} else if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() {
		return usageErrorf("--binary %s: not a file (want an instactl binary built for the hosts)", bin)
	}
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	r, err := backup.WALInstall(ctx, backup.WALInstallOptions{Env: d.env, Binary: bin})
	if err != nil {
		return err
	}
	return render(f.IO, out, r, func(w io.Writer) error {
		state := "exists"
		if r.BucketCreated {
			state = "created"
		}
		if _, err := fmt.Fprintf(w, "Bucket %s %s.\n", r.Bucket, state); err != nil {
			return err
		}
		for _, h := range r.Hosts {
			if _, err := fmt.Fprintf(w, "%s: %s installed, runs (%s).\n", h.Host, r.Path, h.Version); err != nil {
				return err
			}
		}
		_, err := fmt.Fprintf(w, "Archiver sha256 %s on %d Postgres hosts.\n", r.SHA256, len(r.Hosts))
		return err
	})
}
