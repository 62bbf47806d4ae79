package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/instactl/instactl/walarchive"
	"github.com/spf13/cobra"
)

// WALEnvFile is the archive's configuration on every pg host, rendered by templates.
const WALEnvFile = "/etc/instagram/wal.env"

// ExitWALAbort is `wal fetch`'s exit status when the archive could not be read (not "not
// archived"): above 125, so Postgres aborts recovery instead of taking the archive as ended
// and stopping short of the recovery target.
const ExitWALAbort = 126

// WALOptions are the flags shared by `instactl wal push` and `wal fetch`.
type WALOptions struct {
	Config   string
	PGData   string
	SystemID string
	Spool    string
	Prefetch int
	Args     []string
}

// addWALCommands adds wal push and wal fetch, the archive_command and restore_command.
func addWALCommands(root *cobra.Command, f *Factory) {
	cmd := &cobra.Command{
		Use:   "wal",
		Short: "The continuous WAL archive: archive_command and restore_command of every Postgres primary",
		Long: `Postgres runs these, not people: archive_command = 'instactl wal push %p' on every
primary (archive_mode = on) and restore_command = 'instactl wal fetch %f %p' on a point-in-time
restore. Both run in the cluster's data directory and read the archive's bucket and group from
` + WALEnvFile + `; the system identifier comes from global/pg_control, so a cluster's WAL lives
under s3://BUCKET/wal/GROUP/SYSTEM-ID/. See docs/pitr.md.`,
	}
	cmd.AddCommand(NewCmdWALPush(f, nil), NewCmdWALFetch(f, nil))
	root.AddCommand(cmd)
}

func walFlags(cmd *cobra.Command, o *WALOptions) {
	cmd.Flags().StringVar(&o.Config, "config", WALEnvFile, "the archive's KEY=VALUE file (bucket, group, endpoint)")
	cmd.Flags().StringVar(&o.PGData, "pgdata", ".", "the cluster's data directory (Postgres runs the command there)")
	cmd.Flags().StringVar(&o.SystemID, "system-id", "", "the cluster's system identifier (default: read from PGDATA/global/pg_control)")
}

// NewCmdWALPush builds `instactl wal push PATH`. runF replaces the run in tests.
func NewCmdWALPush(f *Factory, runF func(*WALOptions) error) *cobra.Command {
	o := &WALOptions{}
	cmd := &cobra.Command{
		Use:   "push PATH",
		Short: "Archive one WAL segment or history file (archive_command)",
		Long: `Upload the file at PATH (pg_wal/NAME, Postgres' %p) to the archive under its name.
The same name already archived with the same SHA-256 is success (a retry after a crash); the
same name with other content is an error and Postgres keeps the file in pg_wal: two clusters
archive into one place, or the file is corrupt. Look before doing anything else.`,
		Example: `  # postgresql.conf, as instactl renders it
  archive_command = '/opt/instagram/bin/instactl wal push %p'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Args = args
			if runF != nil {
				return runF(o)
			}
			return walPushRun(cmd.Context(), f, o)
		},
	}
	walFlags(cmd, o)
	return cmd
}

// NewCmdWALFetch builds `instactl wal fetch NAME DEST`. runF replaces the run in tests.
func NewCmdWALFetch(f *Factory, runF func(*WALOptions) error) *cobra.Command {
	o := &WALOptions{}
	cmd := &cobra.Command{
		Use:   "fetch NAME DEST",
		Short: "Fetch one WAL file from the archive, prefetching the next ones (restore_command)",
		Long: `Write the archived file NAME (Postgres' %f) to DEST (%p). A segment that is not in the
spool yet is downloaded together with the next --prefetch segments of its timeline, in parallel;
those wait in --spool until Postgres asks for them.

Exit 1: NAME is not archived (Postgres reads it as the end of the archive). Exit 126: the
archive could not be read after retries; Postgres then aborts recovery instead of stopping
short of the recovery target.`,
		Example: `  restore_command = '/opt/instagram/bin/instactl wal fetch --prefetch 8 %f %p'`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Args = args
			if runF != nil {
				return runF(o)
			}
			return walFetchRun(cmd.Context(), f, o)
		},
	}
	walFlags(cmd, o)
	cmd.Flags().StringVar(&o.Spool, "spool", "instactl-wal-spool", "where prefetched segments wait (relative to the data directory; same file system as pg_wal)")
	cmd.Flags().IntVar(&o.Prefetch, "prefetch", walarchive.DefaultPrefetch, "segments downloaded at once (1: one sequential fetch per segment)")
	return cmd
}

func walOpen(ctx context.Context, o *WALOptions) (*walarchive.Archive, error) {
	cfg, err := walarchive.LoadEnvFile(o.Config)
	if err != nil {
		return nil, err
	}
	sys := o.SystemID
	if sys == "" {
		if sys, err = walarchive.SystemID(o.PGData); err != nil {
			return nil, fmt.Errorf("%w (run in the data directory or pass --pgdata or --system-id)", err)
		}
	}
	return cfg.Open(ctx, sys)
}

func walPushRun(ctx context.Context, f *Factory, o *WALOptions) error {
	a, err := walOpen(ctx, o)
	if err != nil {
		return err
	}
	res, err := a.Push(ctx, o.Args[0])
	if err != nil {
		return err
	}
	if res.Already {
		f.IO.Statusf("wal push: %s was already archived with the same content", res.Key)
	}
	return nil
}

func walFetchRun(ctx context.Context, f *Factory, o *WALOptions) error {
	if o.Prefetch < 1 {
		return usageErrorf("--prefetch must be >= 1 (got %d)", o.Prefetch)
	}
	a, err := walOpen(ctx, o)
	if err != nil {
		return withCode(ExitWALAbort, err)
	}
	opt := walarchive.FetchOptions{Spool: o.Spool, Prefetch: o.Prefetch}
	for attempt := 1; ; attempt++ {
		_, err = a.Fetch(ctx, o.Args[0], o.Args[1], opt)
		switch {
		case err == nil:
			return nil
		case walarchive.IsNotArchived(err):
			return withCode(ExitError, fmt.Errorf("wal fetch: %s is not in %s", o.Args[0], a.Location()))
		case attempt == 3 || errors.Is(err, context.Canceled):
			return withCode(ExitWALAbort, err)
		}
		time.Sleep(time.Duration(attempt) * time.Second)
	}
}
