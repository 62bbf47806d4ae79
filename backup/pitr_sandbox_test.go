package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
	"github.com/instactl/instactl/walarchive"
)

// The point-in-time tests' sandbox: 127.0.157.x, load balancer 18157, moto 15157.
const (
	pitrBase     = "127.0.157.0"
	pitrLBPort   = 18157
	pitrMotoPort = 15157
)

var pitrHosts = []struct {
	role  string
	index int
	addr  string
}{{"pg", 0, "127.0.157.1"}, {"pg", 1, "127.0.157.2"}, {"scratch", 0, "127.0.157.3"}}

func pitrStack() *stack.Stack {
	return &stack.Stack{
		Name: "pitr", Provider: "sandbox", Region: "us-east-1", Zone: sandbox.DefaultZone,
		SSH:     stack.SSH{User: "root", Port: sandbox.DefaultSSHPort},
		Network: stack.Network{AddressBase: netip.MustParseAddr("127.0.157.1")},
		Shards:  stack.Shards{Role: "pg", Database: "instagram", ControlDatabase: "instagram_control"},
		Sandbox: stack.Sandbox{LBPort: pitrLBPort, MotoPort: pitrMotoPort},
		Roles: []stack.Role{
			{Name: "pg", Count: 2, Replicas: 1, Port: 5432, Volumes: stack.VolumeSet{Count: 1, SizeGiB: 1, Filesystem: "xfs", Mount: "/var/lib/postgresql"}},
			{Name: "scratch", Count: 1},
		},
		Backup: stack.Backup{Targets: []string{"pg"}, MaxLagBytes: 64 << 20, MaxLagTime: 60 * time.Second,
			FreezeBudget: 10 * time.Second, Retention: stack.Retention{Hourly: 24, MinVerified: 1},
			WALArchive: true, ArchiveTimeout: 10 * time.Second},
	}
}

// buildInstactl builds the instactl binary the hosts run as archive_command and restore_command.
func buildInstactl(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "instactl")
	cmd := exec.Command("go", "build", "-o", out, "github.com/instactl/instactl/cmd/instactl")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build instactl: %v\n%s", err, b)
	}
	return out
}

// startPITRMoto runs moto_server on the sandbox's moto port; `instactl wal install` creates the
// archive's bucket.
func startPITRMoto(t testing.TB) {
	t.Helper()
	bin := testenv.Require(t, "moto_server", "python3-moto (or: pip install 'moto[server]')")
	p := testenv.Start(t, syscall.SIGTERM, bin, "-H", "127.0.0.1", "-p", strconv.Itoa(pitrMotoPort))
	if err := testenv.WaitTCP("127.0.0.1:"+strconv.Itoa(pitrMotoPort), 30*time.Second); err != nil {
		t.Fatalf("moto_server: %v\n%s", err, p.Log.String())
	}
}

