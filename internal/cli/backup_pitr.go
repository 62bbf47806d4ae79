package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/walarchive"
)

const backupPITRHelp = `
Point in time (--to-time or --to-lsn): the argument is a Postgres NODE (pg-0, or one of its
hosts). The restore takes the newest set of that node whose base backup ended before the
target, writes its backup label back, and lets Postgres replay the node's archived WAL
(restore_command: instactl wal fetch with --prefetch segments in parallel) up to the target,
on the timeline the archive's history files lead to, with archive_mode=off so the copy never
writes into the real archive. Before it starts it makes the node's primary switch WAL and
waits until that segment is archived, so every commit up to the target can be replayed. It
reports the LSN and the commit time actually reached.

TIME is RFC 3339 (2026-12-07T14:02:59Z, 2026-12-07T15:02:59+01:00) or "2026-12-07 14:02:59"
in UTC; LSN is Postgres' form (16/B374D848).`

// BackupPITRFlags are the point-in-time flags of `instactl backup restore`.
type BackupPITRFlags struct {
	ToTime   string
	ToLSN    string
	Archiver string
	Prefetch int
	// Shard, when >= 0, recovers only that logical shard of NODE (backup_shard.go).
	Shard int
	// Window bounds the shard's write-blocked swap of a shard recovery.
	Window time.Duration
	// Time is ToTime parsed.
	Time time.Time
}

func (p *BackupPITRFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&p.ToTime, "to-time", "", "restore NODE as it was at this time (RFC 3339, or \"YYYY-MM-DD HH:MM:SS\" in UTC)")
	fl.StringVar(&p.ToLSN, "to-lsn", "", "restore NODE up to this WAL position (e.g. 16/B374D848)")
	fl.StringVar(&p.Archiver, "archiver", "", "instactl binary to install on HOST as restore_command (default: this one)")
	fl.IntVar(&p.Prefetch, "prefetch", walarchive.DefaultPrefetch, "WAL segments restore_command fetches in parallel (1: one at a time)")
	p.registerShard(cmd)
}

func (p *BackupPITRFlags) on() bool { return p.ToTime != "" || p.ToLSN != "" }

// check validates the point-in-time flags: nothing is touched on bad input.
func (p *BackupPITRFlags) check(o *BackupRestoreOptions) error {
	if p.ToTime != "" && p.ToLSN != "" {
		return usageErrorf("give --to-time or --to-lsn, not both")
	}
	if o.To == "" {
		return usageErrorf("--to HOST is required: the host that receives the restored copy (e.g. --to scratch-0)")
	}
	if o.AllowIncomplete {
		return usageErrorf("--allow-incomplete restores a set as it is; a point-in-time restore starts from complete sets only")
	}
	if o.Mount != "" && (!path.IsAbs(o.Mount) || path.Clean(o.Mount) == "/") {
		return usageErrorf("--mount must be an absolute directory other than / (got %q)", o.Mount)
	}
	if o.Port < 0 || o.Port > 65535 {
		return usageErrorf("--port must be a TCP port 1-65535 (got %d)", o.Port)
	}
	if p.Prefetch < 1 || p.Prefetch > 64 {
		return usageErrorf("--prefetch must be 1-64 (got %d)", p.Prefetch)
	}
	if err := p.checkShard(); err != nil {
		return err
	}
	if p.ToLSN != "" {
		if _, err := walarchive.ParseLSN(p.ToLSN); err != nil {
			return usageErrorf("--to-lsn: %w", err)
		}
		return nil
	}
	t, err := parsePITRTime(p.ToTime)
	if err != nil {
		return usageErrorf("--to-time: %w", err)
	}
	p.Time = t
	return nil
}

// parsePITRTime reads RFC 3339, or a zone-less date and time taken as UTC.
func parsePITRTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is no time: want RFC 3339 (2026-12-07T14:02:59Z) or \"2026-12-07 14:02:59\" (UTC)", s)
}

func backupPITRRun(ctx context.Context, f *Factory, out Output, o *BackupRestoreOptions) error {
	archiver := o.PITR.Archiver
	if archiver == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("backup restore: find this instactl binary to install as restore_command (or pass --archiver): %w", err)
		}
		archiver = self
	}
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	to, err := backupFindHost(ctx, d.env, "--to", o.To)
	if err != nil {
		return err
	}
	var rec *shardRecovery
	if o.PITR.Shard >= 0 {
		if rec, err = newShardRecovery(ctx, f, o); err != nil {
			return err
		}
		defer rec.close()
	}
	r, err := backup.RestoreToTime(ctx, backup.PITROptions{Env: d.env, Node: o.Set, To: to.ID, Time: o.PITR.Time, LSN: o.PITR.ToLSN,
		Mount: o.Mount, Port: o.Port, Archiver: archiver, Prefetch: o.PITR.Prefetch})
	if err != nil {
		if r != nil && len(r.VolumeIDs) > 0 {
			f.IO.Statusf("restore stopped halfway: volumes %s (tagged %s=%s) are left on %s for inspection",
				strings.Join(r.VolumeIDs, ", "), backup.TagRestoredFrom, r.Set, to.Name)
		}
		return err
	}
	if rec != nil {
		return rec.run(ctx, f, out, r)
	}
	return render(f.IO, out, r, func(w io.Writer) error {
		commit := "no transaction replayed"
		if !r.ReachedCommit.IsZero() {
			commit = "last commit " + r.ReachedCommit.Format(time.RFC3339Nano)
		}
		_, err := fmt.Fprintf(w, "Restored %s to %s onto %s from set %s and %s (timeline %d): reached %s, %s.\n"+
			"Postgres listening on %s:%d, data in %s; replay took %s, the whole restore %s.\n",
			r.Group, r.RecoveryTarget, r.Host, r.Set, r.Archive, r.Timeline, r.ReachedLSN, commit,
			r.Address, r.Port, r.DataDir, r.Replay.Round(time.Millisecond), r.Duration.Round(time.Millisecond))
		return err
	})
}
