package backup

import (
	"context"
	"errors"
	"fmt"
	"github.com/instactl/instactl/stack"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/remote"
)

// pgStatus is a standby's view of itself.
type pgStatus struct {
	InRecovery bool
	// WALReceiver is pg_stat_wal_receiver.status ("streaming"), empty without a receiver.
	WALReceiver string
	ReplayLSN   string
	ReceiveLSN  string
	Timeline    int
	SystemID    string
	// PauseState is pg_get_wal_replay_pause_state(): "not paused", "pause requested", "paused".
	PauseState string
}

const pgStatusSQL = `SELECT pg_is_in_recovery(),
 coalesce((SELECT status FROM pg_stat_wal_receiver), ''),
 coalesce(pg_last_wal_replay_lsn()::text, ''),
 coalesce(pg_last_wal_receive_lsn()::text, ''),
 coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())),
 (SELECT system_identifier FROM pg_control_system()),
 CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END`

func (r *run) psql(sql string) remote.Command {
	return r.cmds.psql(r.o.pgBin(), r.h.role.Port, "postgres", sql)
}

func (r *run) pgStatus(ctx context.Context) (pgStatus, error) {
	res, err := runCmd(ctx, r.c, r.psql(pgStatusSQL))
	if err != nil {
		return pgStatus{}, fmt.Errorf("query standby status: %w", err)
	}
	return parsePGStatus(trimOut(res))
}

func parsePGStatus(out string) (pgStatus, error) {
	f := strings.Split(out, "|")
	if len(f) != 7 {
		return pgStatus{}, fmt.Errorf("unexpected standby status %q", out)
	}
	tl, err := strconv.Atoi(f[4])
	if err != nil {
		return pgStatus{}, fmt.Errorf("unexpected timeline %q", f[4])
	}
	return pgStatus{InRecovery: f[0] == "t", WALReceiver: f[1], ReplayLSN: f[2], ReceiveLSN: f[3],
		Timeline: tl, SystemID: f[5], PauseState: f[6]}, nil
}

// primaryView is the primary's side: its WAL position and the standby's replay lag.
type primaryView struct {
	CurrentLSN string
	// Connected is false when the primary lists no replication connection from the standby.
	Connected  bool
	LagSeconds float64
}

// primaryQuery asks the primary for its WAL position and the standby's replay lag, finding the
// standby by application_name (its cluster_name) first, then by address.
func primaryQuery(name, addr string) string {
	return `SELECT pg_current_wal_lsn(), count(r.*) > 0, coalesce(max(extract(epoch FROM r.replay_lag)), 0)::float8
 FROM (SELECT 1) one LEFT JOIN (SELECT * FROM pg_stat_replication WHERE application_name = ` + sqlLiteral(name) +
		` OR (client_addr = ` + sqlLiteral(addr) + `::inet AND NOT EXISTS (SELECT FROM pg_stat_replication WHERE application_name = ` +
		sqlLiteral(name) + `))) r ON true`
}

func (r *run) primaryView(ctx context.Context) (primaryView, error) {
	if r.h.primary == nil {
		return primaryView{}, fmt.Errorf("the primary of %s does not exist", r.h.name())
	}
	c, err := r.o.dial(ctx, *r.h.primary)
	if err != nil {
		return primaryView{}, err
	}
	defer c.Close()
	res, err := runCmd(ctx, c, r.cmds.psql(r.o.pgBin(), r.h.role.Port, "postgres",
		// The bootstrap names a standby's connection after its stack host name (pg-1), not
		// the instance name (stack-pg-1).
		primaryQuery(stack.HostName(r.h.inst.Role, r.h.inst.Index), r.h.inst.PrivateAddress)))
	if err != nil {
		return primaryView{}, fmt.Errorf("query primary %s: %w", r.h.primary.Name, err)
	}
	f := strings.Split(trimOut(res), "|")
	if len(f) != 3 {
		return primaryView{}, fmt.Errorf("unexpected primary status %q", trimOut(res))
	}
	lag, err := strconv.ParseFloat(f[2], 64)
	if err != nil {
		return primaryView{}, fmt.Errorf("unexpected replay lag %q", f[2])
	}
	return primaryView{CurrentLSN: f[0], Connected: f[1] == "t", LagSeconds: lag}, nil
}

// lag measures the standby against its primary: bytes between the primary's current LSN and
// the standby's replay LSN, and the primary's replay_lag for it.
func (r *run) lag(ctx context.Context, st pgStatus) (int64, primaryView, error) {
	pv, err := r.primaryView(ctx)
	if err != nil {
		return 0, pv, err
	}
	cur, err := parseLSN(pv.CurrentLSN)
	if err != nil {
		return 0, pv, err
	}
	rep, err := parseLSN(st.ReplayLSN)
	if err != nil {
		return 0, pv, err
	}
	if rep >= cur {
		return 0, pv, nil
	}
	return int64(cur - rep), pv, nil
}

