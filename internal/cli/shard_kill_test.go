package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/instactl/instactl/internal/app"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/shardmove"
)

// shardKillArgsEnv carries the instactl arguments of the child process of TestShardMoveKill9.
const shardKillArgsEnv = "INSTACTL_SHARD_KILL_ARGS"

// TestShardKillHelper is not a test: TestShardMoveKill9 re-executes the test binary with only
// this test selected and the arguments in shardKillArgsEnv, so the child is a real instactl
// process (its own Postgres sessions, advisory locks and SSH connections) that can be SIGKILLed.
func TestShardKillHelper(t *testing.T) {
	raw := os.Getenv(shardKillArgsEnv)
	if raw == "" {
		t.Skip("the instactl child process of TestShardMoveKill9; runs only when re-executed by it")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		fmt.Fprintf(os.Stderr, "bad %s: %v\n", shardKillArgsEnv, err)
		os.Exit(ExitUsage)
	}
	os.Exit(Run(context.Background(), SystemIO(), args))
}

// shardKillWriters write users into one shard through the app's own router (the shard map, the
// fence and its retry) until stopped, and remember which writes were acknowledged.
type shardKillWriters struct {
	shard  int
	router *app.Router
	stop   context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	acked  []string
	failed map[string]int // by error text, for the log
}

func startShardKillWriters(t *testing.T, controlDSN string, shard int, round string) *shardKillWriters {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	router, err := app.NewRouter(ctx, controlDSN, 8, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &shardKillWriters{shard: shard, router: router, stop: cancel, failed: map[string]int{}}
	go router.Watch(ctx, controlDSN, time.Second)
	insert := fmt.Sprintf("INSERT INTO %s.users (username) VALUES ($1)", shardmap.SchemaName(shard))
	for i := range 4 {
		w.wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				name := fmt.Sprintf("%s-w%d-%d", round, i, n)
				err := router.Do(ctx, shard, 2*time.Second, func(ctx context.Context, db *pgxpool.Pool) error {
					_, err := db.Exec(ctx, insert, name)
					return err
				})
				w.mu.Lock()
				if err == nil {
					w.acked = append(w.acked, name)
				} else if ctx.Err() == nil {
					msg := err.Error()
					w.failed[msg[:min(len(msg), 120)]]++
				}
				w.mu.Unlock()
				if err != nil && ctx.Err() == nil {
					time.Sleep(20 * time.Millisecond) // a fenced shard: do not spin
				}
			}
		})
	}
	return w
}

