package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
	"github.com/instactl/instactl/walarchive"
)

// PITROptions configures RestoreToTime: a Postgres node restored onto a host as it was at a
// time (or LSN), from the newest set before it plus the WAL archive.
type PITROptions struct {
	Env
	// Node is the replication group (pg-0) or one of its hosts.
	Node string
	// To is the host (stack host name, instance name or id) that receives the copy.
	To string
	// Time is the recovery target; LSN replaces it when set.
	Time time.Time
	LSN  string
	// Mount and Port place the copy (defaults: the pg role's mount and port).
	Mount string
	Port  int
	// Archiver is the local instactl binary, uploaded to To as the restore_command
	// (templates.ArchiverPath). Empty expects it there already.
	Archiver string
	// Prefetch is restore_command's --prefetch (default walarchive.DefaultPrefetch).
	Prefetch int
	// WaitArchive bounds the wait for the archive to pass the target (default 5m).
	WaitArchive time.Duration
	// Archive opens the group's archive (default: the stack's, templates.WALArchiveFor).
	Archive func(ctx context.Context, group, systemID string) (*walarchive.Archive, error)
}

// PITRResult is a restored copy and the point it reached.
type PITRResult struct {
	Restored
	Group string `json:"group"`
	// RecoveryTarget is the recovery target as asked (RFC 3339 time or LSN); Restored.Target
	// is the set's target (pg).
	RecoveryTarget string `json:"recovery_target"`
	// SetStopAt is when the chosen set's base backup ended.
	SetStopAt time.Time `json:"set_stop_at"`
	// Timeline is the recovery target timeline, checked against the archive's history files.
	Timeline uint32 `json:"timeline"`
	Archive  string `json:"archive"`
	// ForcedSwitch names the segment the primary was made to complete (pg_switch_wal) and that
	// the restore waited to see archived; empty when the primary could not be asked.
	ForcedSwitch string `json:"forced_switch,omitempty"`
	// ReachedLSN and ReachedCommit are the last replayed record and transaction commit.
	ReachedLSN    string    `json:"reached_lsn"`
	ReachedCommit time.Time `json:"reached_commit"`
	// Replay is from start to promotion: WAL fetch and replay.
	Replay   time.Duration `json:"replay_ns"`
	Duration time.Duration `json:"duration_ns"`
	// Volumes is the time to create, attach and mount the set's volumes; ReplayedBytes the WAL
	// from the set's checkpoint to the point reached.
	Volumes       time.Duration `json:"volumes_ns"`
	ReplayedBytes int64         `json:"replayed_bytes"`
}

// RestoreWALEnv is where a restore keeps the archive's configuration on the receiving host.
func RestoreWALEnv(set string) string { return "/var/lib/instagram/restore/" + set + "/wal.env" }