// newPITREnv is the sandbox of the point-in-time tests; volMiB sizes its volume images (0: the
// sandbox's default). Its state directory is the one the instactl binary uses (DIR/state), so
// the library calls and the commands see the same manifests.
func newPITREnv(t testing.TB, dir string, volMiB int) *sandboxEnv {
	t.Helper()
	p, err := sandbox.New(sandbox.Config{Dir: dir, AddressBase: netip.MustParseAddr(pitrBase), LBPort: pitrLBPort, VolumeSizeMiB: volMiB})
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.NewDialer(remote.Config{User: "root", IdentityFiles: []string{p.KeyPath()}, KnownHostsFile: p.KnownHostsPath(),
		Port: sandbox.DefaultSSHPort, KeepAliveInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return &sandboxEnv{p: p, d: d, hosts: map[string]cloud.Instance{},
		env: Env{Stack: pitrStack(), Provider: p, Dialer: d, StateDir: filepath.Join(dir, "state"), Version: "test"}}
}

// bringUpPITR creates pg-0 (primary), pg-1 (standby) and scratch-0, with the archive on and the
// archiver installed on the pg hosts.
func (s *sandboxEnv) bringUpPITR(t testing.TB, archiver string) {
	t.Helper()
	ctx := context.Background()
	st := s.env.Stack
	for _, h := range pitrHosts {
		role := st.Role(h.role)
		spec := cloud.InstanceSpec{Role: h.role, Index: h.index, Address: h.addr, Name: stack.HostName(h.role, h.index),
			ClientToken: "pitr/" + h.role + "/" + strconv.Itoa(h.index), Tags: map[string]string{cloud.TagStack: st.Name}}
		if h.role == "pg" {
			d, err := templates.FromStack(st, h.role, h.index, h.addr, pitrHosts[0].addr)
			if err != nil {
				t.Fatal(err)
			}
			if spec.UserData, err = templates.UserData(h.role, d); err != nil {
				t.Fatal(err)
			}
		}
		in, err := s.p.CreateInstance(ctx, spec)
		if err != nil {
			t.Fatalf("create %s: %v", spec.Name, err)
		}
		s.hosts[in.Name] = in
		if role.Volumes.Count > 0 {
			v, err := s.p.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: role.Volumes.SizeGiB, Tags: map[string]string{cloud.TagStack: st.Name, cloud.TagDevice: "/dev/sdf"}})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.p.AttachVolume(ctx, v.ID, in.ID, "/dev/sdf"); err != nil {
				t.Fatal(err)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for _, h := range pitrHosts[:2] {
		in := s.hosts[stack.HostName(h.role, h.index)]
		if err := s.p.WaitBootstrap(wctx, in.ID); err != nil {
			log, _ := s.p.HostPath(ctx, in.ID, templates.LogFile)
			b, _ := os.ReadFile(log)
			t.Fatalf("bootstrap %s: %v\n%s", in.Name, err, tail(string(b), 3000))
		}
	}
	// What an operator runs after apply: the bucket, and the archiver on every pg host.
	out, _, code := s.instactl(t, archiver, "wal", "install")
	if code != 0 || !strings.Contains(out, "Bucket "+templates.WALBucket(st)+" created") ||
		!strings.Contains(out, "pg-0: "+templates.ArchiverPath+" installed") || !strings.Contains(out, "pg-1: "+templates.ArchiverPath+" installed") {
		t.Fatalf("wal install: exit %d, output %q", code, out)
	}
}

// instactl runs the instactl binary bin on the sandbox's stack file (pitrStackYAML) and returns
// its stdout, stderr and exit status.
func (s *sandboxEnv) instactl(t testing.TB, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	sbDir := filepath.Dir(filepath.Dir(s.p.KeyPath()))
	file := filepath.Join(filepath.Dir(sbDir), "pitr.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(pitrStackYAML, sbDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"--stack", file}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("instactl %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("instactl %s: exit %d\n%s%s", strings.Join(args, " "), code, o.String(), tail(e.String(), 3000))
	return o.String(), e.String(), code
}

// timedWriter inserts rows 1, 2, ... into instagram.acked, recording when each insert was sent
// and when it was acknowledged.
type timedWriter struct {
	first      int64
	mu         sync.Mutex
	sent, ackd []time.Time
	stop       atomic.Bool
	done       chan error
}

func startTimedWriter(t *testing.T, addr string, first int64) *timedWriter {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "postgres://postgres@"+addr+":5432/instagram?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	w := &timedWriter{first: first, done: make(chan error, 1)}
	go func() {
		defer conn.Close(ctx)
		for id := first; !w.stop.Load(); id++ {
			sent := time.Now()
			if _, err := conn.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", id); err != nil {
				w.done <- fmt.Errorf("insert %d: %w", id, err)
				return
			}
			w.mu.Lock()
			w.sent, w.ackd = append(w.sent, sent), append(w.ackd, time.Now())
			w.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
		w.done <- nil
	}()
	return w
}

func (w *timedWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sent)
}

func (w *timedWriter) finish(t *testing.T) {
	t.Helper()
	w.stop.Store(true)
	if err := <-w.done; err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// check fails t unless every write acknowledged before target is in present and none sent
// after it is; it returns how many writes fall on either side.
func (w *timedWriter) check(t *testing.T, target time.Time, present map[int64]bool) (before, after int) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var missing, extra int
	for i := range w.sent {
		id := w.first + int64(i)
		switch {
		case w.ackd[i].Before(target):
			before++
			if !present[id] {
				if missing++; missing <= 5 {
					t.Errorf("write %d acknowledged at %s, before the target %s, is missing", id, w.ackd[i].Format(time.RFC3339Nano), target.Format(time.RFC3339Nano))
				}
			}
		case w.sent[i].After(target):
			after++
			if present[id] {
				if extra++; extra <= 5 {
					t.Errorf("write %d sent at %s, after the target %s, is in the copy", id, w.sent[i].Format(time.RFC3339Nano), target.Format(time.RFC3339Nano))
				}
			}
		}
	}
	if missing+extra > 0 {
		t.Errorf("%d writes acknowledged before the target missing, %d sent after it present", missing, extra)
	}
	return before, after
}

func TestSandboxPITR(t *testing.T) {
	requireSandbox(t)
	testenv.Require(t, "go", "golang-go")
	dir := t.TempDir()
	s := newPITREnv(t, dir+"/sandbox", 0)
	startPITRMoto(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := s.p.Down(ctx); err != nil {
			t.Errorf("sandbox down: %v", err)
		}
	})
	archiver := buildInstactl(t)
	s.bringUpPITR(t, archiver)
	ctx := context.Background()
	if out, _, code := s.instactl(t, archiver, "wal", "install"); code != 0 || !strings.Contains(out, "Bucket pitr-wal exists") {
		t.Fatalf("wal install again: exit %d, output %q; want the bucket found and the archiver reinstalled", code, out)
	}
	s.env.Progress = func(e Event) { t.Logf("%s %s %s: %s", e.Set, e.Host, e.Step, e.Message) }

	w := startTimedWriter(t, pitrHosts[0].addr, 1)
	defer func() {
		if !w.stop.Load() {
			w.stop.Store(true)
			<-w.done
		}
	}()
	s.waitFor(t, "writes under way", 30*time.Second, func() bool { return w.count() > 20 })

	res, err := Create(ctx, Options{Env: s.env, Target: TargetPostgres})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	m := res.Sets[0]
	pg := m.Postgres
	if pg == nil || pg.BackupLabel == "" || pg.StartLSN == "" || pg.StopLSN == "" || pg.CheckpointLSN == "" ||
		pg.StartTimeline != 1 || pg.StartWALFile == "" || pg.BackupStopAt.IsZero() {
		t.Fatalf("the set records no base backup: %+v", pg)
	}
	li, err := ParseBackupLabel(pg.BackupLabel)
	if err != nil || li.From != "standby" {
		t.Fatalf("backup label %q: %+v %v; want one taken on the standby", pg.BackupLabel, li, err)
	}
	start, _ := parseLSN(pg.StartLSN)
	stop, _ := parseLSN(pg.StopLSN)
	if start > stop {
		t.Fatalf("start LSN %s after stop LSN %s", pg.StartLSN, pg.StopLSN)
	}
	// Another machine, without the manifest, finds the set's WAL horizon in its tags.
	other := s.env
	other.StateDir = t.TempDir()
	sets, err := List(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if ws, ok := WALStartOf(sets[0]); !ok || ws != (WALStart{Group: "pg-0", SystemID: pg.SystemID, Timeline: 1, LSN: pg.StartLSN}) {
		t.Fatalf("WAL start from the tags of %s: %+v %v; want pg-0 %s 1 %s", sets[0].ID, ws, ok, pg.SystemID, pg.StartLSN)
	}
	t.Logf("set %s: base backup %s..%s (checkpoint %s), ended %s", m.SetID, pg.StartLSN, pg.StopLSN, pg.CheckpointLSN, pg.BackupStopAt.Format(time.RFC3339Nano))

	// The target: a moment while the writer runs, after the set; the writer goes on past it.
	s.waitFor(t, "writes after the set", 30*time.Second, func() bool { return w.count() > 200 })
	time.Sleep(time.Second)
	target := time.Now()
	n := w.count()
	s.waitFor(t, "writes after the target", 30*time.Second, func() bool { return w.count() > n+200 })

	// The first restore goes through the command an operator runs.
	jsonOut, _, code := s.instactl(t, archiver, "backup", "restore", "--to-time", target.Format(time.RFC3339Nano), "pg-0", "--to", "scratch-0", "-o", "json")
	w.finish(t)
	if code != 0 {
		t.Fatalf("backup restore --to-time %s: exit %d", target.Format(time.RFC3339Nano), code)
	}
	pr := &PITRResult{}
	if err := json.Unmarshal([]byte(jsonOut), pr); err != nil {
		t.Fatalf("backup restore -o json: %v\n%s", err, jsonOut)
	}
	t.Logf("restored %s to %s: reached %s, last commit %s, replay %s, timeline %d, forced switch %s",
		pr.Set, pr.RecoveryTarget, pr.ReachedLSN, pr.ReachedCommit.Format(time.RFC3339Nano), pr.Replay, pr.Timeline, pr.ForcedSwitch)
	if pr.Set != m.SetID || pr.Target != TargetPostgres || pr.RecoveryTarget == "" || pr.Timeline != 1 || pr.ReachedLSN == "" || pr.ReachedCommit.IsZero() || pr.ReachedCommit.After(target) {
		t.Fatalf("restore result %+v", pr)
	}
	psql := "runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -At -v ON_ERROR_STOP=1 -h /run/postgresql -p " + strconv.Itoa(pr.Port) + " -d instagram -c "
	out := s.sh(t, "scratch-0", psql+remote.Quote("SELECT id FROM acked"))
	before, after := w.check(t, target, idSet(out, ""))
	t.Logf("writes: %d acknowledged before the target (all restored), %d sent after it (none restored)", before, after)
	if before < 200 || after < 200 {
		t.Fatalf("the writer did not straddle the target: %d before, %d after", before, after)
	}
	if mode := s.sh(t, "scratch-0", psql+remote.Quote("SHOW archive_mode")); mode != "off" {
		t.Fatalf("the restored copy runs with archive_mode=%s, want off", mode)
	}
	s.sh(t, "scratch-0", "cd / && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_amcheck -h /run/postgresql -p "+strconv.Itoa(pr.Port)+" -U postgres --all --install-missing --heapallindexed")

	// A failover: pg-0 stops, pg-1 is promoted (timeline 2) and recorded as the primary; a
	// writer goes on there. A restore to a time after the failover follows timeline 2, one to
	// the first target (before it) stays on timeline 1's history.
	if err := Teardown(ctx, s.env, &pr.Restored); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	s.sh(t, "pg-0", "/opt/instagram/bin/instactl-svc stop postgres")
	s.sh(t, "pg-1", psqlOn("postgres", "SELECT pg_promote(true, 60)"))
	s.sh(t, "pg-1", psqlOn("postgres", "CREATE DATABASE instagram_control"))
	topo, err := topology.Resolve(ctx, s.env.Stack, "postgres")
	if err != nil {
		t.Fatalf("topology after the failover: %v", err)
	}
	conn, err := pgx.Connect(ctx, "postgres://postgres@"+pitrHosts[1].addr+":5432/instagram_control?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topology.RecordPrimary(ctx, conn, "pg-0", "pg-1", topo.Groups[0].Epoch); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	w2 := startTimedWriter(t, pitrHosts[1].addr, 1_000_000)
	defer func() {
		if !w2.stop.Load() {
			w2.stop.Store(true)
			<-w2.done
		}
	}()
	s.waitFor(t, "writes on the new primary", 30*time.Second, func() bool { return w2.count() > 200 })
	target2 := time.Now()
	n2 := w2.count()
	s.waitFor(t, "writes after the second target", 30*time.Second, func() bool { return w2.count() > n2+200 })
	pr2, err := RestoreToTime(ctx, PITROptions{Env: s.env, Node: "pg-0", To: "scratch-0", Time: target2, Archiver: archiver})
	w2.finish(t)
	if err != nil {
		t.Fatalf("restore to %s, after the failover: %v", target2.Format(time.RFC3339Nano), err)
	}
	t.Logf("after the failover: reached %s, last commit %s on timeline %d", pr2.ReachedLSN, pr2.ReachedCommit.Format(time.RFC3339Nano), pr2.Timeline)
	if pr2.Timeline != 2 || pr2.Set != m.SetID {
		t.Fatalf("restore after the failover: timeline %d from set %s, want 2 from %s", pr2.Timeline, pr2.Set, m.SetID)
	}
	out = s.sh(t, "scratch-0", psql+remote.Quote("SELECT id FROM acked"))
	got := idSet(out, "")
	before2, after2 := w2.check(t, target2, got)
	old := 0
	for id := range got {
		if id < 1_000_000 {
			old++
		}
	}
	t.Logf("timeline 2 writes: %d before the target restored, %d after not; %d of the %d timeline 1 writes there", before2, after2, old, w.count())
	if before2 < 200 || after2 < 200 || old < before {
		t.Fatalf("restore after the failover: %d/%d timeline 2 writes around the target, %d timeline 1 writes (want at least %d)", before2, after2, old, before)
	}
	if err := Teardown(ctx, s.env, &pr2.Restored); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	pr3, err := RestoreToTime(ctx, PITROptions{Env: s.env, Node: "pg-0", To: "scratch-0", Time: target, Archiver: archiver})
	if err != nil {
		t.Fatalf("restore to %s, before the failover: %v", target.Format(time.RFC3339Nano), err)
	}
	out = s.sh(t, "scratch-0", psql+remote.Quote("SELECT id FROM acked"))
	got = idSet(out, "")
	w.check(t, target, got)
	for id := range got {
		if id >= 1_000_000 {
			t.Fatalf("a restore to before the failover holds write %d of timeline 2", id)
		}
	}
	t.Logf("before the failover again: reached %s, last commit %s", pr3.ReachedLSN, pr3.ReachedCommit.Format(time.RFC3339Nano))

	// A drill: a temporary scratch host, a restore to a moment ago, pg_amcheck, the RTO measured,
	// everything torn down.
	if err := Teardown(ctx, s.env, &pr3.Restored); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	dr, err := DrillPITR(ctx, PITRDrillOptions{Env: s.env, Node: "pg-0", Ago: time.Second, Archiver: archiver})
	if err != nil {
		t.Fatalf("point-in-time drill: %v", err)
	}
	t.Logf("drill on %s: RTO %s (volumes %s, replay %s, %d bytes at %.1f MB/s), last commit %s before the target", dr.Scratch, dr.RTO, dr.Volumes, dr.Replay,
		dr.ReplayedBytes, dr.ReplayMBps, dr.Gap)
	if !dr.ScratchCreated || !dr.Amcheck || dr.RTO <= 0 || dr.ReplayedBytes <= 0 || dr.Timeline != 2 {
		t.Fatalf("drill result %+v", dr)
	}
	if d, err := s.p.Describe(ctx, "pitr"); err == nil {
		for _, in := range d.Instances {
			if in.Name == dr.Scratch && in.State != "terminated" {
				t.Errorf("the drill's scratch host %s is %s after the drill", in.Name, in.State)
			}
		}
	}

	// The archive is unbroken from the set to the primary's current segment; a segment
	// deleted from it makes the check fail naming it.
	checks, err := VerifyArchive(ctx, VerifyArchiveOptions{Env: s.env})
	if err != nil || len(checks) != 1 || !checks[0].OK || checks[0].CurrentLSN == "" || len(checks[0].Continuity.Path) != 2 {
		t.Fatalf("verify archive: %v %+v", err, checks)
	}
	if out, _, code := s.instactl(t, archiver, "backup", "verify", "--archive"); code != 0 || !strings.Contains(out, "pg-0: archive unbroken:") {
		t.Fatalf("backup verify --archive: exit %d, output %q; want pg-0's archive unbroken", code, out)
	}
	arch, err := templates.WALArchiveFor(s.env.Stack, "pg-0").Config().Open(ctx, pg.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	gone := walarchive.SegmentName(1, walarchive.LSN(start).SegNo()+1)
	if err := arch.Delete(ctx, []string{gone}); err != nil {
		t.Fatal(err)
	}
	_, err = VerifyArchive(ctx, VerifyArchiveOptions{Env: s.env})
	var gap *walarchive.GapError
	if !errors.As(err, &gap) || len(gap.Missing) != 1 || gap.Missing[0] != gone || !strings.Contains(err.Error(), gone) {
		t.Fatalf("verify archive with %s deleted: %v, want a gap naming it", gone, err)
	}
	t.Logf("with %s deleted: %v", gone, err)
	if out, _, code := s.instactl(t, archiver, "backup", "verify", "--archive"); code != 1 || !strings.Contains(out, "pg-0: archive BROKEN") || !strings.Contains(out, gone) {
		t.Fatalf("backup verify --archive with %s deleted: exit %d, output %q; want exit 1 naming it", gone, code, out)
	}

	// An archiver that cannot run (its binary gone: Postgres restarts the archiver and counts
	// no failure) is reported by the segments waiting, before pg_wal fills.
	s.sh(t, "pg-1", "mv "+templates.ArchiverPath+" "+templates.ArchiverPath+".off")
	s.sh(t, "pg-1", psqlOn("instagram", "INSERT INTO acked (id) VALUES (-1)")+" && "+psqlOn("postgres", "SELECT pg_switch_wal()"))
	var ae *ArchiverError
	s.waitFor(t, "verify to see the archiver stuck", time.Minute, func() bool {
		_, err := VerifyArchive(ctx, VerifyArchiveOptions{Env: s.env, MaxWait: 2 * time.Second})
		return errors.As(err, &ae)
	})
	if ae.Ready < 1 || ae.OldestWait < 2*time.Second {
		t.Fatalf("archiver error %+v", ae)
	}
	t.Logf("stuck archiver: %v", ae)
}

// pitrStackYAML is pitrStack as a stack file (%s: sandbox.dir), for the instactl binary.
const pitrStackYAML = `name: pitr
provider: sandbox
network:
  address_base: 127.0.157.1
roles:
  pg: {count: 2, replicas: 1, port: 5432, volumes: {count: 1, size_gib: 1, filesystem: xfs, mount: /var/lib/postgresql}}
  scratch: {count: 1}
load_balancer: {target_role: scratch, target_port: 8080}
deploy: {role: scratch}
backup:
  targets: [pg]
  max_lag_bytes: 67108864
  max_lag_time: 60s
  freeze_budget: 10s
  wal_archive: true
  archive_timeout: 10s
  retention: {hourly: 24, min_verified: 1}
sandbox:
  dir: %s
  lb_port: 18157
  moto_port: 15157
`
