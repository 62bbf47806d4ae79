package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/cloud"
	"github.com/spf13/cobra"
)

// BackupRestoreOptions are the arguments of `instactl backup restore`.
type BackupRestoreOptions struct {
	Set             string
	To              string
	Mount           string
	Port            int
	AllowIncomplete bool
	// Point-in-time restore (backup_pitr.go): Set is then the node.
	PITR BackupPITRFlags
}

// NewCmdBackupRestore builds `instactl backup restore`. runF replaces the run in tests.
func NewCmdBackupRestore(f *Factory, out func() Output, runF func(*BackupRestoreOptions) error) *cobra.Command {
	o := &BackupRestoreOptions{}
	cmd := &cobra.Command{
		Use:   "restore SET --to HOST | restore --to-time TIME|--to-lsn LSN NODE --to HOST",
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
instactl:restored-from=SET; ` + "`instactl backup verify`" + ` is the drill that cleans up after itself.
` + backupPITRHelp + backupShardHelp,
		Example: `  instactl backup restore 20240501T100000Z-instagram-pg-1-3f2a --to memcached-0
  instactl backup restore SET --to pg-0 --mount /srv/restore --port 5433
  psql -h 127.0.10.10 -U postgres -d instagram      # then query the copy`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("backup restore takes exactly one SET argument (got %d); see `instactl backup list`", len(args))
			}
			o.Set = args[0]
			if o.PITR.on() {
				if err := o.PITR.check(o); err != nil {
					return err
				}
				if runF != nil {
					return runF(o)
				}
				return backupPITRRun(cmd.Context(), f, out(), o)
			}
			if cmd.Flags().Changed("shard") {
				return usageErrorf("--shard recovers one shard to a point in time: give --to-time or --to-lsn with it")
			}
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
	o.PITR.register(cmd)
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