// RestoreToTime restores Node as it was at Time (or LSN) onto To: the newest complete set whose
// base backup ended before the target, its backup_label written back, restore_command fetching
// the group's archived WAL with parallel prefetch, recovery_target_time (or _lsn) with
// recovery_target_action=promote on the timeline the archive's history leads to from the set,
// archive_mode=off. Before starting it makes the group's primary complete its WAL segment
// (pg_switch_wal) once the target time has passed and waits for that segment in the archive,
// so every commit up to the target is there to replay.
func RestoreToTime(ctx context.Context, o PITROptions) (*PITRResult, error) {
	began := time.Now()
	if err := o.check(); err != nil {
		return nil, err
	}
	if o.Time.IsZero() && o.LSN == "" {
		return nil, errors.New("point-in-time restore: no target: give a time (--to-time) or an LSN (--to-lsn)")
	}
	if !o.Time.IsZero() && o.LSN != "" {
		return nil, errors.New("point-in-time restore: give a target time or a target LSN, not both")
	}
	var lsn walarchive.LSN
	if o.LSN != "" {
		var err error
		if lsn, err = walarchive.ParseLSN(o.LSN); err != nil {
			return nil, fmt.Errorf("point-in-time restore: --to-lsn: %w", err)
		}
	}
	group, err := pitrGroup(o.Stack, o.Node)
	if err != nil {
		return nil, err
	}
	set, err := pitrSet(ctx, o, group, lsn)
	if err != nil {
		return nil, err
	}
	pg := set.Manifest.Postgres
	res := &PITRResult{Group: group, SetStopAt: pg.BackupStopAt}
	if o.LSN != "" {
		res.RecoveryTarget = lsn.String()
	} else {
		res.RecoveryTarget = o.Time.UTC().Format(time.RFC3339Nano)
	}
	open := o.Archive
	if open == nil {
		open = func(ctx context.Context, group, sys string) (*walarchive.Archive, error) {
			return templates.WALArchiveFor(o.Stack, group).Config().Open(ctx, sys)
		}
	}
	arch, err := open(ctx, group, pg.SystemID)
	if err != nil {
		return nil, err
	}
	res.Archive = arch.Location()
	if err := o.waitArchive(ctx, group, arch, res); err != nil {
		return nil, err
	}
	stop, err := walarchive.ParseLSN(pg.StopLSN)
	if err != nil {
		return nil, fmt.Errorf("point-in-time restore: set %s: stop LSN: %w", set.ID, err)
	}
	tli, err := arch.TargetTimeline(ctx, uint32(pg.StartTimeline), stop)
	if err != nil {
		return nil, err
	}
	res.Timeline = tli
	o.emit(set.ID, o.To, "pitr", "set %s (base backup ended %s, WAL from %s on timeline %d), target %s on timeline %d from %s",
		set.ID, pg.BackupStopAt.Format(time.RFC3339), pg.StartLSN, pg.StartTimeline, res.RecoveryTarget, tli, arch.Location())

	to, vols, err := o.findTo(ctx)
	if err != nil {
		return nil, err
	}
	role := o.Stack.Role(TargetPostgres)
	res.Restored = Restored{Set: set.ID, Target: TargetPostgres, Host: to.Name, InstanceID: to.ID, Address: to.PrivateAddress,
		Port: o.Port, Mount: o.Mount, Manifest: set.Manifest}
	r := &res.Restored
	if r.Mount == "" {
		r.Mount = role.Volumes.Mount
	}
	if r.Port == 0 {
		r.Port = role.Port
	}
	ro := &RestoreOptions{Env: o.Env, Set: set.ID, To: to.ID}
	tv := time.Now()
	if err := restoreVolumes(ctx, ro, set, to, vols, r); err != nil {
		return res, err
	}
	c, err := o.dial(ctx, to)
	if err != nil {
		return res, err
	}
	defer c.Close()
	if err := mountRestored(ctx, ro, c, r); err != nil {
		return res, err
	}
	res.Volumes = time.Since(tv)
	r.DataDir = pgDataDir(r.Mount)
	if err := o.prepare(ctx, c, set, group, r, res); err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := o.startRecovery(ctx, c, r); err != nil {
		return res, err
	}
	res.Replay = time.Since(t0)
	if err := o.reached(ctx, c, r, res); err != nil {
		return res, err
	}
	ckpt, err1 := walarchive.ParseLSN(pg.CheckpointLSN)
	reached, err2 := walarchive.ParseLSN(res.ReachedLSN)
	if err1 == nil && err2 == nil && reached > ckpt {
		res.ReplayedBytes = int64(reached - ckpt)
	}
	res.Duration = time.Since(began)
	o.emit(set.ID, to.Name, "pitr", "reached %s, last commit %s; promoted on %s:%d after %s of replay",
		res.ReachedLSN, res.ReachedCommit.Format(time.RFC3339Nano), r.Address, r.Port, res.Replay.Round(time.Millisecond))
	return res, nil
}

// pitrGroup resolves a node argument, a group name or a member host, to its group.
func pitrGroup(st *stack.Stack, node string) (string, error) {
	topo, err := topology.FromStack(st)
	if err != nil {
		return "", fmt.Errorf("point-in-time restore: %w", err)
	}
	if g, ok := topo.Group(node); ok && g.Kind == topology.KindPostgres {
		return g.Name, nil
	}
	if g, ok := topo.GroupOf(node); ok && g.Kind == topology.KindPostgres {
		return g.Name, nil
	}
	var names []string
	for _, g := range topo.OfKind(topology.KindPostgres) {
		names = append(names, g.Name)
	}
	return "", fmt.Errorf("point-in-time restore: %s is no Postgres node of stack %s (nodes: %s)", node, st.Name, strings.Join(names, ", "))
}

