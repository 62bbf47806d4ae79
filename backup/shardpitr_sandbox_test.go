package backup

import (
	"bufio"
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
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
)

// The per-shard recovery test's sandbox: 127.0.161.x, load balancer 18161, moto 15161.
const (
	spBase     = "127.0.161.0"
	spLBPort   = 18161
	spMotoPort = 15161
	spShards   = 4
)

var spHosts = []struct {
	role  string
	index int
	addr  string
}{{"pg", 0, "127.0.161.1"}, {"pg", 1, "127.0.161.2"}, {"scratch", 0, "127.0.161.3"}}

func spStack() *stack.Stack {
	st := pitrStack()
	st.Name = "shardpitr"
	st.Network.AddressBase = netip.MustParseAddr("127.0.161.1")
	st.Sandbox = stack.Sandbox{LBPort: spLBPort, MotoPort: spMotoPort}
	st.Shards.Logical = spShards
	return st
}

// spStackYAML is spStack as a stack file (%s: sandbox.dir), for the instactl binary.
const spStackYAML = `name: shardpitr
provider: sandbox
network:
  address_base: 127.0.161.1
roles:
  pg: {count: 2, replicas: 1, port: 5432, volumes: {count: 1, size_gib: 1, filesystem: xfs, mount: /var/lib/postgresql}}
  scratch: {count: 1}
load_balancer: {target_role: scratch, target_port: 8080}
deploy: {role: scratch}
shards: {logical: 4, role: pg, database: instagram, control_database: instagram_control}
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
  lb_port: 18161
  moto_port: 15161
`

// spRun runs the instactl binary bin on the test's stack file and returns stdout, stderr and
// the exit status.
func spRun(t *testing.T, sbDir, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	file := filepath.Join(filepath.Dir(sbDir), filepath.Base(sbDir)+".yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(spStackYAML, sbDir)), 0o644); err != nil {
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
	t.Logf("instactl %s: exit %d\n%s%s", strings.Join(args, " "), code, tail(o.String(), 3000), tail(e.String(), 3000))
	return o.String(), e.String(), code
}

// spWrite is one insert of a shard writer: when it was sent and acknowledged.
type spWrite struct {
	name       string
	sent, ackd time.Time
}

// spWriter inserts users into every shard of the node, one writer per shard, recording each
// write's send and acknowledgement times.
type spWriter struct {
	mu     sync.Mutex
	writes map[int][]spWrite
	errs   map[int][]error
	stop   atomic.Bool
	wg     sync.WaitGroup
}

func startSPWriter(t *testing.T, addr string) *spWriter {
	t.Helper()
	w := &spWriter{writes: map[int][]spWrite{}, errs: map[int][]error{}}
	for s := range spShards {
		conn, err := pgx.Connect(context.Background(), "postgres://postgres@"+addr+":5432/instagram?sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		w.wg.Go(func() {
			ctx := context.Background()
			defer conn.Close(ctx)
			sql := "INSERT INTO shard_000" + strconv.Itoa(s) + ".users (username) VALUES ($1)"
			for i := 0; !w.stop.Load(); i++ {
				name := fmt.Sprintf("s%d-%d", s, i)
				sent := time.Now()
				_, err := conn.Exec(ctx, sql, name)
				w.mu.Lock()
				if err != nil {
					// A write that fails is not acknowledged; the app would retry it.
					w.errs[s] = append(w.errs[s], err)
				} else {
					w.writes[s] = append(w.writes[s], spWrite{name, sent, time.Now()})
				}
				w.mu.Unlock()
				time.Sleep(3 * time.Millisecond)
			}
		})
	}
	return w
}

func (w *spWriter) count(shard int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writes[shard])
}

func (w *spWriter) finish() {
	w.stop.Store(true)
	w.wg.Wait()
}