// gatePostgres returns *UnsafeError unless the standby is in recovery, streaming, and behind
// its primary by less than the thresholds.
func (r *run) gatePostgres(ctx context.Context) error {
	unsafe := func(format string, a ...any) error {
		return &UnsafeError{Host: r.h.name(), Target: TargetPostgres, Reason: fmt.Sprintf(format, a...)}
	}
	st, err := r.pgStatus(ctx)
	if err != nil {
		return unsafe("cannot read its status: %v", err)
	}
	if !st.InRecovery {
		return unsafe("it is not in recovery (a primary, or promoted); backups are taken from standbys")
	}
	if st.WALReceiver != "streaming" {
		return unsafe("its WAL receiver is not streaming (status %q)", st.WALReceiver)
	}
	lagBytes, pv, err := r.lag(ctx, st)
	if err != nil {
		return unsafe("cannot measure replication lag: %v", err)
	}
	if !pv.Connected {
		return unsafe("primary %s lists no replication connection from it", r.h.primary.Name)
	}
	if max := r.o.maxLagBytes(); lagBytes > max {
		return unsafe("replay is %d bytes behind the primary (max %d)", lagBytes, max)
	}
	if max := r.o.maxLagSeconds(); pv.LagSeconds > max.Seconds() {
		return unsafe("replay lag is %.1fs (max %s)", pv.LagSeconds, max)
	}
	r.emit("gate", "in recovery, streaming, %d bytes and %.3fs behind", lagBytes, pv.LagSeconds)
	return nil
}

// postgres backs up a standby: gate, checkpoint and sync, then under the guardian pause replay,
// record the position, freeze, snapshot, thaw, resume replay.
func (r *run) postgres(ctx context.Context) error {
	if err := r.gatePostgres(ctx); err != nil {
		return err
	}
	if _, err := runCmd(ctx, r.c, r.psql("CHECKPOINT")); err != nil {
		return fmt.Errorf("backup %s: checkpoint: %w", r.h.name(), err)
	}
	if _, err := runCmd(ctx, r.c, r.cmds.syncMounts(r.mounts)); err != nil {
		return fmt.Errorf("backup %s: sync: %w", r.h.name(), err)
	}
	r.emit("checkpoint", "restartpoint and sync done")
	if err := r.filesystems(ctx); err != nil {
		return err
	}
	pause := func(ctx context.Context) error {
		if _, err := runCmd(ctx, r.c, r.psql("SELECT pg_wal_replay_pause()")); err != nil {
			return fmt.Errorf("backup %s: pause wal replay: %w", r.h.name(), err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			st, err := r.pgStatus(ctx)
			if err != nil {
				return fmt.Errorf("backup %s: %w", r.h.name(), err)
			}
			if st.PauseState == "paused" {
				return r.recordPosition(ctx, st)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("backup %s: wal replay did not pause within 5s (state %q)", r.h.name(), st.PauseState)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	resume := func(ctx context.Context) error {
		if _, err := runCmd(ctx, r.c, r.psql("SELECT pg_wal_replay_resume()")); err != nil {
			return fmt.Errorf("backup %s: resume wal replay: %w", r.h.name(), err)
		}
		return nil
	}
	label, err := r.startBackup(ctx)
	if err != nil {
		return err
	}
	err = r.freezeAndSnapshot(ctx, r.h.role.Port, pause, resume)
	if err != nil && r.m.SnapshotAt.IsZero() {
		// Failed before the snapshot: make sure replay runs again (the guardian would too).
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = resume(cctx)
		label.abort()
		return err
	}
	if r.m.Postgres == nil {
		label.abort()
		return err
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if serr := r.stopBackup(sctx, label); serr != nil {
		return errors.Join(err, fmt.Errorf("%w: the set restores as a snapshot but not to a point in time", serr))
	}
	return err
}

// recordPosition fills the manifest's Postgres record from a paused standby.
func (r *run) recordPosition(ctx context.Context, st pgStatus) error {
	lagBytes, pv, err := r.lag(ctx, st)
	if err != nil {
		return fmt.Errorf("backup %s: measure lag: %w", r.h.name(), err)
	}
	r.m.Postgres = &PostgresRecord{ReplayLSN: st.ReplayLSN, ReceiveLSN: st.ReceiveLSN, Timeline: st.Timeline,
		SystemID: st.SystemID, LagBytes: lagBytes, LagSeconds: pv.LagSeconds, PrimaryLSN: pv.CurrentLSN,
		DataDir: pgDataDir(r.h.role.Volumes.Mount), Port: r.h.role.Port}
	r.emit("position", "replay paused at %s (timeline %d), %d bytes behind", st.ReplayLSN, st.Timeline, lagBytes)
	return nil
}

// pgDataDir is the cluster directory under a pg role's mount (templates: Mount/15/main).
func pgDataDir(mount string) string { return strings.TrimSuffix(mount, "/") + "/15/main" }
