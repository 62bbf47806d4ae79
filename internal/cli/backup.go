package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/cloud"
	"github.com/spf13/cobra"
)

// addBackupCommands adds backup create, list, prune, restore and verify.
func addBackupCommands(root *cobra.Command, f *Factory, out func() Output) {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Consistent snapshots of the Postgres and Redis replicas, retention, restore, drills",
		Long: `Backups are taken from replicas only, never from primaries: a Postgres standby is gated
(in recovery, streaming, lag under backup.max_lag_bytes and backup.max_lag_time), checkpointed,
frozen under a thaw guardian that unfreezes it even if instactl is killed, and all its data
volumes are snapshotted as one set; a Redis replica takes a checked BGSAVE first.

Snapshot tags are the source of truth (a set is listed and restorable from its tags alone);
a manifest per set (LSN, timeline, lag, volumes, geometry, freeze duration, verification) is
kept in the stack's state directory.

Designed for cron: see ` + "`instactl backup create --help`" + ` and ` + "`instactl help exit-codes`" + `.`,
		Example: `  # Every hour, from cron: silent except one summary line; exit 3/4/5 say why not
  instactl backup create

  instactl backup list
  instactl backup verify                      # restore drill of the newest complete set
  instactl backup prune                       # show the retention plan
  instactl backup prune --yes                 # and apply it
  instactl backup restore SET --to memcached-0 # a standalone copy to query`,
	}
	cmd.AddCommand(
		NewCmdBackupCreate(f, out, nil),
		NewCmdBackupList(f, out, nil),
		NewCmdBackupPrune(f, out, nil),
		NewCmdBackupRestore(f, out, nil),
		NewCmdBackupVerify(f, out, nil),
	)
	root.AddCommand(cmd)
}

// backupDeps is what every backup command builds from the Factory.
type backupDeps struct {
	env   backup.Env
	close func()
}