// ackedSoFar returns how many writes were acknowledged until now.
func (w *shardKillWriters) ackedSoFar() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// halt stops the writers and returns the acknowledged writes.
func (w *shardKillWriters) halt() []string {
	w.stop()
	w.wg.Wait()
	w.router.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

// TestShardMoveKill9 proves the kill -9 promise of shard moves at the CLI: the real
// `instactl shard move` process is SIGKILLed at several journal steps while app writers (the
// app's router: shard map, fence, retry) write into the moving shard; then exactly the command
// `shard status` prints as next is run until the move is done, and every acknowledged write is
// on the target exactly once, and every row of the old copy (fenced on the source) is on the
// target too. Where the kill lands inside a step is not fixed; what is asserted is.
func TestShardMoveKill9(t *testing.T) {
	requireSandbox(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "stack.yaml")
	data := fmt.Sprintf(`name: shardkill
provider: sandbox
network:
  address_base: 127.0.93.1
roles:
  app: {count: 1}
  pg: {count: 4, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
shards:
  logical: 32
sandbox:
  dir: %s
  lb_port: 18193
  moto_port: 15093
`, filepath.Join(dir, "sandbox"))
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	st := sandboxUp(t, path)
	ctx := context.Background()
	pg0, pg2 := shardTestAddr(t, st, 0), shardTestAddr(t, st, 2)
	connect := func(user, host, db string) *pgx.Conn { t.Helper(); return shardTestConnect(t, user, host, db) }
	if stdout, stderr, code := run(t, "--stack", path, "shard", "init"); code != 0 {
		t.Fatalf("shard init: exit %d\n%s\n%s", code, stdout, stderr)
	}
	admin0, admin2 := connect("postgres", pg0, "instagram"), connect("postgres", pg2, "instagram")
	ctl := connect("postgres", pg0, "instagram_control")
	appControl := fmt.Sprintf("postgres://app@%s:5432/instagram_control?sslmode=disable", pg0)

	// One shard of pg-0 (round robin: the even ones) per kill point: each journaled step as it
	// starts, the cutover with the source fenced and with the map flipped, and random delays.
	seed := time.Now().UnixNano()
	t.Logf("random kill delays from seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	var points []shardKillPoint
	for _, step := range []string{shardmove.StepPrepare, shardmove.StepCopySchema, shardmove.StepPublication,
		shardmove.StepSubscription, shardmove.StepWaitSync, shardmove.StepVerify, shardmove.StepSyncCommit,
		shardmove.StepCutover, shardmove.StepRevoke} {
		points = append(points, shardKillPoint{name: step, step: step})
	}
	points = append(points, shardKillPoint{name: "cutover.fenced", step: shardmove.StepCutover, fenced: true},
		shardKillPoint{name: "cutover.flipped", step: shardmove.StepCutover, flipped: true})
	for range 3 {
		d := time.Duration(rng.Int64N(int64(4 * time.Second)))
		points = append(points, shardKillPoint{name: "after " + d.Round(time.Millisecond).String(), after: d})
	}
	for i, point := range points {
		shard := 2 * i
		t.Run(point.name, func(t *testing.T) {
			s := shardmap.SchemaName(shard)
			if _, err := admin0.Exec(ctx, fmt.Sprintf("INSERT INTO %s.users (username) SELECT 'seed-' || g FROM generate_series(1, 20000) g", s)); err != nil {
				t.Fatal(err)
			}
			w := startShardKillWriters(t, appControl, shard, fmt.Sprintf("r%d", i))
			halted := false
			defer func() {
				if !halted {
					w.halt()
				}
			}()
			landed := shardKillMove(t, ctl, admin0, path, shard, point)
			t.Logf("killed at %s: the journal shows %s", point.name, landed)
			before := w.ackedSoFar()

			// Run what status says, until the move is done.
			id := shardKillFollowStatus(t, path, shard, ctl, admin0)
			// The app writes again on the target through its router, after the move.
			deadline := time.Now().Add(2 * time.Minute)
			for w.ackedSoFar() <= before+10 {
				if time.Now().After(deadline) {
					t.Fatalf("no write acknowledged after the move finished (%d before the kill); errors: %v", before, w.failed)
				}
				time.Sleep(50 * time.Millisecond)
			}
			acked := w.halt()
			halted = true
			t.Logf("%d writes acknowledged; failures while fenced or killed: %v", len(acked), w.failed)

			onTarget := shardKillUsers(t, admin2, s)
			onSource := shardKillUsers(t, admin0, s)
			for _, name := range acked {
				if n := onTarget[name]; n != 1 {
					t.Errorf("acknowledged write %s is on the target %d times", name, n)
				}
			}
			for name, n := range onTarget {
				if n != 1 {
					t.Errorf("%s is on the target %d times", name, n)
				}
			}
			for name := range onSource {
				if onTarget[name] != 1 {
					t.Errorf("%s is in the old copy on the source but not on the target: a lost write", name)
				}
			}
			if seeds := shardKillCount(t, admin2, fmt.Sprintf("SELECT count(DISTINCT username) FROM %s.users WHERE username LIKE 'seed-%%'", s)); seeds != 20000 {
				t.Errorf("%d seed rows on the target, want 20000", seeds)
			}
			if m, err := shardmap.Load(ctx, ctl); err != nil || m.Shards[shard].Node != "pg-2" {
				t.Fatalf("map after the move: %+v %v", m.Shards[shard], err)
			}
			// The move is done; drop its old copy so the next round has replication slots.
			if stdout, stderr, code := run(t, "--stack", path, "shard", "complete", fmt.Sprint(id), "--grace", "0s"); code != 0 {
				t.Fatalf("complete: exit %d\n%s\n%s", code, stdout, stderr)
			}
		})
	}
}

// shardKillPoint is where TestShardMoveKill9 kills the move: when the journal shows step (or a
// later one), with the source fenced or the map flipped if asked; or, without step, after a
// delay from the start of the process.
type shardKillPoint struct {
	name            string
	step            string
	fenced, flipped bool
	after           time.Duration
}

// shardKillMove runs `instactl shard move SHARD --to pg-2` as a child process and SIGKILLs it
// at point. It returns where the journal was at the kill ("no move recorded" when the kill came
// before the move was journaled, "ended" when the move finished first).
func shardKillMove(t *testing.T, ctl, source *pgx.Conn, stackPath string, shard int, point shardKillPoint) string {
	t.Helper()
	ctx := context.Background()
	args, _ := json.Marshal([]string{"--stack", stackPath, "shard", "move", fmt.Sprint(shard), "--to", "pg-2"})
	cmd := exec.Command(os.Args[0], "-test.run=^TestShardKillHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), shardKillArgsEnv+"="+string(args))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	order := shardKillStepOrder()
	journal := func() (string, string) {
		var step, state string
		err := ctl.QueryRow(ctx, "SELECT step, state FROM shard_moves WHERE shard = $1 ORDER BY id DESC LIMIT 1", shard).Scan(&step, &state)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) && !strings.Contains(err.Error(), "does not exist") {
			t.Fatal(err)
		}
		return step, state
	}
	reached := func() bool {
		if point.step == "" {
			return time.Since(started) >= point.after
		}
		step, state := journal()
		if state != shardmove.StateRunning || order[step] < order[point.step] {
			return false
		}
		if point.fenced && order[step] == order[point.step] && !shardKillFenced(t, source, shard) {
			return false
		}
		if point.flipped && order[step] == order[point.step] {
			m, err := shardmap.Load(ctx, ctl)
			if err != nil {
				t.Fatal(err)
			}
			return m.Shards[shard].Node == "pg-2"
		}
		return true
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if reached() {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			<-exited
			t.Logf("the child's last lines before the kill:\n%s", shardKillTail(out.String(), 3))
			step, state := journal()
			if step == "" {
				return "no move recorded"
			}
			return state + " at " + step
		}
		select {
		case err := <-exited:
			t.Logf("the move ended before the kill (%v):\n%s", err, out.String())
			return "ended"
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the move never reached %s:\n%s", point.name, out.String())
		}
	}
}

// shardKillFenced reports whether the fence of shard is on in the copy behind c.
func shardKillFenced(t *testing.T, c *pgx.Conn, shard int) bool {
	t.Helper()
	var on bool
	err := c.QueryRow(context.Background(), `SELECT coalesce(bool_or(t.tgenabled <> 'D'), false) FROM pg_trigger t
		JOIN pg_class r ON r.oid = t.tgrelid JOIN pg_namespace n ON n.oid = r.relnamespace
		WHERE n.nspname = $1 AND r.relname = 'users' AND t.tgname = $2`, shardmap.SchemaName(shard), shardmap.FenceTrigger).Scan(&on)
	if err != nil {
		t.Fatal(err)
	}
	return on
}

// shardKillStepOrder numbers the steps of a move in execution order.
func shardKillStepOrder() map[string]int {
	order := map[string]int{}
	for i, s := range []string{shardmove.StepPrepare, shardmove.StepCopySchema, shardmove.StepPublication,
		shardmove.StepCopyData, shardmove.StepIndexes, shardmove.StepSubscription, shardmove.StepWaitSync,
		shardmove.StepVerify, shardmove.StepSyncCommit, shardmove.StepCutover, shardmove.StepRevoke} {
		order[s] = i + 1
	}
	return order
}

// shardKillFollowStatus reads the newest move of shard from `shard status`, runs the first
// command it prints as next (resume, for a move that is not yet done) exactly as printed, and
// repeats until the move is moved (a kill before the move was journaled leaves nothing to
// resume: then the shard must be untouched, and the move is run again). A move still locked by the killed process's session (its
// backend has not exited yet) prints no next command: that is waited out. It returns the move id.
func shardKillFollowStatus(t *testing.T, stackPath string, shard int, ctl, source *pgx.Conn) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	ran := 0
	for {
		stdout, stderr, code := run(t, "--stack", stackPath, "shard", "status", "-o", "json")
		var moves []shardmove.MoveStatus
		if err := json.Unmarshal([]byte(stdout), &moves); code != 0 || err != nil {
			t.Fatalf("status: exit %d %v\n%s\n%s", code, err, stdout, stderr)
		}
		var m *shardmove.MoveStatus
		for i := range moves {
			if moves[i].Shard == shard && (m == nil || moves[i].ID > m.ID) {
				m = &moves[i]
			}
		}
		if m == nil {
			// Killed before the move was journaled: nothing changed, and nothing is to be
			// resumed; the shard must be untouched and writable, and the move is run again.
			if mp, err := shardmap.Load(context.Background(), ctl); err != nil || mp.Shards[shard].Node != "pg-0" ||
				mp.Shards[shard].State != shardmap.StateActive || shardKillFenced(t, source, shard) || ran > 0 {
				t.Fatalf("no move of shard %d recorded, yet the shard changed: %+v %v (fenced: %v)", shard, mp.Shards[shard], err, shardKillFenced(t, source, shard))
			}
			ran++
			if stdout, stderr, code := run(t, "--stack", stackPath, "shard", "move", fmt.Sprint(shard), "--to", "pg-2"); code != 0 {
				t.Fatalf("move again after a kill before the journal: exit %d\n%s\n%s", code, stdout, stderr)
			}
			continue
		}
		if m.State == shardmove.StateMoved {
			return m.ID
		}
		stdout, stderr, code = run(t, "--stack", stackPath, "shard", "status", fmt.Sprint(m.ID), "-o", "json")
		var d ShardMoveDetail
		if err := json.Unmarshal([]byte(stdout), &d); code != 0 || err != nil {
			t.Fatalf("status %d: exit %d %v\n%s\n%s", m.ID, code, err, stdout, stderr)
		}
		if time.Now().After(deadline) || ran > 3 {
			t.Fatalf("move %d is %s at %s after %d commands; next: %q", m.ID, m.State, m.Step, ran, d.Next)
		}
		if len(d.Next) == 0 {
			if m.State != shardmove.StateRunning || !m.Locked {
				t.Fatalf("move %d is %s at %s and status prints nothing to run next", m.ID, m.State, m.Step)
			}
			time.Sleep(100 * time.Millisecond) // the killed process's session is still ending
			continue
		}
		args := strings.Fields(d.Next[0])
		for i := range args {
			args[i] = strings.Trim(args[i], "'")
		}
		if args[0] != "instactl" {
			t.Fatalf("next command %q is not an instactl command", d.Next[0])
		}
		ran++
		stdout, stderr, code = run(t, args[1:]...)
		t.Logf("ran %q (move %s at %s): exit %d\n%s%s", d.Next[0], m.State, m.Step, code, stdout, stderr)
		if code != 0 {
			t.Fatalf("the next command status printed, %q, failed with exit %d:\n%s\n%s", d.Next[0], code, stdout, stderr)
		}
	}
}

// shardKillUsers counts the rows of each username in schema's users table, seed rows excluded.
func shardKillUsers(t *testing.T, c *pgx.Conn, schema string) map[string]int {
	t.Helper()
	rows, err := c.Query(context.Background(), fmt.Sprintf("SELECT username, count(*) FROM %s.users WHERE username NOT LIKE 'seed-%%' GROUP BY username", schema))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var name string
		var n int
		if err := rows.Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		out[name] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func shardKillCount(t *testing.T, c *pgx.Conn, sql string) int64 {
	t.Helper()
	var n int64
	if err := c.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// shardKillTail returns the last n lines of s.
func shardKillTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
