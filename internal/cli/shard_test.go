package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/shardmove"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

func TestShardMoveOptions(t *testing.T) {
	var got *ShardMoveOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdShardMove(f, func() Output { return OutputText }, func(o *ShardMoveOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"3", "shard_0005", "--to", "pg-2", "--dry-run", "--window", "500ms", "--parallel", "1"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	want := ShardMoveOptions{Shards: []int{3, 5}, To: "pg-2", DryRun: true, Window: 500 * time.Millisecond, Parallel: 1}
	if fmt.Sprint(*got) != fmt.Sprint(want) {
		t.Fatalf("options %+v, want %+v", *got, want)
	}
}

func TestShardBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"shard", "move", "abc", "--to", "pg-2"}, "SHARD must be a logical shard number"},
		{[]string{"shard", "move", "3"}, "--to NODE is required"},
		{[]string{"shard", "move", "--to", "pg-2"}, "at least one SHARD"},
		{[]string{"shard", "move", "3", "3", "--to", "pg-2"}, "given twice"},
		{[]string{"shard", "move", "3", "--to", "pg-2", "--window", "0s"}, "--window must be > 0"},
		{[]string{"shard", "resume", "x"}, "MOVE must be a move id"},
		{[]string{"shard", "abort"}, "exactly one MOVE"},
		{[]string{"shard", "complete", "7", "--grace", "-1s"}, "--grace must be >= 0"},
		{[]string{"shard", "status", "0"}, "MOVE must be a move id"},
		{[]string{"shard", "rebalance", "--plan", "--apply"}, "exclude each other"},
		{[]string{"shard", "rebalance", "--target", "0.9"}, "--target must be >= 1"},
	} {
		_, stderr, code := run(t, tc.args...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}

// shardSyncBuffer is an io.Writer safe for the progress lines of parallel moves; it calls
// onLine for every complete line.
type shardSyncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	onLine func(string)
	part   string
}

func (b *shardSyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	b.part += string(p)
	for {
		i := strings.IndexByte(b.part, '\n')
		if i < 0 {
			break
		}
		if b.onLine != nil {
			b.onLine(b.part[:i])
		}
		b.part = b.part[i+1:]
	}
	return len(p), nil
}