// pitrSet picks the newest complete Postgres set of group whose base backup ended before the
// target: one taken with a backup label, so recovery can start from it.
func pitrSet(ctx context.Context, o PITROptions, group string, lsn walarchive.LSN) (Set, error) {
	sets, err := List(ctx, o.Env)
	if err != nil {
		return Set{}, err
	}
	sort.SliceStable(sets, func(i, j int) bool { return sets[i].Time.After(sets[j].Time) })
	considered := 0
	for _, s := range sets {
		m := s.Manifest
		if s.Target != TargetPostgres || (s.State != StateComplete && s.State != StateVerified) || m == nil ||
			m.Topology == nil || m.Topology.Group != group || m.Postgres == nil || m.Postgres.BackupLabel == "" {
			continue
		}
		considered++
		if lsn != 0 {
			stop, err := walarchive.ParseLSN(m.Postgres.StopLSN)
			if err == nil && stop <= lsn {
				return s, nil
			}
			continue
		}
		if m.Postgres.BackupStopAt.Before(o.Time) {
			return s, nil
		}
	}
	target := o.LSN
	if target == "" {
		target = o.Time.UTC().Format(time.RFC3339)
	}
	return Set{}, fmt.Errorf("point-in-time restore of %s to %s: none of its %d complete sets with a backup label ended before the target; the oldest point it can be restored to is the end of its oldest set (instactl backup list)",
		group, target, considered)
}

