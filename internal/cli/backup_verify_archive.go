package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/instactl/instactl/backup"
)

func (o *BackupVerifyOptions) checkArchive() error {
	if o.Set != "" || o.Target != "" || o.Scratch != "" || o.KeepScratch {
		return usageErrorf("--archive checks the WAL archive of every node (or --node); it takes no SET, --target, --scratch or --keep-scratch")
	}
	return nil
}

func backupVerifyArchiveRun(ctx context.Context, f *Factory, out Output, o *BackupVerifyOptions) error {
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	checks, verr := backup.VerifyArchive(ctx, backup.VerifyArchiveOptions{Env: d.env, Group: o.Node})
	if checks == nil {
		return verr
	}
	if rerr := render(f.IO, out, checks, func(w io.Writer) error {
		for _, ac := range checks {
			c := ac.Continuity
			upTo := "the newest archived segment"
			if ac.CurrentLSN != "" {
				upTo = "the primary's current LSN " + ac.CurrentLSN
			}
			switch {
			case ac.OK:
				fmt.Fprintf(w, "%s: archive unbroken: %d segments %s..%s (timelines %v), from set %s (start %s) to %s; %d segment(s) waiting on the primary\n",
					ac.Group, c.Segments, c.From, c.To, c.Path, ac.Set, ac.Start, upTo, ac.Ready)
			case c != nil && len(c.Missing) == 0:
				fmt.Fprintf(w, "%s: archive unbroken (%d segments %s..%s) but: %s\n", ac.Group, c.Segments, c.From, c.To, ac.Error)
			case c != nil:
				fmt.Fprintf(w, "%s: archive BROKEN: %d of %d segments missing between %s and %s: %s\n",
					ac.Group, len(c.Missing), c.Segments, c.From, c.To, strings.Join(c.Missing, ", "))
			default:
				fmt.Fprintf(w, "%s: archive not checked: %s\n", ac.Group, ac.Error)
			}
		}
		return nil
	}); rerr != nil {
		return rerr
	}
	return verr
}

func (o *BackupVerifyOptions) checkPITRDrill() error {
	switch {
	case o.PITRAgo < 0:
		return usageErrorf("--pitr-ago must be positive (got %s)", o.PITRAgo)
	case o.Node == "":
		return usageErrorf("--pitr-ago needs --node NODE: the Postgres node to restore (e.g. --node pg-0)")
	case o.Set != "" || o.Target != "" || o.Archive:
		return usageErrorf("--pitr-ago drills a node to a time; it takes no SET, --target or --archive")
	}
	return nil
}

func backupPITRDrillRun(ctx context.Context, f *Factory, out Output, o *BackupVerifyOptions) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("backup verify: find this instactl binary to install as restore_command: %w", err)
	}
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	rep, verr := backup.DrillPITR(ctx, backup.PITRDrillOptions{Env: d.env, Node: o.Node, Ago: o.PITRAgo, Scratch: o.Scratch, Archiver: self})
	if rep == nil || rep.PITRResult == nil {
		return verr
	}
	if rerr := render(f.IO, out, rep, func(w io.Writer) error {
		r := rep
		if verr != nil {
			_, err := fmt.Fprintf(w, "Point-in-time drill of %s on %s FAILED: %v\n", o.Node, r.Scratch, verr)
			return err
		}
		_, err := fmt.Fprintf(w, "Point-in-time drill of %s on %s PASSED: restored to %s from set %s (timeline %d), reached %s.\n"+
			"  RTO %s: volumes %s, replay %s (%.1f MB of WAL at %.1f MB/s)\n  last commit replayed %s before the target; pg_amcheck passed: %v\n",
			r.Group, r.Scratch, r.RecoveryTarget, r.Set, r.Timeline, r.ReachedLSN, r.RTO.Round(time.Millisecond), r.Volumes.Round(time.Millisecond),
			r.Replay.Round(time.Millisecond), float64(r.ReplayedBytes)/(1<<20), r.ReplayMBps, r.Gap.Round(time.Millisecond), r.Amcheck)
		return err
	}); rerr != nil {
		return rerr
	}
	return verr
}