// TestSandboxShardPITR recovers one logical shard of a live node to a time through the real
// CLI (`backup restore --to-time T pg-0 --shard 2 --to scratch-0`) while a writer writes to
// every shard of the node: shard 2 ends as it was at T (every write acknowledged before T,
// none sent after T before the recovery), the other shards lose no acknowledged write and keep
// taking writes during it, and pg_amcheck finds the node clean. Then `backup restore --to-lsn`
// and the drill (`backup verify --pitr-ago`) run through the CLI too.
func TestSandboxShardPITR(t *testing.T) {
	requireSandbox(t)
	testenv.Require(t, "go", "golang-go")
	if err := os.MkdirAll("/var/lib/instactl/sandbox", 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := os.MkdirTemp("/var/lib/instactl/sandbox", "shardpitr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	sbDir := filepath.Join(root, "sandbox")
	p, err := sandbox.New(sandbox.Config{Dir: sbDir, AddressBase: netip.MustParseAddr(spBase), LBPort: spLBPort})
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.NewDialer(remote.Config{User: "root", IdentityFiles: []string{p.KeyPath()}, KnownHostsFile: p.KnownHostsPath(),
		Port: sandbox.DefaultSSHPort, KeepAliveInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := &sandboxEnv{p: p, d: d, hosts: map[string]cloud.Instance{},
		env: Env{Stack: spStack(), Provider: p, Dialer: d, StateDir: filepath.Join(sbDir, "state"), Version: "test"}}
	testenv.Require(t, "moto_server", "python3-moto (or: pip install 'moto[server]')")
	testenv.Require(t, "nginx", "nginx")
	instactl := buildInstactl(t)
	ctx := context.Background()
	run := func(args ...string) (string, string, int) { return spRun(t, sbDir, instactl, args...) }
	t.Cleanup(func() {
		if _, _, code := run("sandbox", "down"); code != 0 {
			t.Errorf("sandbox down: exit %d", code)
		}
	})
	// sandbox up installs the WAL archiver itself on a stack with backup.wal_archive.
	_, stderr, code := run("sandbox", "up")
	if code != 0 || !strings.Contains(stderr, "WAL archive: bucket shardpitr-wal created, archiver "+templates.ArchiverPath+" installed on 2 Postgres hosts") {
		t.Fatalf("sandbox up: exit %d; want the WAL archiver installed", code)
	}
	desc, err := s.p.Describe(ctx, "shardpitr")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range desc.Instances {
		if in.State == "running" {
			s.hosts[stack.HostName(in.Role, in.Index)] = in
		}
	}
	if s.hosts["pg-0"].ID == "" || s.hosts["scratch-0"].ID == "" {
		t.Fatalf("the sandbox's hosts: %+v", desc.Instances)
	}
	if _, _, code := run("shard", "init"); code != 0 {
		t.Fatalf("shard init: exit %d", code)
	}
	pg0 := spHosts[0].addr
	live, err := pgx.Connect(ctx, "postgres://postgres@"+pg0+":5432/instagram?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(ctx)
	// Likes of shard 2 before the set and the target; the mistake drops the table.
	if _, err := live.Exec(ctx, "INSERT INTO shard_0002.likes (photo_id, user_id) SELECT g, g FROM generate_series(1, 500) g"); err != nil {
		t.Fatal(err)
	}
	w := startSPWriter(t, pg0)
	defer w.finish()
	s.waitFor(t, "writes under way", 30*time.Second, func() bool { return w.count(2) > 20 })
	s.env.Progress = func(e Event) { t.Logf("%s %s %s: %s", e.Set, e.Host, e.Step, e.Message) }
	if _, err := Create(ctx, Options{Env: s.env, Target: TargetPostgres}); err != nil {
		t.Fatalf("create: %v", err)
	}
	s.waitFor(t, "writes after the set", 30*time.Second, func() bool { return w.count(2) > 150 })
	target := time.Now()
	n := w.count(2)
	s.waitFor(t, "writes after the target", 30*time.Second, func() bool { return w.count(2) > n+100 })
	// The mistake: shard 2 loses its likes and half its users; the writer goes on.
	if _, err := live.Exec(ctx, "DROP TABLE shard_0002.likes; DELETE FROM shard_0002.users WHERE id % 2 = 0"); err != nil {
		t.Fatal(err)
	}

	// A shard the map does not have is refused before anything is restored.
	if _, stderr, code := run("backup", "restore", "--to-time", target.Format(time.RFC3339Nano), "pg-0", "--shard", "9", "--to", "scratch-0"); code != 2 ||
		!strings.Contains(stderr, "--shard 9: the map has shards 0-3") {
		t.Fatalf("backup restore --shard 9: exit %d, want 2 naming the map's shards", code)
	}
	began := time.Now()
	counts := map[int]int{}
	for sh := range spShards {
		counts[sh] = w.count(sh)
	}
	jsonOut, _, code := run("backup", "restore", "--to-time", target.Format(time.RFC3339Nano), "pg-0", "--shard", "2", "--to", "scratch-0", "-o", "json")
	ended := time.Now()
	if code != 0 {
		t.Fatalf("backup restore --shard 2: exit %d", code)
	}
	var res struct {
		Restore PITRResult `json:"restore"`
		Recover struct {
			Rows int64 `json:"rows"`
			Swap struct {
				WindowMS float64 `json:"window_ms"`
				Aside    string  `json:"aside"`
			} `json:"swap"`
			DropAside string `json:"drop_aside"`
			Move      struct {
				ID    int64  `json:"id"`
				State string `json:"state"`
				Kind  string `json:"kind"`
			} `json:"move"`
		} `json:"recover"`
	}
	if err := json.Unmarshal([]byte(jsonOut), &res); err != nil {
		t.Fatalf("-o json: %v\n%s", err, jsonOut)
	}
	rc := res.Recover
	t.Logf("restore reached %s (last commit %s); recovery %d: %d rows, swap blocked shard 2 for %.1f ms, old schema %s",
		res.Restore.ReachedLSN, res.Restore.ReachedCommit.Format(time.RFC3339Nano), rc.Move.ID, rc.Rows, rc.Swap.WindowMS, rc.Swap.Aside)
	if rc.Move.State != "completed" || rc.Move.Kind != "recover" || rc.Swap.WindowMS <= 0 || rc.Swap.Aside == "" ||
		res.Restore.ReachedCommit.After(target) || res.Restore.ReachedLSN == "" {
		t.Fatalf("recovery result %s", jsonOut)
	}
	// Other shards took writes while the command ran.
	for sh := range spShards {
		if sh != 2 && w.count(sh) < counts[sh]+50 {
			t.Errorf("shard %d took %d writes during the recovery, want it to keep taking them", sh, w.count(sh)-counts[sh])
		}
	}
	atEnd := w.count(2)
	s.waitFor(t, "writes to the recovered shard", 30*time.Second, func() bool { return w.count(2) > atEnd+110 })
	w.finish()

	names := func(schema string) map[string]bool {
		rows, err := live.Query(ctx, "SELECT username FROM "+schema+".users")
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, n := range got {
			m[n] = true
		}
		return m
	}
	got := names("shard_0002")
	var before, between, after, missing, extra int
	for _, wr := range w.writes[2] {
		switch {
		case wr.ackd.Before(target):
			before++
			if !got[wr.name] {
				if missing++; missing <= 5 {
					t.Errorf("shard 2: write %s acknowledged at %s, before the target, is missing", wr.name, wr.ackd.Format(time.RFC3339Nano))
				}
			}
		case wr.sent.After(target) && wr.ackd.Before(began):
			between++
			if got[wr.name] {
				if extra++; extra <= 5 {
					t.Errorf("shard 2: write %s sent at %s, after the target, is in the recovered shard", wr.name, wr.sent.Format(time.RFC3339Nano))
				}
			}
		case wr.sent.After(ended):
			after++
			if !got[wr.name] {
				t.Errorf("shard 2: write %s acknowledged after the recovery is missing", wr.name)
			}
		}
	}
	t.Logf("shard 2: %d writes before the target restored, %d between target and recovery left in %s, %d after it kept; %d failed writes",
		before, between, rc.Swap.Aside, after, len(w.errs[2]))
	if before < 100 || between < 100 || after < 100 || missing+extra > 0 {
		t.Fatalf("shard 2: %d/%d/%d writes around the target, %d missing, %d extra", before, between, after, missing, extra)
	}
	var likes int
	if err := live.QueryRow(ctx, "SELECT count(*) FROM shard_0002.likes").Scan(&likes); err != nil || likes != 500 {
		t.Fatalf("shard 2 likes after the recovery: %d %v, want the 500 dropped after the target", likes, err)
	}
	for sh := range spShards {
		if sh == 2 {
			continue
		}
		have := names("shard_000" + strconv.Itoa(sh))
		for _, wr := range w.writes[sh] {
			if !have[wr.name] {
				t.Fatalf("shard %d lost acknowledged write %s", sh, wr.name)
			}
		}
		if len(w.errs[sh]) > 0 {
			t.Errorf("shard %d: %d writes failed during the recovery, first: %v", sh, len(w.errs[sh]), w.errs[sh][0])
		}
	}
	s.sh(t, "pg-0", "cd / && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_amcheck -h /run/postgresql -p 5432 -U postgres -d instagram --install-missing --heapallindexed")
	if err := Teardown(ctx, s.env, &res.Restore.Restored); err != nil {
		t.Fatalf("teardown: %v", err)
	}

	// A second recovery, of shard 1 to the same target, killed (SIGKILL) once its copy started
	// and finished by `instactl shard resume`. Its restored copy goes beside the first one's
	// place on scratch-0 (another mount and port).
	id := spKilledRecovery(t, sbDir, instactl, target, "recover_copy: started")
	if _, _, code := run("shard", "resume", id); code != 0 {
		t.Fatalf("shard resume %s after the kill: exit %d", id, code)
	}
	got1 := names("shard_0001")
	var before1, after1 int
	for _, wr := range w.writes[1] {
		switch {
		case wr.ackd.Before(target):
			before1++
			if !got1[wr.name] {
				t.Fatalf("shard 1 after the resumed recovery: write %s acknowledged before the target is missing", wr.name)
			}
		case wr.sent.After(target):
			after1++
			if got1[wr.name] {
				t.Fatalf("shard 1 after the resumed recovery: write %s sent after the target is there", wr.name)
			}
		}
	}
	t.Logf("shard 1 recovered by recovery %s, killed and resumed: %d writes before the target there, %d after it not", id, before1, after1)
	if out, _, code := run("shard", "status"); code != 0 || !strings.Contains(out, "recover") {
		t.Fatalf("shard status: exit %d, want the recoveries listed", code)
	}

	// `backup restore --to-lsn` through the CLI: every row committed before the LSN was read is there.
	var lsn string
	if _, err := live.Exec(ctx, "INSERT INTO shard_0001.users (username) VALUES ('before-lsn')"); err != nil {
		t.Fatal(err)
	}
	if err := live.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	if _, err := live.Exec(ctx, "INSERT INTO shard_0001.users (username) VALUES ('after-lsn')"); err != nil {
		t.Fatal(err)
	}
	jsonOut, _, code = run("backup", "restore", "--to-lsn", lsn, "pg-0", "--to", "scratch-0", "-o", "json")
	if code != 0 {
		t.Fatalf("backup restore --to-lsn %s: exit %d", lsn, code)
	}
	pr := &PITRResult{}
	if err := json.Unmarshal([]byte(jsonOut), pr); err != nil {
		t.Fatalf("-o json: %v\n%s", err, jsonOut)
	}
	psql := "runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -At -v ON_ERROR_STOP=1 -h /run/postgresql -p " + strconv.Itoa(pr.Port) + " -d instagram -c "
	out := s.sh(t, "scratch-0", psql+remote.Quote("SELECT string_agg(username, ',' ORDER BY username) FROM shard_0001.users WHERE username LIKE '%-lsn'"))
	t.Logf("restored to LSN %s: reached %s; rows %q", lsn, pr.ReachedLSN, out)
	if out != "before-lsn" || pr.RecoveryTarget != lsn {
		t.Fatalf("restore to LSN %s holds %q, want only before-lsn (result %+v)", lsn, out, pr)
	}
	if err := Teardown(ctx, s.env, &pr.Restored); err != nil {
		t.Fatalf("teardown: %v", err)
	}

	// The drill through the CLI: a temporary scratch host, a restore to a moment ago, pg_amcheck.
	if out, _, code := run("backup", "verify", "--pitr-ago", "1s", "--node", "pg-0"); code != 0 || !strings.Contains(out, "Point-in-time drill of pg-0") || !strings.Contains(out, "PASSED") {
		t.Fatalf("backup verify --pitr-ago 1s --node pg-0: exit %d", code)
	}
}

// spKilledRecovery starts `backup restore --to-time target pg-0 --shard 1` and kills it with
// SIGKILL as soon as its progress shows at; it returns the recovery's id.
func spKilledRecovery(t *testing.T, sbDir, bin string, target time.Time, at string) string {
	t.Helper()
	file := filepath.Join(filepath.Dir(sbDir), filepath.Base(sbDir)+".yaml")
	cmd := exec.Command(bin, "--stack", file, "backup", "restore", "--to-time", target.Format(time.RFC3339Nano), "pg-0", "--shard", "1",
		"--to", "scratch-0", "--mount", "/srv/pitr-killed", "--port", "5433")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	id := ""
	var lines []string
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		if strings.Contains(line, at) {
			if _, err := fmt.Sscanf(strings.TrimSpace(line), "move %s", &id); err != nil {
				t.Fatalf("no recovery id in %q: %v", line, err)
			}
			id = strings.TrimSuffix(id, ":")
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	_ = cmd.Wait()
	t.Logf("killed at %q:\n%s", at, tail(strings.Join(lines, "\n"), 2000))
	if id == "" {
		t.Fatalf("the recovery never reached %q", at)
	}
	return id
}
