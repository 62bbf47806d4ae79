package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/instactl/instactl/backup"
	"github.com/spf13/cobra"
)

// BackupPruneOptions are the flags of `instactl backup prune`.
type BackupPruneOptions struct {
	Yes bool
}

// NewCmdBackupPrune builds `instactl backup prune`. runF replaces the run in tests.
func NewCmdBackupPrune(f *Factory, out func() Output, runF func(*BackupPruneOptions) error) *cobra.Command {
	o := &BackupPruneOptions{}
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Apply grandfather-father-son retention: show the plan, delete with --yes",
		Long: `Plan retention over this stack's sets, per target and host, by snapshot start time, using
backup.retention of the stack file (hourly, daily, weekly, monthly, min_verified), and print
every set with the reasons it is kept or deleted.

A set is kept when it is pending, the newest complete set, the newest verified set, one of
the min_verified newest verified sets, or the newest set of one of the kept hours, days,
ISO weeks or months. Partial sets are deleted. Only snapshots tagged with this stack are
ever touched.

With backup.wal_archive on, the WAL archive is pruned by LSN, never by age: per Postgres node,
every file below the start LSN of the oldest retained verified set (on any timeline) is
deleted, nothing at or above it, timeline .history files never; with no verified set retained
nothing is. The plan lists every WAL file it would delete.

Without --yes nothing is deleted. With --yes the plan is applied and every deleted set is
confirmed gone by listing the snapshots again; a set that is still there is an error.`,
		Example: `  instactl backup prune          # dry run: the plan
  instactl backup prune --yes    # delete what the plan says
  instactl backup prune -o json | jq '.decisions[] | select(.keep | not) | .set.id'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return backupPruneRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().BoolVar(&o.Yes, "yes", false, "delete the sets the plan marks for deletion")
	return cmd
}

func backupPruneRun(ctx context.Context, f *Factory, out Output, o *BackupPruneOptions) error {
	d, err := backupSetup(ctx, f, o.Yes && f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	plan, err := backup.Prune(ctx, backup.PruneOptions{Env: d.env})
	if err != nil {
		return err
	}
	if !o.Yes || len(plan.Deletes())+backupWALDeletes(plan) == 0 {
		return render(f.IO, out, plan, func(w io.Writer) error {
			if err := backupRenderPlan(w, plan); err != nil {
				return err
			}
			if n, wn := len(plan.Deletes()), backupWALDeletes(plan); n+wn > 0 {
				_, err := fmt.Fprintf(w, "Nothing deleted. To delete %d set(s) and %d WAL file(s): instactl backup prune --yes\n", n, wn)
				return err
			}
			return nil
		})
	}
	if out == OutputText {
		if err := backupRenderPlan(f.IO.Out, plan); err != nil {
			return err
		}
	}
	applied, perr := backup.Prune(ctx, backup.PruneOptions{Env: d.env, Apply: true})
	if applied == nil {
		return perr
	}
	if rerr := render(f.IO, out, applied, func(w io.Writer) error {
		deleted := 0
		for _, dec := range applied.Deletes() {
			if dec.Deleted {
				deleted++
				fmt.Fprintf(w, "deleted %s (%s %s): confirmed gone\n", dec.Set.ID, dec.Set.Target, dec.Set.Host)
			} else {
				fmt.Fprintf(w, "NOT deleted %s: its snapshots are still listed\n", dec.Set.ID)
			}
		}
		for _, wp := range applied.WAL {
			if wp.Deleted {
				fmt.Fprintf(w, "deleted %d WAL file(s) of %s below %s\n", len(wp.Delete), wp.Group, wp.Horizon)
			}
		}
		_, err := fmt.Fprintf(w, "Pruned %d of %d set(s).\n", deleted, len(applied.Decisions))
		return err
	}); rerr != nil {
		return rerr
	}
	return perr
}

func backupRenderPlan(w io.Writer, plan *backup.PrunePlan) error {
	r := plan.Retention
	fmt.Fprintf(w, "Retention: hourly %d, daily %d, weekly %d, monthly %d, min_verified %d\n",
		r.Hourly, r.Daily, r.Weekly, r.Monthly, r.MinVerified)
	if len(plan.Decisions) == 0 {
		_, err := fmt.Fprintln(w, "No backup sets. No changes.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tTIME\tTARGET\tHOST\tSTATE\tSET\tWHY")
	for _, d := range plan.Decisions {
		action := "keep"
		if !d.Keep {
			action = "delete"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", action, d.Set.Time.UTC().Format("2006-01-02 15:04:05Z"),
			d.Set.Target, d.Set.Host, backupStateText(d.Set), d.Set.ID, strings.Join(d.Reasons, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	backupRenderWALPlan(w, plan.WAL)
	n := len(plan.Deletes())
	if n == 0 && backupWALDeletes(plan) > 0 {
		_, err := fmt.Fprintf(w, "Plan: keep all %d set(s); delete the WAL above.\n", len(plan.Decisions))
		return err
	}
	if n == 0 {
		_, err := fmt.Fprintf(w, "Plan: keep all %d set(s). No changes.\n", len(plan.Decisions))
		return err
	}
	_, err := fmt.Fprintf(w, "Plan: keep %d, delete %d.\n", len(plan.Decisions)-n, n)
	return err
}

// backupWALDeletes counts the WAL files the plan deletes.
func backupWALDeletes(plan *backup.PrunePlan) int {
	n := 0
	for _, wp := range plan.WAL {
		n += len(wp.Delete)
	}
	return n
}

// backupRenderWALPlan shows, per group, the WAL retention by LSN and every file it deletes.
func backupRenderWALPlan(w io.Writer, wal []backup.WALPrune) {
	for _, wp := range wal {
		if wp.Horizon == "" {
			fmt.Fprintf(w, "WAL %s: keep all %d file(s): %s\n", wp.Archive, wp.Kept, wp.Reason)
			continue
		}
		fmt.Fprintf(w, "WAL %s: horizon %s, the start of %s (the oldest retained verified set): delete %d file(s), %d bytes, below it; keep %d\n",
			wp.Archive, wp.Horizon, wp.HorizonSet, len(wp.Delete), wp.Bytes, wp.Kept)
		for _, name := range wp.Delete {
			fmt.Fprintf(w, "  delete %s\n", name)
		}
	}
}