// backupSetup builds the library's Env: stack, provider, SSH pool, state directory, version.
// progress, when true, prints one prefixed line per library event to stderr.
func backupSetup(ctx context.Context, f *Factory, progress bool) (*backupDeps, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	prov, err := f.Provider(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := f.StateDir()
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	pool, err := f.SSH(false)
	if err != nil {
		return nil, err
	}
	env := backup.Env{Stack: st, Provider: prov, Dialer: pool, StateDir: dir, Version: backupVersion()}
	if progress {
		env.Progress = func(e backup.Event) {
			who := e.Host
			if who == "" {
				who = "backup"
			}
			f.IO.Statusf("%s: %s: %s", who, e.Step, e.Message)
		}
	}
	return &backupDeps{env: env, close: func() { _ = pool.Close() }}, nil
}

// backupVersion is the version recorded in every manifest: the release and, when known, the
// commit.
func backupVersion() string {
	v := Version()
	if v.Commit == "" {
		return v.Version
	}
	c := v.Commit
	if len(c) > 12 {
		c = c[:12]
	}
	return v.Version + " (" + c + ")"
}

func backupCheckTarget(flag, t string, allowAll bool) error {
	switch t {
	case backup.TargetPostgres, backup.TargetRedis:
		return nil
	case backup.TargetAll, "":
		if allowAll {
			return nil
		}
	}
	want := "pg or redis"
	if allowAll {
		want = "pg, redis or all"
	}
	return usageErrorf("%s must be %s (got %q)", flag, want, t)
}

var backupSetIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func backupCheckSetID(id string) error {
	if !backupSetIDRe.MatchString(id) {
		return usageErrorf("SET %q is not a backup set id (see `instactl backup list`)", id)
	}
	return nil
}

// ---------------------------------------------------------------- create

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
               --metrics-file /var/lib/node_exporter/textfile/instactl_backup.prom >/dev/null

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
	// The time each set's manifest was recorded: the end of that replica's run.
	ended := map[string]time.Time{}
	progress := d.env.Progress
	d.env.Progress = func(e backup.Event) {
		if e.Step == "manifest" && e.Set != "" {
			ended[e.Set] = e.Time
		}
		if progress != nil {
			progress(e)
		}
	}
	res, cerr := backup.Create(ctx, backup.Options{Env: d.env, Target: o.Target, LockWait: o.LockWait,
		AllowCrashConsistent: o.AllowCrashConsistent})
	if res == nil {
		res = &backup.CreateResult{}
	}
	code := backupCreateExitCode(res, cerr)
	if o.MetricsFile != "-" {
		run := backup.CreateRun{Result: res, Ended: ended, Start: start, ExitCode: code}
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

// backupCreateExitCode ranks the outcomes of one run: any plain failure is 1 (or 5 when some
// replica was backed up), then a partial set 5, a held lock 4, an unsafe replica 3.
func backupCreateExitCode(res *backup.CreateResult, err error) int {
	if err == nil {
		return ExitOK
	}
	var partial, locked, unsafe, failed bool
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var pe *backup.PartialError
		var le *backup.LockedError
		var ue *backup.UnsafeError
		switch {
		case errors.As(e, &pe):
			partial = true
		case errors.As(e, &le):
			locked = true
		case errors.As(e, &ue):
			unsafe = true
		default:
			failed = true
		}
	}
	usable := 0
	for _, m := range res.Sets {
		if m.State != backup.StatePartial {
			usable++
		}
	}
	switch {
	case failed && usable > 0:
		return ExitPartial
	case failed:
		return ExitError
	case partial:
		return ExitPartial
	case locked:
		return ExitLocked
	case unsafe:
		return ExitUnsafe
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

// ---------------------------------------------------------------- list

// BackupListOptions are the flags of `instactl backup list`.
type BackupListOptions struct {
	Target string
}

// NewCmdBackupList builds `instactl backup list`. runF replaces the run in tests.
func NewCmdBackupList(f *Factory, out func() Output, runF func(*BackupListOptions) error) *cobra.Command {
	o := &BackupListOptions{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the stack's backup sets, newest first",
		Long: `List every backup set of this stack, newest first, from the snapshots' tags: when it was
taken, the target and host, its state and size.

States: pending (snapshots still being copied), complete, partial (a snapshot is missing or
failed, or the freeze outlasted its budget: not restorable, prune removes it), verified (a
restore drill passed). "crash-consistent" marks a set taken without a freeze.`,
		Example: `  instactl backup list
  instactl backup list --target pg
  instactl backup list -o json | jq -r '.[] | select(.state == "verified") | .id'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Target != "" {
				if err := backupCheckTarget("--target", o.Target, false); err != nil {
					return err
				}
			}
			if runF != nil {
				return runF(o)
			}
			return backupListRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.Target, "target", "", "only sets of this target: pg or redis")
	return cmd
}

func backupListRun(ctx context.Context, f *Factory, out Output, o *BackupListOptions) error {
	d, err := backupSetup(ctx, f, false)
	if err != nil {
		return err
	}
	defer d.close()
	sets, err := backup.List(ctx, d.env)
	if err != nil {
		return err
	}
	shown := []backup.Set{}
	for _, s := range sets {
		if o.Target == "" || s.Target == o.Target {
			shown = append(shown, s)
		}
	}
	return render(f.IO, out, shown, func(w io.Writer) error {
		if len(shown) == 0 {
			_, err := fmt.Fprintf(w, "No backup sets of stack %s. Take one with: instactl backup create\n", d.env.Stack.Name)
			return err
		}
		return backupRenderSets(w, shown)
	})
}

func backupRenderSets(w io.Writer, sets []backup.Set) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tTARGET\tHOST\tSTATE\tSIZE\tSET")
	for _, s := range sets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d GiB\t%s\n", s.Time.UTC().Format("2006-01-02 15:04:05Z"), s.Target,
			s.Host, backupStateText(s), s.SizeGiB, s.ID)
	}
	return tw.Flush()
}

func backupStateText(s backup.Set) string {
	if s.CrashConsistent {
		return s.State + " (crash-consistent)"
	}
	return s.State
}

// ---------------------------------------------------------------- prune

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
	if !o.Yes || len(plan.Deletes()) == 0 {
		return render(f.IO, out, plan, func(w io.Writer) error {
			if err := backupRenderPlan(w, plan); err != nil {
				return err
			}
			if n := len(plan.Deletes()); n > 0 {
				_, err := fmt.Fprintf(w, "Nothing deleted. To delete %d set(s): instactl backup prune --yes\n", n)
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
	n := len(plan.Deletes())
	if n == 0 {
		_, err := fmt.Fprintf(w, "Plan: keep all %d set(s). No changes.\n", len(plan.Decisions))
		return err
	}
	_, err := fmt.Fprintf(w, "Plan: keep %d, delete %d.\n", len(plan.Decisions)-n, n)
	return err
}

// ---------------------------------------------------------------- restore

// BackupRestoreOptions are the arguments of `instactl backup restore`.
type BackupRestoreOptions struct {
	Set             string
	To              string
	Mount           string
	Port            int
	AllowIncomplete bool
}

// NewCmdBackupRestore builds `instactl backup restore`. runF replaces the run in tests.
func NewCmdBackupRestore(f *Factory, out func() Output, runF func(*BackupRestoreOptions) error) *cobra.Command {
	o := &BackupRestoreOptions{}
	cmd := &cobra.Command{
		Use:   "restore SET --to HOST",
		Short: "Create volumes from a set on a host, mount them and start the database on them",
		Long: `Create one volume per snapshot of SET, attach them to HOST, mount them at --mount (default:
the target role's mount, e.g. /var/lib/postgresql) and start the database there:

  pg     a standalone copy: standby.signal is removed, so it recovers to a consistent point,
         opens read-write and follows no primary
  redis  redis-server loading the set's RDB, with no persistence and no master

The server is started directly (pg_ctl, redis-server --daemonize) on HOST's address and
--port (default: the role's port), never as the host's managed service. The mount point
must be empty or absent: restore never mounts over data, so on a host that already runs the
role use another --mount and --port.

HOST is a host name as the stack names it (pg-0), the instance name, or an instance id.
What restore leaves behind: the running server, the mount, and volumes tagged
instactl:restored-from=SET; ` + "`instactl backup verify`" + ` is the drill that cleans up after itself.`,
		Example: `  instactl backup restore 20240501T100000Z-instagram-pg-1-3f2a --to memcached-0
  instactl backup restore SET --to pg-0 --mount /srv/restore --port 5433
  psql -h 127.0.10.10 -U postgres -d instagram      # then query the copy`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("backup restore takes exactly one SET argument (got %d); see `instactl backup list`", len(args))
			}
			o.Set = args[0]
			if err := backupCheckSetID(o.Set); err != nil {
				return err
			}
			if o.To == "" {
				return usageErrorf("--to HOST is required: the host that receives the restored volumes (e.g. --to memcached-0)")
			}
			if o.Mount != "" && (!path.IsAbs(o.Mount) || path.Clean(o.Mount) == "/") {
				return usageErrorf("--mount must be an absolute directory other than / (got %q)", o.Mount)
			}
			if o.Port < 0 || o.Port > 65535 {
				return usageErrorf("--port must be a TCP port 1-65535 (got %d)", o.Port)
			}
			if runF != nil {
				return runF(o)
			}
			return backupRestoreRun(cmd.Context(), f, out(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.To, "to", "", "host to restore onto (pg-0, an instance name or id)")
	fl.StringVar(&o.Mount, "mount", "", "where to mount the restored file system (default: the role's mount)")
	fl.IntVar(&o.Port, "port", 0, "port the restored server listens on (default: the role's port)")
	fl.BoolVar(&o.AllowIncomplete, "allow-incomplete", false, "restore a partial or pending set (forensics)")
	return cmd
}

func backupRestoreRun(ctx context.Context, f *Factory, out Output, o *BackupRestoreOptions) error {
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	if _, err := backupFindSet(ctx, d.env, o.Set, ""); err != nil {
		return err
	}
	to, err := backupFindHost(ctx, d.env, "--to", o.To)
	if err != nil {
		return err
	}
	r, err := backup.Restore(ctx, backup.RestoreOptions{Env: d.env, Set: o.Set, To: to.ID, Mount: o.Mount,
		Port: o.Port, AllowIncomplete: o.AllowIncomplete})
	if err != nil {
		if r != nil && len(r.VolumeIDs) > 0 {
			f.IO.Statusf("restore stopped halfway: volumes %s (tagged %s=%s) are left on %s for inspection",
				strings.Join(r.VolumeIDs, ", "), backup.TagRestoredFrom, o.Set, to.Name)
		}
		return err
	}
	return render(f.IO, out, r, func(w io.Writer) error {
		server := "postgres"
		if r.Target == backup.TargetRedis {
			server = "redis"
		}
		_, err := fmt.Fprintf(w, "Restored %s onto %s: %s listening on %s:%d, data in %s (volumes %s).\n",
			r.Set, r.Host, server, r.Address, r.Port, r.DataDir, strings.Join(r.VolumeIDs, ", "))
		return err
	})
}

// backupFindSet is backup.FindSet with an unknown set reported as bad input (exit 2).
func backupFindSet(ctx context.Context, env backup.Env, id, target string) (backup.Set, error) {
	s, err := backup.FindSet(ctx, env, id, target)
	var nf *backup.SetNotFoundError
	if errors.As(err, &nf) {
		return s, usageErrorf("%w", err)
	}
	return s, err
}

// backupFindHost is backup.FindHost with an unknown host reported as bad input (exit 2) naming
// the flag.
func backupFindHost(ctx context.Context, env backup.Env, flag, name string) (cloud.Instance, error) {
	in, err := backup.FindHost(ctx, env, name)
	var nf *backup.HostNotFoundError
	if errors.As(err, &nf) {
		return in, usageErrorf("%s %w", flag, err)
	}
	return in, err
}

// ---------------------------------------------------------------- verify

// BackupVerifyOptions are the arguments of `instactl backup verify`.
type BackupVerifyOptions struct {
	// Set is empty for the newest complete set (of Target, when given).
	Set     string
	Target  string
	Scratch string
	// KeepScratch leaves a scratch host created for the drill running (debugging).
	KeepScratch bool
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

Exits 1 when the drill fails; the failure is recorded on the set too.`,
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