// waitArchive makes sure the archive holds every commit up to the target: it waits until the
// target time has passed (a target in the future is waited for up to WaitArchive), has the
// group's primary complete its current segment and waits for that segment in the archive.
// A primary that cannot be asked is reported and the restore goes on with what is archived.
func (o *PITROptions) waitArchive(ctx context.Context, group string, arch *walarchive.Archive, res *PITRResult) error {
	wait := o.WaitArchive
	if wait <= 0 {
		wait = 5 * time.Minute
	}
	deadline := time.Now().Add(wait)
	if !o.Time.IsZero() {
		if d := time.Until(o.Time.Add(time.Second)); d > 0 {
			if d > wait {
				return fmt.Errorf("point-in-time restore: the target %s is %s in the future (more than the %s the restore waits)", o.Time.Format(time.RFC3339), d.Round(time.Second), wait)
			}
			o.emit("", group, "pitr", "waiting %s for the target time to pass", d.Round(time.Millisecond))
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	seg, err := o.switchWAL(ctx, group)
	if err != nil {
		o.emit("", group, "pitr", "could not make the primary switch WAL (%v): restoring from what the archive holds", err)
		return nil
	}
	res.ForcedSwitch = seg
	for {
		if ok, err := arch.Has(ctx, seg); err != nil {
			return err
		} else if ok {
			o.emit("", group, "pitr", "segment %s is archived", seg)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("point-in-time restore: segment %s (completed by pg_switch_wal on %s's primary) is not in %s after %s: the archiver is failing or behind; look at the primary's log for archive_command errors",
				seg, group, arch.Location(), wait)
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// switchWAL runs pg_switch_wal on the group's primary now and returns the segment it completed.
//
// First it commits an empty transaction (an xid, nothing else): recovery to a time stops only
// at a commit after that time, and on a node that went quiet before the target there would be
// none: recovery would end with "recovery ended before configured recovery target was
// reached". The marker's commit comes after the target (the caller waited for it to pass), so
// recovery stops just before it.
func (o *PITROptions) switchWAL(ctx context.Context, group string) (string, error) {
	if _, err := o.onPrimary(ctx, group, "SELECT pg_current_xact_id()"); err != nil {
		return "", err
	}
	return o.onPrimary(ctx, group, "SELECT pg_walfile_name(pg_switch_wal())")
}

// primaryLSN is the group's primary's pg_current_wal_lsn.
func (o *PITROptions) primaryLSN(ctx context.Context, group string) (string, error) {
	return o.onPrimary(ctx, group, "SELECT pg_current_wal_lsn()")
}

// onPrimary runs one query on the group's primary (as the topology names it now).
func (o *PITROptions) onPrimary(ctx context.Context, group, sql string) (string, error) {
	topo, err := o.topology(ctx)
	if err != nil {
		return "", err
	}
	g, ok := topo.Group(group)
	if !ok {
		return "", fmt.Errorf("no group %s in the topology", group)
	}
	insts, err := o.instancesByHost(ctx)
	if err != nil {
		return "", err
	}
	in, ok := insts[g.Primary]
	if !ok {
		return "", fmt.Errorf("primary %s of %s does not exist", g.Primary, group)
	}
	c, err := o.dial(ctx, in)
	if err != nil {
		return "", err
	}
	defer c.Close()
	res, err := runCmd(ctx, c, o.cmds().psql(o.pgBin(), o.Stack.Role(TargetPostgres).Port, "postgres", sql))
	if err != nil {
		return "", fmt.Errorf("%s on %s: %w", sql, g.Primary, err)
	}
	return trimOut(res), nil
}

// instancesByHost maps stack host names (pg-1) to the stack's live instances.
func (e *Env) instancesByHost(ctx context.Context) (map[string]cloud.Instance, error) {
	res, err := e.Provider.Describe(ctx, e.Stack.Name)
	if err != nil {
		return nil, fmt.Errorf("describe stack %s: %w", e.Stack.Name, err)
	}
	out := map[string]cloud.Instance{}
	for _, in := range res.Instances {
		if in.State != "terminated" {
			out[stack.HostName(in.Role, in.Index)] = in
		}
	}
	return out, nil
}

func (o *PITROptions) findTo(ctx context.Context) (cloud.Instance, []cloud.Volume, error) {
	in, err := FindHost(ctx, o.Env, o.To)
	if err != nil {
		return in, nil, err
	}
	res, err := o.Provider.Describe(ctx, o.Stack.Name)
	if err != nil {
		return in, nil, fmt.Errorf("describe stack %s: %w", o.Stack.Name, err)
	}
	return in, res.Volumes, nil
}

// recoveryConf is the restored copy's postgresql.auto.conf: it replaces the standby's (whose
// primary_conninfo must not follow the live primary) and holds the recovery target.
func recoveryConf(restoreCommand, target string, isLSN bool, tli uint32) string {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	var b strings.Builder
	b.WriteString("# Written by instactl backup restore --to-time: a point-in-time copy, never archived.\n")
	b.WriteString("primary_conninfo = ''\narchive_mode = off\n")
	b.WriteString("restore_command = " + q(restoreCommand) + "\n")
	if isLSN {
		b.WriteString("recovery_target_lsn = " + q(target) + "\n")
	} else {
		b.WriteString("recovery_target_time = " + q(target) + "\n")
	}
	b.WriteString("recovery_target_action = 'promote'\n")
	b.WriteString("recovery_target_timeline = " + q(strconv.FormatUint(uint64(tli), 10)) + "\n")
	return b.String()
}

// pgTimestamp is t as recovery_target_time reads it. Commit timestamps have microseconds,
// truncated: a commit acknowledged before t has a timestamp at or before t truncated, which
// recovery (recovery_target_inclusive) replays.
func pgTimestamp(t time.Time) string {
	return t.UTC().Truncate(time.Microsecond).Format("2006-01-02 15:04:05.000000") + "+00"
}

// restoreCommand is the copy's restore_command.
func restoreCommand(envFile string, prefetch int) string {
	if prefetch <= 0 {
		prefetch = walarchive.DefaultPrefetch
	}
	return templates.ArchiverPath + " wal fetch --config " + envFile + " --prefetch " + strconv.Itoa(prefetch) + " %f %p"
}

// prepare puts the archiver, its configuration, the backup label, recovery.signal and the
// recovery settings in place on the receiving host.
func (o *PITROptions) prepare(ctx context.Context, c *remote.Client, set Set, group string, r *Restored, res *PITRResult) error {
	if o.Archiver != "" {
		f, err := os.Open(o.Archiver)
		if err != nil {
			return fmt.Errorf("point-in-time restore: archiver: %w", err)
		}
		defer f.Close()
		if _, err := c.Upload(ctx, f, templates.ArchiverPath, 0o755); err != nil {
			return fmt.Errorf("point-in-time restore: install the archiver on %s: %w", r.Host, err)
		}
	}
	envFile := RestoreWALEnv(set.ID)
	if _, err := c.Upload(ctx, strings.NewReader(templates.WALArchiveFor(o.Stack, group).EnvFile()), envFile, 0o644); err != nil {
		return fmt.Errorf("point-in-time restore: archive config on %s: %w", r.Host, err)
	}
	target := res.RecoveryTarget
	if o.LSN == "" {
		target = pgTimestamp(o.Time)
	}
	conf := recoveryConf(restoreCommand(envFile, o.Prefetch), target, o.LSN != "", res.Timeline)
	for name, body := range map[string]string{"backup_label": set.Manifest.Postgres.BackupLabel, "postgresql.auto.conf": conf} {
		if _, err := c.Upload(ctx, strings.NewReader(body), path.Join(r.DataDir, name), 0o600); err != nil {
			return fmt.Errorf("point-in-time restore: write %s on %s: %w", name, r.Host, err)
		}
	}
	script := `d=$1; set -e; rm -f "$d/standby.signal" "$d/postmaster.pid" "$d/tablespace_map"; rm -rf "$d/instactl-wal-spool"; ` +
		`touch "$d/recovery.signal"; chown postgres:postgres "$d/backup_label" "$d/postgresql.auto.conf" "$d/recovery.signal"`
	if _, err := runCmd(ctx, c, o.cmds().root(remote.Command{"sh", "-c", script, "instactl-pitr-prepare", r.DataDir})); err != nil {
		return fmt.Errorf("point-in-time restore: prepare %s on %s: %w", r.DataDir, r.Host, err)
	}
	return nil
}

// startRecovery starts the copy and waits until recovery reached the target and promoted it.
func (o *PITROptions) startRecovery(ctx context.Context, c *remote.Client, r *Restored) error {
	log := restoreLog(r.Set)
	s := `bin=$1 data=$2 addr=$3 port=$4 log=$5; set -e; ` +
		`install -d -o postgres -g postgres -m 2775 ` + pgSocketDir + `; mkdir -p "$(dirname "$log")"; : >"$log"; chown postgres "$log"; ` +
		`runuser -u postgres -- "$bin/pg_ctl" -D "$data" -W -l "$log" ` +
		`-o "-c listen_addresses=$addr -c port=$port -c unix_socket_directories=` + pgSocketDir + ` -c cluster_name=restore" start`
	if _, err := runCmd(ctx, c, o.cmds().root(remote.Command{"sh", "-c", s, "instactl-pitr-start", o.pgBin(), r.DataDir, r.Address, strconv.Itoa(r.Port), log})); err != nil {
		return fmt.Errorf("point-in-time restore %s: start postgres on %s: %w", r.Set, r.Host, err)
	}
	started := time.Now()
	deadline := started.Add(30 * time.Minute)
	for {
		res, err := c.Run(ctx, o.cmds().psql(o.pgBin(), r.Port, "postgres", "SELECT pg_is_in_recovery()"), nil)
		if err != nil {
			return err
		}
		if res.ExitCode == 0 && trimOut(res) == "f" {
			return nil
		}
		// pg_ctl -W returns before the postmaster writes its pid file: a missing one means it
		// stopped only once the log says so (or after a minute).
		alive, _ := c.Run(ctx, remote.Command{"test", "-s", path.Join(r.DataDir, "postmaster.pid")}, nil)
		dead := false
		if alive.ExitCode != 0 {
			said, _ := c.Run(ctx, remote.Command{"grep", "-qE", "FATAL|PANIC|database system is shut down", log}, nil)
			dead = said.ExitCode == 0 || time.Since(started) > time.Minute
		}
		if dead || time.Now().After(deadline) {
			tailRes, _ := c.Run(ctx, remote.Command{"tail", "-n", "15", log}, nil)
			why := "stopped"
			if alive.ExitCode == 0 {
				why = "did not finish recovery within 30m"
			}
			return fmt.Errorf("point-in-time restore %s: postgres on %s %s; the end of %s:\n%s", r.Set, r.Host, why, log, strings.TrimSpace(string(tailRes.Stdout)))
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// reached reads the last replayed LSN and commit time of the promoted copy.
func (o *PITROptions) reached(ctx context.Context, c *remote.Client, r *Restored, res *PITRResult) error {
	out, err := runCmd(ctx, c, o.cmds().psql(o.pgBin(), r.Port, "postgres",
		`SELECT pg_last_wal_replay_lsn(), coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '')`))
	if err != nil {
		return fmt.Errorf("point-in-time restore %s: read the point reached: %w", r.Set, err)
	}
	lsn, ts, _ := strings.Cut(trimOut(out), "|")
	res.ReachedLSN = lsn
	if ts != "" {
		if res.ReachedCommit, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return fmt.Errorf("point-in-time restore %s: commit time %q: %w", r.Set, ts, err)
		}
	}
	return nil
}
