package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/instactl/instactl/backup"
	"github.com/spf13/cobra"
)

// BackupVerifyOptions are the arguments of `instactl backup verify`.
type BackupVerifyOptions struct {
	// Set is empty for the newest complete set (of Target, when given).
	Set     string
	Target  string
	Scratch string
	// KeepScratch leaves a scratch host created for the drill running (debugging).
	KeepScratch bool
	// Archive checks WAL archive continuity instead of drilling a set (backup_verify_archive.go).
	Archive bool
	Node    string
	// PITRAgo drills a point-in-time restore of Node to now minus it (backup_verify_archive.go).
	PITRAgo time.Duration
}

// NewCmdBackupVerify builds `instactl backup verify`. runF replaces the run in tests.
func NewCmdBackupVerify(f *Factory, out func() Output, runF func(*BackupVerifyOptions) error) *cobra.Command {
	o := &BackupVerifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify [SET]",
		Short: "Restore drill: restore a set on a scratch host, check it, record the result",
		Long: `Prove a set restores: restore it onto a scratch host, wait for a consistent open, run the
checks, record the outcome on the set (list then shows it verified) and clean up the
restored volumes. Postgres: it accepts queries read-write, the system identifier matches the
manifest, every user table is counted, pg_amcheck passes. Redis: the restored RDB is the one
the backup checked (sha256), every key without a TTL is loaded, and of the keys with a TTL at
least those whose TTL has not run out by the drill (keys that expired since the snapshot are
not counted against it); the output says what was compared.

SET defaults to the newest complete set (of --target, when given).

The scratch host:
  --scratch HOST   use an existing host of the stack (pg-0, an instance name or id) whose
                   role mount point (e.g. /var/lib/postgresql) is free and whose role port is
                   free on its address. Nothing of the host's own services is touched.
  (default)        sandbox stacks only: instactl creates a temporary instance with role
                   "scratch", tagged with the stack, on the next free address after the
                   stack's hosts, with the target role's mount point as a private directory,
                   and terminates it after the drill, pass or fail. A scratch host left behind
                   by a killed run is an instance not in the stack file: ` + "`instactl apply`" + `
                   (or ` + "`sandbox down`" + `) removes it.
On AWS, --scratch is required: a scratch host needs the database binaries, which only the
stack's own bootstrapped hosts have.

Exits 1 when the drill fails; the failure is recorded on the set too.

--archive checks the continuous WAL archive instead: for every Postgres node (or --node), every
segment from the start LSN of its oldest complete set to the segment before the primary's
current one must be archived, along the timelines the archive's history files lead to. A
missing segment is named, and exits 1: a point-in-time restore could not pass it. So does an
archiver failing or behind on the primary (archive_command failing since its last success,
more than 16 segments waiting, or one waiting longer than archive_timeout plus a minute),
before pg_wal fills the volume.

--pitr-ago D --node NODE drills a point-in-time restore instead: NODE restored to now minus D
on the scratch host (as above), pg_amcheck, torn down; it reports the measured RTO (volumes,
replay and its MB/s) and how far before the target the last replayed commit was.`,
		Example: `  instactl backup verify
  instactl backup verify --target redis
  instactl backup verify 20240501T100000Z-instagram-pg-1-3f2a --scratch memcached-0`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("backup verify takes at most one SET argument (got %d)", len(args))
			}
			if len(args) == 1 {
				o.Set = args[0]
				if err := backupCheckSetID(o.Set); err != nil {
					return err
				}
			}
			if o.Target != "" {
				if err := backupCheckTarget("--target", o.Target, false); err != nil {
					return err
				}
			}
			if o.PITRAgo != 0 {
				if err := o.checkPITRDrill(); err != nil {
					return err
				}
				if runF != nil {
					return runF(o)
				}
				return backupPITRDrillRun(cmd.Context(), f, out(), o)
			}
			if o.Archive {
				if err := o.checkArchive(); err != nil {
					return err
				}
				if runF != nil {
					return runF(o)
				}
				return backupVerifyArchiveRun(cmd.Context(), f, out(), o)
			}
			if runF != nil {
				return runF(o)
			}
			return backupVerifyRun(cmd.Context(), f, out(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Target, "target", "", "with no SET: drill the newest complete set of pg or redis")
	fl.StringVar(&o.Scratch, "scratch", "", "existing host to restore onto (default on the sandbox: a temporary scratch instance)")
	fl.BoolVar(&o.KeepScratch, "keep-scratch", false, "leave a created scratch host running after the drill (debugging)")
	fl.BoolVar(&o.Archive, "archive", false, "check the WAL archive's continuity from each node's oldest set instead of drilling a set")
	fl.StringVar(&o.Node, "node", "", "with --archive: check only this Postgres node (pg-0); with --pitr-ago: the node to drill")
	fl.DurationVar(&o.PITRAgo, "pitr-ago", 0, "drill a point-in-time restore of --node to now minus this (e.g. 10m) and report RTO and the gap reached")
	return cmd
}

func backupVerifyRun(ctx context.Context, f *Factory, out Output, o *BackupVerifyOptions) error {
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	rep, verr := backup.Drill(ctx, backup.DrillOptions{Env: d.env, Set: o.Set, Target: o.Target, Scratch: o.Scratch, KeepScratch: o.KeepScratch})
	if rep == nil {
		var setNF *backup.SetNotFoundError
		var hostNF *backup.HostNotFoundError
		var noScratch *backup.NoScratchError
		switch {
		case errors.As(verr, &hostNF):
			return usageErrorf("--scratch %w", verr)
		case errors.As(verr, &setNF), errors.As(verr, &noScratch):
			return usageErrorf("%w", verr)
		}
		return verr
	}
	if rerr := render(f.IO, out, rep, func(w io.Writer) error { return backupRenderVerify(w, rep) }); rerr != nil {
		return rerr
	}
	if rep.ScratchCreated && o.KeepScratch {
		f.IO.Statusf("verify: scratch host %s (%s) left running as asked", rep.Scratch, rep.ScratchID)
	}
	return verr
}

func backupRenderVerify(w io.Writer, rep *backup.DrillResult) error {
	v := rep.Verification
	verdict := "PASSED"
	if !v.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "Drill of %s on %s %s in %s.\n", rep.Set, rep.Scratch, verdict, v.Duration.Round(time.Millisecond))
	for _, c := range v.Checks {
		fmt.Fprintf(w, "  ok  %s\n", c)
	}
	if v.Error != "" {
		fmt.Fprintf(w, "  FAILED  %s\n", v.Error)
	}
	tables := make([]string, 0, len(rep.RowCounts))
	for t := range rep.RowCounts {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, t := range tables {
		fmt.Fprintf(w, "  rows  %s %d\n", t, rep.RowCounts[t])
	}
	return nil
}
