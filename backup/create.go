package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
)

// Defaults for settings the stack file leaves zero.
const (
	DefaultFreezeBudget = 30 * time.Second
	DefaultMaxLagBytes  = 64 << 20
	DefaultMaxLagTime   = 60 * time.Second
	DefaultSaveTimeout  = 5 * time.Minute
)

// Options configures Create.
type Options struct {
	Env
	// Target is "pg", "redis" or "all" (the stack's backup targets).
	Target string
	// LockWait is how long to wait for another run's lock; zero fails at once with *LockedError.
	LockWait time.Duration
	// AllowCrashConsistent lets a failed freeze degrade to an unfrozen snapshot; the set is then
	// tagged and recorded StateCrashConsistent. Without it a failed freeze aborts the run.
	AllowCrashConsistent bool
	// FreezeBudget, MaxLagBytes and MaxLagTime override the stack's backup settings.
	FreezeBudget time.Duration
	MaxLagBytes  int64
	MaxLagTime   time.Duration
	// SaveTimeout bounds the wait for a Redis BGSAVE (default 5m).
	SaveTimeout time.Duration

	// testHook runs at named points of each replica's run: "armed" (guardian armed, WAL replay
	// paused, nothing frozen yet), "frozen" (every volume frozen, before the snapshot call) and
	// "snapshotted" (thawed, guardian stopped, before the manifest is saved).
	testHook func(point string)
}

// CreateResult is what Create did: one manifest per set taken (partial ones included).
type CreateResult struct {
	Sets []*Manifest `json:"sets"`
	// Ended maps a set id to the time its manifest was recorded (the "manifest" progress
	// event): the end of that replica's run, which the metrics report as its duration.
	Ended map[string]time.Time `json:"-"`
}

func (o *Options) hook(point string) {
	if o.testHook != nil {
		o.testHook(point)
	}
}

func (o *Options) budget() time.Duration {
	switch {
	case o.FreezeBudget > 0:
		return o.FreezeBudget
	case o.Stack.Backup.FreezeBudget > 0:
		return o.Stack.Backup.FreezeBudget
	}
	return DefaultFreezeBudget
}

func (o *Options) maxLagBytes() int64 {
	switch {
	case o.MaxLagBytes > 0:
		return o.MaxLagBytes
	case o.Stack.Backup.MaxLagBytes > 0:
		return o.Stack.Backup.MaxLagBytes
	}
	return DefaultMaxLagBytes
}

func (o *Options) maxLagSeconds() time.Duration {
	switch {
	case o.MaxLagTime > 0:
		return o.MaxLagTime
	case o.Stack.Backup.MaxLagTime > 0:
		return o.Stack.Backup.MaxLagTime
	}
	return DefaultMaxLagTime
}