func (b *shardSyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestShardSandbox proves the shard commands against the real sandbox: init (twice), map,
// app-role access, dry run, refusal, an online move, complete, an interrupted move that is
// aborted without leftovers, and a rebalance plan.
func TestShardSandbox(t *testing.T) {
	requireSandbox(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "stack.yaml")
	data := fmt.Sprintf(`name: shardtest
provider: sandbox
network:
  address_base: 127.0.90.1
roles:
  app: {count: 1}
  pg: {count: 4, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}
shards:
  logical: 16
sandbox:
  dir: %s
  lb_port: 18190
  moto_port: 15090
`, filepath.Join(dir, "sandbox"))
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	st := sandboxUp(t, path)
	sh := func(args ...string) (string, string, int) {
		t.Helper()
		start := time.Now()
		stdout, stderr, code := run(t, append([]string{"--stack", path, "shard"}, args...)...)
		t.Logf("shard %s: exit %d in %s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond))
		return stdout, stderr, code
	}
	pg0, pg2 := shardTestAddr(t, st, 0), shardTestAddr(t, st, 2)
	connect := func(user, addr, db string) *pgx.Conn { t.Helper(); return shardTestConnect(t, user, addr, db) }
	count := func(c *pgx.Conn, sql string, args ...any) int64 {
		t.Helper()
		var n int64
		if err := c.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}
	loadMap := func() ShardMapView {
		t.Helper()
		stdout, stderr, code := sh("map", "-o", "json")
		var v ShardMapView
		if err := json.Unmarshal([]byte(stdout), &v); code != 0 || err != nil {
			t.Fatalf("map: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
		}
		return v
	}

	// Init is idempotent.
	stdout, stderr, code := sh("init")
	if code != 0 || !strings.Contains(stdout, "16 logical shards over 2 nodes") || !strings.Contains(stdout, "Created 16 shard schemas, 0 already existed") {
		t.Fatalf("init: exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = sh("init")
	if code != 0 || !strings.Contains(stdout, "Created 0 shard schemas, 16 already existed") {
		t.Fatalf("second init: exit %d\n%s\n%s", code, stdout, stderr)
	}
	v := loadMap()
	if v.LogicalShards != 16 || len(v.Nodes) != 2 || v.Nodes[0].Name != "pg-0" || v.Nodes[0].Shards != 8 || v.Nodes[1].Name != "pg-2" || v.Nodes[1].Shards != 8 {
		t.Fatalf("map: %+v", v.Nodes)
	}
	if stdout, _, code := sh("map"); code != 0 || !strings.Contains(stdout, "shard_0015") || !strings.Contains(stdout, "16 logical shards over 2 nodes") {
		t.Fatalf("map text: exit %d\n%s", code, stdout)
	}

	// The app role reads the map and writes its shard, as app servers will.
	appCtl := connect("app", pg0, "instagram_control")
	mp, err := shardmap.Load(context.Background(), appCtl)
	if err != nil || mp.Nodes["pg-2"].DSN != "postgres://app@"+pg2+":5432/instagram?sslmode=disable" {
		t.Fatalf("app reads the map: %v %+v", err, mp.Nodes)
	}
	const shard = 0 // round robin: on pg-0
	app0 := connect("app", pg0, "instagram")
	if _, err := app0.Exec(context.Background(), `INSERT INTO shard_0000.users (username) SELECT 'user' || g FROM generate_series(1, 200) g;
		INSERT INTO shard_0000.photos (user_id, s3_key, size, sha256) SELECT id, 'k/' || id, 10, 'x' FROM shard_0000.users`); err != nil {
		t.Fatalf("app writes shard 0 on pg-0: %v", err)
	}
	admin0, admin2 := connect("postgres", pg0, "instagram"), connect("postgres", pg2, "instagram")
	schemaOn := func(c *pgx.Conn, schema string) bool {
		return count(c, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 1
	}

	// A dry run prints the plan and changes nothing.
	stdout, stderr, code = sh("move", "0", "--to", "pg-2", "--dry-run")
	if code != 0 || !strings.Contains(stdout, "checks:") || !strings.Contains(stdout, "steps:") || !strings.Contains(stdout, "Dry run: nothing was changed") {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if v := loadMap(); v.Shards[shard].Node != "pg-0" || v.Shards[shard].Epoch != 1 || v.Shards[shard].State != "active" || schemaOn(admin2, "shard_0000") {
		t.Fatalf("dry run changed something: %+v", v.Shards[shard])
	}
	if stdout, _, code := sh("status"); code != 0 || !strings.Contains(stdout, "No shard moves recorded.") {
		t.Fatalf("status after dry run: %d %s", code, stdout)
	}

	// Moving to the node that holds it is refused with the reason.
	stdout, stderr, code = sh("move", "0", "--to", "pg-0")
	if code != ExitUsage || !strings.Contains(stderr, "shard 0 is on pg-0") || !strings.Contains(stdout, "REFUSED") {
		t.Fatalf("move to own node: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if _, stderr, code := sh("move", "0", "--to", "pg-9"); code != ExitUsage || !strings.Contains(stderr, `unknown node "pg-9" (known: pg-0, pg-2)`) {
		t.Fatalf("move to unknown node: exit %d %s", code, stderr)
	}

	// The move.
	stdout, stderr, code = sh("move", "0", "--to", "pg-2", "--window", "2s")
	if code != 0 || !strings.Contains(stdout, "Moved shard 0 pg-0 -> pg-2 (move 1, epoch 1 -> 2): writes were blocked for") ||
		!strings.Contains(stderr, "move 1: cutover: done") {
		t.Fatalf("move: exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Logf("move output:\n%s", stdout)
	if v := loadMap(); v.Shards[shard].Node != "pg-2" || v.Shards[shard].Epoch != 2 || v.Shards[shard].State != "active" || v.Nodes[1].Shards != 9 {
		t.Fatalf("map after move: %+v", v.Shards[shard])
	}
	app2 := connect("app", pg2, "instagram")
	if n := count(app2, "SELECT count(*) FROM shard_0000.users"); n != 200 {
		t.Fatalf("%d users on the target, want 200", n)
	}
	if n := count(app2, "SELECT count(*) FROM shard_0000.photos"); n != 200 {
		t.Fatalf("%d photos on the target, want 200", n)
	}
	// The app writes on the new node (default privileges cover the copy) and is fenced on the old.
	if _, err := app2.Exec(context.Background(), "INSERT INTO shard_0000.users (username) VALUES ('after-move')"); err != nil {
		t.Fatalf("app writes the moved shard on pg-2: %v", err)
	}
	if _, err := app0.Exec(context.Background(), "INSERT INTO shard_0000.users (username) VALUES ('stale')"); err == nil {
		t.Fatal("app wrote the old copy on pg-0")
	}
	if stdout, _, code := sh("status"); code != 0 || !strings.Contains(stdout, "moved") || !strings.Contains(stdout, "shard complete 1") {
		t.Fatalf("status: %d\n%s", code, stdout)
	}
	if stdout, _, code := sh("status", "1"); code != 0 || !strings.Contains(stdout, "cutover") || !strings.Contains(stdout, "window_ms") {
		t.Fatalf("status 1: %d\n%s", code, stdout)
	}

	// Complete: refused inside the grace period, then drops the old copy.
	if _, stderr, code := sh("complete", "1", "--grace", "1h"); code != ExitUnsafe || !strings.Contains(stderr, "grace period") {
		t.Fatalf("complete within grace: exit %d %s", code, stderr)
	}
	if !schemaOn(admin0, "shard_0000") {
		t.Fatal("complete within grace dropped the old copy")
	}
	if stdout, stderr, code := sh("complete", "1", "--grace", "0s"); code != 0 || !strings.Contains(stdout, "Completed move 1") {
		t.Fatalf("complete: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if schemaOn(admin0, "shard_0000") {
		t.Fatal("old copy of shard 0 still on pg-0")
	}
	leftovers := func() int64 {
		return count(admin0, "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'instactl%' OR slot_name LIKE 'pg\\_%\\_sync\\_%') + (SELECT count(*) FROM pg_publication)") +
			count(admin2, "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'instactl%' OR slot_name LIKE 'pg\\_%\\_sync\\_%') + (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_subscription)")
	}
	if n := leftovers(); n != 0 {
		t.Fatalf("%d replication objects left after complete", n)
	}
	// Every row of the moved shard, and the write made after the move, exactly once on pg-2.
	if n := count(app2, "SELECT count(*) FROM shard_0000.users WHERE username = 'after-move'"); n != 1 {
		t.Fatalf("the write after the move is on pg-2 %d times", n)
	}
	if n := count(app2, "SELECT count(*) - count(DISTINCT (username, created_at)) FROM shard_0000.users"); n != 0 {
		t.Fatalf("%d users twice on pg-2", n)
	}
	if n := count(app2, "SELECT count(*) FROM shard_0000.users"); n != 201 {
		t.Fatalf("%d users on pg-2 after complete, want 201", n)
	}

	// Ctrl-C while the copy syncs: the move stops, names resume and abort; abort leaves nothing.
	interrupted := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out bytes.Buffer
		errOut := &shardSyncBuffer{onLine: func(l string) {
			if strings.Contains(l, shardmove.StepSubscription+": done") {
				cancel()
			}
		}}
		code := Run(ctx, &IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: errOut}, append([]string{"--stack", path, "shard"}, args...))
		if code != ExitError {
			t.Fatalf("interrupted %v: exit %d, want 1\n%s\n%s", args, code, out.String(), errOut.String())
		}
		return errOut.String()
	}
	errOut := interrupted("move", "1", "--to", "pg-0")
	if !strings.Contains(errOut, "shard resume 2") || !strings.Contains(errOut, "shard abort 2") {
		t.Fatalf("interrupted move names no resume/abort:\n%s", errOut)
	}
	t.Logf("interrupted move:\n%s", errOut)
	if stdout, _, code := sh("status"); code != 0 || !strings.Contains(stdout, "failed") {
		t.Fatalf("status after interrupt: %d\n%s", code, stdout)
	}
	// Another process holds the move: abort refuses with exit 4 and changes nothing.
	adminCtl := connect("postgres", pg0, "instagram_control")
	if _, err := adminCtl.Exec(context.Background(), "SELECT pg_advisory_lock(7271, 2)"); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := sh("abort", "2"); code != ExitLocked || !strings.Contains(stderr, "another process") {
		t.Fatalf("abort of a locked move: exit %d %s", code, stderr)
	}
	if _, err := adminCtl.Exec(context.Background(), "SELECT pg_advisory_unlock(7271, 2)"); err != nil {
		t.Fatal(err)
	}
	if stdout, stderr, code := sh("abort", "2"); code != 0 || !strings.Contains(stdout, "Aborted move 2: shard 1 stays on pg-2") {
		t.Fatalf("abort: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if n := leftovers(); n != 0 || schemaOn(admin0, "shard_0001") {
		t.Fatalf("%d replication objects or the copy left after abort", n)
	}
	if v := loadMap(); v.Shards[1].Node != "pg-2" || v.Shards[1].Epoch != 1 || v.Shards[1].State != "active" {
		t.Fatalf("map after abort: %+v", v.Shards[1])
	}

	// Interrupted again, then resumed to the end, then rolled back online.
	if errOut := interrupted("move", "2", "--to", "pg-2"); !strings.Contains(errOut, "shard resume 3") {
		t.Fatalf("interrupted move names no resume:\n%s", errOut)
	}
	if stdout, stderr, code := sh("resume", "3"); code != 0 || !strings.Contains(stdout, "Moved shard 2 pg-0 -> pg-2 (move 3, epoch 1 -> 2)") {
		t.Fatalf("resume: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if stdout, stderr, code := sh("rollback", "3"); code != 0 || !strings.Contains(stdout, "Rolled back shard 2 pg-2 -> pg-0 (move 4, epoch 2 -> 3)") {
		t.Fatalf("rollback: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if v := loadMap(); v.Shards[2].Node != "pg-0" || v.Shards[2].Epoch != 3 {
		t.Fatalf("map after rollback: %+v", v.Shards[2])
	}
	if _, stderr, code := sh("rollback", "3"); code != ExitUsage || !strings.Contains(stderr, "rolled_back") {
		t.Fatalf("second rollback: exit %d %s", code, stderr)
	}
	if stdout, stderr, code := sh("complete", "4", "--grace", "0s"); code != 0 || schemaOn(admin2, "shard_0002") || leftovers() != 0 {
		t.Fatalf("complete rollback: exit %d\n%s\n%s", code, stdout, stderr)
	}

	// Rebalance: 9 shards on pg-2 (one holds all the data), 7 on pg-0.
	stdout, stderr, code = sh("rebalance", "--plan", "--sample", "0")
	if code != 0 || !strings.Contains(stdout, "Node load max/mean") {
		t.Fatalf("rebalance: exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Logf("rebalance plan:\n%s", stdout)
	stdout, stderr, code = sh("rebalance", "--apply", "--sample", "0", "--max-moves", "1")
	if code != 0 || !strings.Contains(stdout, "Moved shard 1 pg-2 -> pg-0 (move 5, epoch 1 -> 2)") {
		t.Fatalf("rebalance --apply: exit %d\n%s\n%s", code, stdout, stderr)
	}

	// status asks the topology which host is primary: pg-1 streams from pg-0; once the control
	// database records pg-1 as the primary of pg-0 (as a failover will), status reports pg-0 as
	// the standby of pg-1 (absent, since nothing was really promoted).
	replication := func() map[string]string {
		t.Helper()
		stdout, stderr, _ := run(t, "--stack", path, "status", "-o", "json")
		var v struct {
			Hosts []struct {
				Name        string `json:"name"`
				Replication *struct {
					Primary string `json:"primary"`
					State   string `json:"state"`
				} `json:"replication"`
			} `json:"hosts"`
		}
		if err := json.Unmarshal([]byte(stdout), &v); err != nil {
			t.Fatalf("status: %v\n%s\n%s", err, stdout, stderr)
		}
		out := map[string]string{}
		for _, h := range v.Hosts {
			if h.Replication != nil {
				out[h.Name] = h.Replication.Primary + " " + h.Replication.State
			}
		}
		return out
	}
	if r := replication(); r["pg-1"] != "pg-0 streaming" || r["pg-0"] != "" {
		t.Fatalf("replication before the change: %v", r)
	}
	if _, err := topology.RecordPrimary(context.Background(), adminCtl, "pg-0", "pg-1", 1); err != nil {
		t.Fatal(err)
	}
	if r := replication(); r["pg-0"] != "pg-1 absent" || r["pg-1"] != "" {
		t.Fatalf("replication after pg-1 is recorded as the primary of pg-0: %v", r)
	}
}

// shardTestAddr is the loopback address of sandbox host pg-i.
func shardTestAddr(t *testing.T, st *stack.Stack, i int) string {
	t.Helper()
	a, err := st.Address(stack.HostRef{Role: "pg", Index: i})
	if err != nil {
		t.Fatal(err)
	}
	return a.String()
}

// shardTestConnect opens a connection to database db on a sandbox Postgres host as user,
// closed when the test ends.
func shardTestConnect(t *testing.T, user, addr, db string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://%s@%s:5432/%s?sslmode=disable", user, addr, db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}
