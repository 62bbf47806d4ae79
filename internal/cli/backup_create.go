package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/instactl/instactl/backup"
	"github.com/spf13/cobra"
)

// BackupCreateOptions are the flags of `instactl backup create`.
type BackupCreateOptions struct {
	Target               string
	LockWait             time.Duration
	AllowCrashConsistent bool
	Verbose              bool
	// MetricsFile is the Prometheus text file written after every run ("" uses the default,
	// "-" writes none).
	MetricsFile string
}

// NewCmdBackupCreate builds `instactl backup create`. runF replaces the run in tests.
func NewCmdBackupCreate(f *Factory, out func() Output, runF func(*BackupCreateOptions) error) *cobra.Command {
	o := &BackupCreateOptions{}
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Snapshot the replicas of the backup targets, one set per replica (for cron)",
		Long: `Back up the first replica of every Postgres node and the Redis replica. First take the backup
lock of every one of them, in a fixed order, before touching any: when another run holds one,
release them all and exit 4 having changed nothing (or wait up to --lock-wait). Then per
replica, in order: undo what a killed earlier run left (a frozen volume, paused WAL replay),
check it is safe (Postgres: in recovery, streaming, behind its primary by less than
backup.max_lag_bytes and backup.max_lag_time; Redis: role slave, link up, no save running),
checkpoint, arm the thaw guardian, freeze, snapshot every data volume as one set, thaw, record
the manifest.

Made for cron. Progress goes to stderr only on a terminal or with -v. On success the only
output is one summary line (or the manifests with -o json).

Exit codes:
  0  every replica was backed up
  3  skipped as unsafe (e.g. the replica lags or is not streaming); the reason is printed
     and no set was made for that replica
  4  another run holds a replica's backup lock (its holder is printed); nothing was backed
     up; see --lock-wait
  5  partial: a set was recorded but is not usable (it is marked partial and prune removes
     it), or some replicas were backed up and others failed
  1  failed
When several replicas end differently the most serious wins: 1, then 5, then 4, then 3.

After every run a Prometheus text file is written atomically (default: backup.prom in the
stack's state directory): last success time, duration, freeze seconds, lag and set size per
target and host, and the last run's time, duration and exit code. Point the node exporter's
textfile collector at it with --metrics-file.`,
		Example: `  instactl backup create
  instactl backup create --target pg --lock-wait 5m

  # crontab: hourly, metrics for the node exporter, mail only on failure
  0 * * * *  instactl --stack /etc/instactl/prod.yaml backup create \
               --metrics-file /var/lib/instagram/textfile/instactl_backup.prom >/dev/null

  instactl backup create -o json | jq '.sets[] | {set_id, state, freeze_duration_ns}'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := backupCheckTarget("--target", o.Target, true); err != nil {
				return err
			}
			if o.LockWait < 0 {
				return usageErrorf("--lock-wait must be a positive duration such as 30s or 5m (got %s)", o.LockWait)
			}
			if runF != nil {
				return runF(o)
			}
			return backupCreateRun(cmd.Context(), f, out(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Target, "target", backup.TargetAll, "what to back up: pg, redis or all (the stack's backup.targets)")
	fl.DurationVar(&o.LockWait, "lock-wait", 0, "wait up to this long in all for other runs' locks instead of exiting 4")
	fl.BoolVar(&o.AllowCrashConsistent, "allow-crash-consistent", false,
		"if a freeze fails, snapshot unfrozen instead of aborting (the set is marked crash-consistent)")
	fl.BoolVarP(&o.Verbose, "verbose", "v", false, "print progress to stderr even when it is not a terminal")
	fl.StringVar(&o.MetricsFile, "metrics-file", "", "Prometheus text file to write (default STATE_DIR/backup.prom; - for none)")
	return cmd
}

func backupCreateRun(ctx context.Context, f *Factory, out Output, o *BackupCreateOptions) error {
	d, err := backupSetup(ctx, f, o.Verbose || f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	start := time.Now()
	var res *backup.CreateResult
	cerr := silenceOperation(ctx, f, backupSilence(o.Target), "instactl backup create: standbys pause replay while frozen", func() error {
		var err error
		res, err = backup.Create(ctx, backup.Options{Env: d.env, Target: o.Target, LockWait: o.LockWait,
			AllowCrashConsistent: o.AllowCrashConsistent})
		return err
	})
	if res == nil {
		res = &backup.CreateResult{}
	}
	code := backupCreateExitCode(res, cerr)
	if o.MetricsFile != "-" {
		run := backup.CreateRun{Result: res, Start: start, ExitCode: code}
		if merr := backup.WriteMetrics(d.env, o.MetricsFile, run); merr != nil {
			f.IO.Statusf("warning: %v", merr)
		}
	}
	if rerr := render(f.IO, out, res, func(w io.Writer) error {
		if len(res.Sets) == 0 {
			return nil // the error says why
		}
		_, err := fmt.Fprintln(w, backupCreateSummary(res, time.Since(start)))
		return err
	}); rerr != nil {
		return rerr
	}
	if cerr == nil {
		return nil
	}
	return withCode(code, cerr)
}

// backupCreateExitCode is the exit code of the run's outcome (see backup.CreateOutcome for how
// the outcomes of several replicas are ranked).
func backupCreateExitCode(res *backup.CreateResult, err error) int {
	switch backup.CreateOutcome(res, err) {
	case backup.OutcomeOK:
		return ExitOK
	case backup.OutcomeUnsafe:
		return ExitUnsafe
	case backup.OutcomeLocked:
		return ExitLocked
	case backup.OutcomePartial:
		return ExitPartial
	}
	return ExitError
}

// backupCreateSummary is the one line cron sees on success.
func backupCreateSummary(res *backup.CreateResult, took time.Duration) string {
	var parts []string
	complete := 0
	for _, m := range res.Sets {
		p := fmt.Sprintf("%s %s %s", m.Target, m.SetID, m.State)
		if m.State != backup.StatePartial {
			complete++
		}
		if m.FreezeDuration > 0 {
			p += fmt.Sprintf(", froze %s", m.FreezeDuration.Round(time.Millisecond))
		}
		if m.Postgres != nil {
			p += fmt.Sprintf(", lsn %s, %d bytes behind", m.Postgres.ReplayLSN, m.Postgres.LagBytes)
		}
		if m.Redis != nil {
			p += fmt.Sprintf(", %d keys", m.Redis.Keys)
		}
		parts = append(parts, p)
	}
	return fmt.Sprintf("backup: %d of %d sets usable in %s: %s", complete, len(res.Sets),
		took.Round(100*time.Millisecond), strings.Join(parts, "; "))
}