// Create backs up the replicas of the target roles, one set per replica. It first takes the
// backup lock of every replica it is to back up, in a stable order, before any work on any
// host: when another run holds one of them it releases those it took and returns
// *LockedError having touched nothing, so that of two overlapping runs one backs up every
// replica and the other none. Each set is then taken after crash recovery and the safety gate.
// The result lists every set recorded; the error joins each host's failure (*UnsafeError,
// *LockedError, *PartialError or another error).
func Create(ctx context.Context, opts Options) (*CreateResult, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	targets, err := opts.expandTargets(opts.Target)
	if err != nil {
		return nil, err
	}
	res := &CreateResult{Ended: map[string]time.Time{}}
	progress := opts.Progress
	opts.Progress = func(e Event) {
		if e.Step == "manifest" && e.Set != "" {
			res.Ended[e.Set] = e.Time
		}
		if progress != nil {
			progress(e)
		}
	}
	var errs []error
	topo, err := opts.topology(ctx)
	if err != nil {
		return nil, err
	}
	var jobs []job
	for _, t := range targets {
		hosts, err := opts.replicas(ctx, t, topo)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, h := range hosts {
			jobs = append(jobs, job{h: h, kind: kind(t)})
		}
	}
	held, lockErrs := lockAll(ctx, &opts, jobs)
	defer held.release()
	errs = append(errs, lockErrs...)
	var locked *LockedError
	if errors.As(errors.Join(lockErrs...), &locked) {
		return res, errors.Join(errs...) // lockAll released every lock it took: nothing was touched
	}
	for _, j := range held {
		m, err := createOne(ctx, &opts, j)
		if m != nil {
			res.Sets = append(res.Sets, m)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// job is one replica to back up, with its connection and lock once held.
type job struct {
	h    host
	kind string
	c    *remote.Client
	lock *hostLock
}

// heldJobs are the jobs whose lock is held.
type heldJobs []job

// release lets go of every lock and connection. Locks go first: a closed connection would end
// its lock too, but Release waits for the remote process to exit.
func (hs heldJobs) release() {
	for _, j := range hs {
		_ = j.lock.Release() // the lock also ends with the connection
		j.c.Close()
	}
}

// lockAll takes the backup lock of every job's host, in host name order, so that two runs
// over overlapping sets never each hold a part and wait on the other. A host that cannot be
// reached or has no data volumes is left out with its error; the others are still backed up.
// When a lock is held by another run (after waiting up to opts.LockWait in all) every lock
// taken is released and the *LockedError returned: the run must then touch nothing.
func lockAll(ctx context.Context, o *Options, jobs []job) (heldJobs, []error) {
	jobs = slices.Clone(jobs)
	slices.SortStableFunc(jobs, func(a, b job) int { return strings.Compare(a.h.name(), b.h.name()) })
	holder := holderText(o.now())
	deadline := time.Now().Add(o.LockWait)
	var held heldJobs
	var errs []error
	for _, j := range jobs {
		if j.h.role.Volumes.Mount == "" || len(j.h.volumes) == 0 {
			errs = append(errs, fmt.Errorf("backup %s: it has no data volumes (role %s declares volumes.mount and volumes.count)", j.h.name(), j.h.role.Name))
			continue
		}
		c, err := o.dial(ctx, j.h.inst)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		wait := time.Until(deadline)
		if o.LockWait <= 0 || wait < 0 {
			wait = 0
		}
		l, err := acquireLock(ctx, c, o.cmds(), j.h.name(), holder, wait)
		var locked *LockedError
		if errors.As(err, &locked) {
			c.Close()
			held.release()
			return nil, append(errs, err)
		}
		if err != nil {
			c.Close()
			errs = append(errs, err)
			continue
		}
		j.c, j.lock = c, l
		held = append(held, j)
	}
	return held, errs
}

// run is one backup of one replica in progress.
type run struct {
	o      *Options
	h      host
	c      *remote.Client
	cmds   commands
	kind   string
	m      *Manifest
	mounts []string
	// walStart is pg_backup_start's LSN while the base backup is open: the snapshots are
	// tagged with it (TagWALStart), so retention finds every set's WAL horizon from tags alone.
	walStart string
}

func (r *run) emit(step, format string, args ...any) {
	r.o.emit(r.m.SetID, r.h.name(), step, format, args...)
}

func newSetID(now time.Time, hostName string) string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hostName + "-" + hex.EncodeToString(b[:])
}

// createOne backs up the replica of j, whose lock is held.
func createOne(ctx context.Context, o *Options, j job) (*Manifest, error) {
	start := o.now()
	h := j.h
	r := &run{o: o, h: h, c: j.c, cmds: o.cmds(), kind: j.kind, mounts: []string{h.role.Volumes.Mount}}
	r.m = &Manifest{Format: ManifestFormat, SetID: newSetID(start, h.name()), Stack: o.Stack.Name,
		Target: j.kind, Host: h.name(), InstanceID: h.inst.ID, Zone: h.inst.Zone, StartedAt: start.UTC(),
		FreezeBudget: o.budget(), InstactlVersion: o.Version}
	r.m.Topology = &TopologyRecord{Group: h.group.Name, Primary: h.group.Primary, Epoch: h.group.Epoch, Source: h.source}
	r.emit("lock", "lock held")
	if err := r.recover(ctx); err != nil {
		return nil, err
	}
	var snapErr error
	switch j.kind {
	case TargetPostgres:
		snapErr = r.postgres(ctx)
	case TargetRedis:
		snapErr = r.redis(ctx)
	default:
		return nil, fmt.Errorf("backup %s: role %s is neither postgres nor redis", h.name(), h.role.Name)
	}
	var unsafe *UnsafeError
	if errors.As(snapErr, &unsafe) || r.m.SnapshotAt.IsZero() {
		return nil, snapErr // nothing was snapshotted: no set to record
	}
	o.hook("snapshotted")
	if err := o.saveManifest(r.m); err != nil {
		return r.m, errors.Join(snapErr, err)
	}
	if r.m.State == StatePartial {
		if err := r.tagPartial(ctx); err != nil {
			return r.m, errors.Join(snapErr, err)
		}
	}
	r.emit("manifest", "set %s recorded as %s", r.m.SetID, r.m.State)
	return r.m, snapErr
}

// recover undoes what a killed run may have left: a guardian still armed, a volume frozen, WAL
// replay paused. What it finds is reported and recorded in the manifest.
func (r *run) recover(ctx context.Context) error {
	res, err := runCmd(ctx, r.c, r.cmds.killGuardian())
	if err != nil {
		return fmt.Errorf("recover %s: stop stale thaw guardian: %w", r.h.name(), err)
	}
	for _, l := range lines(res.Stdout) {
		if strings.HasPrefix(l, "killed ") {
			r.note("stopped a thaw guardian left by an earlier run (pid " + strings.TrimPrefix(l, "killed ") + ")")
		}
		if l == "fired" {
			r.note("an earlier run's thaw guardian had fired: that run outlived its freeze budget")
		}
	}
	res, err = runCmd(ctx, r.c, r.cmds.thaw(r.mounts))
	if err != nil {
		return fmt.Errorf("recover %s: thaw: %w", r.h.name(), err)
	}
	for _, l := range lines(res.Stdout) {
		r.note(l + " (left frozen by an earlier run)")
	}
	if r.kind != TargetPostgres {
		return nil
	}
	st, err := r.pgStatus(ctx)
	if err != nil {
		return fmt.Errorf("recover %s: %w", r.h.name(), err)
	}
	if st.InRecovery && st.PauseState != "not paused" {
		if _, err := runCmd(ctx, r.c, r.psql("SELECT pg_wal_replay_resume()")); err != nil {
			return fmt.Errorf("recover %s: resume wal replay: %w", r.h.name(), err)
		}
		r.note("resumed WAL replay left " + st.PauseState + " by an earlier run")
	}
	return nil
}

func (r *run) note(s string) {
	r.m.Recovered = append(r.m.Recovered, s)
	r.emit("recover", "%s", s)
}

// freezeAndSnapshot arms the guardian, runs before (pausing replay, say) under its protection,
// freezes every mount, snapshots the instance's data volumes as one set and thaws. after runs
// once thawed, before the guardian is stopped. It fills the manifest's volumes, state and
// freeze duration.
func (r *run) freezeAndSnapshot(ctx context.Context, pgPort int, before, after func(context.Context) error) error {
	budget := r.o.budget()
	// Cleanup must run even when ctx is cancelled (SIGINT): thaw and stop the guardian with a
	// context of their own.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	}
	res, err := runCmd(ctx, r.c, r.cmds.armGuardian(budget, r.o.pgBin(), pgPort, r.mounts))
	if err != nil {
		return fmt.Errorf("backup %s: arm thaw guardian: %w", r.h.name(), err)
	}
	armed := time.Now()
	r.emit("guardian", "thaw guardian pid %s armed for %s", trimOut(res), budget)
	thawed, guarded := false, true
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if !thawed {
			_, _ = runCmd(cctx, r.c, r.cmds.thaw(r.mounts))
		}
		if guarded {
			_, _ = runCmd(cctx, r.c, r.cmds.killGuardian())
		}
	}()
	if before != nil {
		if err := before(ctx); err != nil {
			return err
		}
	}
	r.o.hook("armed")
	consistency := StateComplete
	var frozenAt time.Time
	for i, mnt := range r.mounts {
		if i == 0 {
			frozenAt = time.Now()
		}
		if _, err := runCmd(ctx, r.c, r.cmds.freeze(mnt)); err != nil {
			if !r.o.AllowCrashConsistent {
				return fmt.Errorf("backup %s: freeze %s failed, no snapshot taken (pass allow-crash-consistent to snapshot unfrozen): %w", r.h.name(), mnt, err)
			}
			cctx, cancel := cleanupCtx()
			_, _ = runCmd(cctx, r.c, r.cmds.thaw(r.mounts))
			cancel()
			consistency = StateCrashConsistent
			r.emit("freeze", "freeze %s failed (%v); taking a crash-consistent snapshot as allowed", mnt, err)
			break
		}
	}
	if consistency == StateComplete {
		r.emit("freeze", "froze %s", strings.Join(r.mounts, ", "))
	}
	r.o.hook("frozen")
	snaps, snapErr := r.snapshot(ctx, consistency, budget-time.Since(armed)-500*time.Millisecond)
	cctx, cancel := cleanupCtx()
	defer cancel()
	if _, err := runCmd(cctx, r.c, r.cmds.thaw(r.mounts)); err != nil {
		return fmt.Errorf("backup %s: thaw after snapshot: %w (the guardian thaws within %s)", r.h.name(), err, budget)
	}
	thawed = true
	if consistency == StateComplete {
		r.m.FreezeDuration = time.Since(frozenAt)
	}
	r.emit("thaw", "thawed after %s", r.m.FreezeDuration.Round(time.Millisecond))
	var afterErr error
	if after != nil {
		afterErr = after(cctx)
	}
	res, err = runCmd(cctx, r.c, r.cmds.killGuardian())
	if err != nil {
		return errors.Join(afterErr, fmt.Errorf("backup %s: stop thaw guardian: %w", r.h.name(), err))
	}
	guarded = false
	fired := strings.Contains(string(res.Stdout), "fired")
	r.recordSnapshots(snaps, consistency)
	switch {
	case snapErr != nil:
		return r.partial(fmt.Sprintf("snapshot call failed: %v", snapErr))
	case fired:
		return r.partial(fmt.Sprintf("the freeze outlasted its budget of %s and the guardian thawed before the snapshot call returned", budget))
	case len(snaps) != len(r.h.volumes):
		return r.partial(fmt.Sprintf("%d snapshots for %d volumes", len(snaps), len(r.h.volumes)))
	}
	return afterErr
}

func (r *run) partial(reason string) error {
	r.m.State, r.m.PartialReason = StatePartial, reason
	return &PartialError{Set: r.m.SetID, Reason: reason}
}

// SetTags are the tags every snapshot of a set carries from the CreateSnapshots call on:
// stack, set id, target, host, consistency (StateComplete or StateCrashConsistent) and the
// number of volumes the set must have.
func SetTags(stackName, setID, target, hostName, consistency string, volumes int) map[string]string {
	return map[string]string{
		cloud.TagStack: stackName, cloud.TagSet: setID, TagTarget: target, TagHost: hostName,
		TagState: consistency, TagVolumes: strconv.Itoa(volumes), cloud.TagName: "backup " + setID,
	}
}

// tagPartial tags every snapshot of the set partial: the ones the call returned and any the
// provider holds under the set's id (a call that failed or timed out may still have made some).
func (r *run) tagPartial(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	ids := map[string]bool{}
	for _, v := range r.m.Volumes {
		if v.SnapshotID != "" {
			ids[v.SnapshotID] = true
		}
	}
	snaps, err := r.o.Provider.DescribeSnapshots(ctx, r.o.Stack.Name)
	if err != nil {
		return fmt.Errorf("mark set %s partial: %w", r.m.SetID, err)
	}
	for _, sn := range snaps {
		if sn.Tags[cloud.TagSet] == r.m.SetID {
			ids[sn.ID] = true
		}
	}
	if len(ids) == 0 {
		return nil // no snapshot exists: the manifest alone records the set
	}
	reason := tagValue(r.m.PartialReason)
	if err := r.o.Provider.TagSnapshots(ctx, slices.Sorted(maps.Keys(ids)), map[string]string{TagPartial: reason}); err != nil {
		return fmt.Errorf("mark set %s partial: %w", r.m.SetID, err)
	}
	r.emit("manifest", "snapshots of set %s tagged partial", r.m.SetID)
	return nil
}

// tagValue fits s into an EC2 tag value: at most 255 characters of the portable set (letters,
// digits, spaces and + - = . _ : / @).
func tagValue(s string) string {
	b := []rune{}
	for _, c := range s {
		switch {
		case len(b) == 255:
			return string(b)
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.ContainsRune(" +-=._:/@", c):
			b = append(b, c)
		default:
			b = append(b, ' ')
		}
	}
	return string(b)
}

// snapshot snapshots every data volume of the instance in one call, with the set's tags.
func (r *run) snapshot(ctx context.Context, consistency string, within time.Duration) ([]cloud.Snapshot, error) {
	ids := make([]string, len(r.h.volumes))
	for i, v := range r.h.volumes {
		ids[i] = v.ID
	}
	tags := SetTags(r.o.Stack.Name, r.m.SetID, r.kind, r.h.name(), consistency, len(ids))
	if r.walStart != "" && r.m.Postgres != nil && r.m.Topology != nil {
		tags[TagWALStart] = WALStart{Group: r.m.Topology.Group, SystemID: r.m.Postgres.SystemID,
			Timeline: uint32(r.m.Postgres.Timeline), LSN: r.walStart}.String()
	}
	r.m.SnapshotAt = r.o.now().UTC()
	if within <= 0 {
		return nil, errors.New("no freeze budget left for the snapshot call")
	}
	sctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	t0 := time.Now()
	snaps, err := r.o.Provider.CreateSnapshots(sctx, r.h.inst.ID, ids, tags)
	if err != nil {
		return snaps, fmt.Errorf("create snapshots of %s: %w", strings.Join(ids, ", "), err)
	}
	r.emit("snapshot", "%d snapshots in %s", len(snaps), time.Since(t0).Round(time.Millisecond))
	return snaps, nil
}

func (r *run) recordSnapshots(snaps []cloud.Snapshot, consistency string) {
	byVol := map[string]string{}
	for _, s := range snaps {
		byVol[s.VolumeID] = s.ID
	}
	r.m.Volumes = nil
	for i, v := range r.h.volumes {
		r.m.Volumes = append(r.m.Volumes, VolumeRecord{Order: i, VolumeID: v.ID, Device: v.Device,
			SizeGiB: v.SizeGiB, Type: v.Type, SnapshotID: byVol[v.ID]})
	}
	r.m.State = consistency
}

// filesystems records each mount's source, UUID and xfs geometry.
func (r *run) filesystems(ctx context.Context) error {
	res, err := runCmd(ctx, r.c, r.cmds.fsInfo(r.mounts))
	if err != nil {
		return fmt.Errorf("backup %s: read file system geometry: %w", r.h.name(), err)
	}
	r.m.Filesystems = parseFSInfo(string(res.Stdout))
	return nil
}

// parseFSInfo parses fsInfo's output.
func parseFSInfo(out string) []FilesystemRecord {
	var fss []FilesystemRecord
	var cur *FilesystemRecord
	section := ""
	inInfo := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case l == "BEGIN":
			inInfo = true
		case l == "END":
			inInfo = false
		case inInfo && cur != nil:
			if l != "" && l[0] != ' ' {
				section, _, _ = strings.Cut(strings.Fields(strings.ReplaceAll(l, "=", " "))[0], " ")
			}
			for _, f := range strings.Fields(l) {
				if k, v, ok := strings.Cut(f, "="); ok && k != "meta-data" && k != "data" && k != "naming" && k != "log" && k != "realtime" && v != "" {
					cur.Geometry[section+"."+k] = strings.TrimSuffix(v, ",")
				}
			}
		case strings.Count(l, "|") == 3:
			p := strings.Split(l, "|")
			fss = append(fss, FilesystemRecord{Mount: p[0], Source: p[1], Type: p[2], UUID: p[3], Geometry: map[string]string{}})
			cur = &fss[len(fss)-1]
		}
	}
	return fss
}

// underMount reports whether file p lies on one of mounts.
func underMount(p string, mounts []string) bool {
	for _, m := range mounts {
		if p == m || strings.HasPrefix(path.Clean(p), strings.TrimSuffix(m, "/")+"/") {
			return true
		}
	}
	return false
}
