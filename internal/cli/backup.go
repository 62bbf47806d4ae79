package cli

import (
	"context"
	"fmt"
	"regexp"

	"github.com/instactl/instactl/backup"
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
