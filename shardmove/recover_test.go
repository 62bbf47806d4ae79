package shardmove

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// shardWriter inserts users into one shard of a node, one at a time, and records the
// usernames each acknowledged insert wrote.
type shardWriter struct {
	shard int
	mu    sync.Mutex
	acked []string
	stop  atomic.Bool
	done  chan error
}

func startShardWriter(t *testing.T, dsn string, shard int) *shardWriter {
	t.Helper()
	w := &shardWriter{shard: shard, done: make(chan error, 1)}
	conn := connect(t, dsn)
	go func() {
		ctx := context.Background()
		for i := 0; !w.stop.Load(); i++ {
			name := fmt.Sprintf("w%d-%d", shard, i)
			// Prepared (pgx caches the statement): the swap must not break a cached plan.
			if _, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s.users (username) VALUES ($1)", shardmap.SchemaName(shard)), name); err != nil {
				w.done <- fmt.Errorf("shard %d insert %s: %w", shard, name, err)
				return
			}
			w.mu.Lock()
			w.acked = append(w.acked, name)
			w.mu.Unlock()
			time.Sleep(time.Millisecond)
		}
		w.done <- nil
	}()
	return w
}

func (w *shardWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *shardWriter) finish(t *testing.T) []string {
	t.Helper()
	w.stop.Store(true)
	if err := <-w.done; err != nil {
		t.Errorf("writer: %v", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

func usernames(t *testing.T, conn *pgx.Conn, schema string) map[string]bool {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT username FROM "+schema+".users")
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}

// TestRecoverShard replaces one shard of a live node with the same schema of another server
// (standing in for a point-in-time restore) while writers write to every shard of the node;
// a recovery stopped after its copy is finished by Resume, another is undone by Abort.
func TestRecoverShard(t *testing.T) {
	e := newPGEnv(t)
	ctx := context.Background()
	if _, err := e.mover.Init(ctx, InitSpec{LogicalShards: 4, Nodes: e.nodes[:1]}); err != nil {
		t.Fatal(err)
	}
	live := e.node(t, "a")
	// The "restored copy": shard 1 as it was at the target, on b.
	copyConn := e.node(t, "b")
	mustExec(t, copyConn, shardmap.ShardSchemaSQL(1), pgx.QueryExecModeSimpleProtocol)
	seed(t, copyConn, 1, 200)
	mustExec(t, copyConn, "INSERT INTO shard_0001.users (username) VALUES ('at-target')")
	wantRows := queryInt(t, copyConn, "SELECT count(*) FROM shard_0001.users")
	// The mistake on the live node: shard 1 lost its photos, and has rows written after the target.
	seed(t, live, 1, 50)
	mustExec(t, live, "DELETE FROM shard_0001.photos")

	writers := map[int]*shardWriter{}
	for s := range 4 {
		writers[s] = startShardWriter(t, e.nodes[0].DSN, s)
	}
	defer func() {
		for _, w := range writers {
			if !w.stop.Load() {
				w.finish(t)
			}
		}
	}()
	waitUntil(t, "writes under way", func() bool { return writers[0].count() > 50 && writers[1].count() > 50 })

	plan := RecoverPlan{Shard: 1, Node: "a", Source: "b", SourceDSN: e.nodes[1].DSN, Target: "test"}
	// Stopped right after the copy, as by Ctrl-C: the journal says verify is next.
	sctx, stop := context.WithCancel(ctx)
	opt := testOptions()
	opt.Hook = func(step string) {
		if step == StepRecoverCopy {
			stop()
		}
	}
	_, err := e.mover.Recover(sctx, plan, opt)
	var stuck *StuckError
	if !errors.As(err, &stuck) || stuck.Step != StepRecoverVerify {
		t.Fatalf("recover stopped after the copy: %v, want stuck before %s", err, StepRecoverVerify)
	}
	if _, err := e.mover.Recover(ctx, plan, testOptions()); !errors.Is(err, ErrRefused) {
		t.Fatalf("a second recovery of shard 1 while one is open: %v, want refused", err)
	}
	// Resume goes through the move journal's command and finds the recovery by its kind.
	during := map[int]int{}
	for s, w := range writers {
		during[s] = w.count()
	}
	st, err := e.mover.Resume(ctx, stuck.MoveID, testOptions())
	for s, w := range writers {
		during[s] = w.count() - during[s]
	}
	if err != nil || st.State != StateCompleted || st.Kind != KindRecover || st.Window <= 0 {
		t.Fatalf("resume recovery %d: %+v %v", stuck.MoveID, st, err)
	}
	n1 := writers[1].count()
	waitUntil(t, "writes to shard 1 after the swap", func() bool { return writers[1].count() > n1+50 })
	acked := map[int][]string{}
	for s, w := range writers {
		acked[s] = w.finish(t)
	}

	// Shard 1 is the copy plus what was written after the swap; the old schema is aside, whole.
	got := usernames(t, live, "shard_0001")
	aside := AsideSchema(1, stuck.MoveID)
	old := usernames(t, live, aside)
	if !got["at-target"] || queryInt(t, live, "SELECT count(*) FROM shard_0001.photos") != 800 {
		t.Fatalf("shard 1 after the recovery lacks the copy's rows")
	}
	beforeSwap, after := 0, 0
	for _, n := range acked[1] {
		switch {
		case got[n]:
			after++
		case old[n]:
			beforeSwap++
		default:
			t.Errorf("write %s to shard 1 acknowledged but in neither the recovered nor the old schema", n)
		}
	}
	if after < 50 || int64(len(got)) != wantRows+int64(after) {
		t.Fatalf("shard 1 has %d users: want the copy's %d plus the %d written after the swap", len(got), wantRows, after)
	}
	t.Logf("writes acknowledged while the recovery ran its verify and swap: %v", during)
	t.Logf("shard 1: %d writes went to the old schema before the swap (kept in %s), %d to the recovered one", beforeSwap, aside, after)
	for _, s := range []int{0, 2, 3} {
		have := usernames(t, live, shardmap.SchemaName(s))
		for _, n := range acked[s] {
			if !have[n] {
				t.Fatalf("shard %d lost acknowledged write %s", s, n)
			}
		}
		if during[s] == 0 {
			t.Fatalf("shard %d took no write while the recovery was resumed and swapped shard 1", s)
		}
	}
	// The recovered shard hands out ids past both schemas' and keeps its fence off; the old one is fenced.
	mustExec(t, live, "INSERT INTO shard_0001.comments (photo_id, user_id, body) VALUES (1, 1, 'after')")
	if _, err := live.Exec(ctx, "INSERT INTO "+aside+".users (username) VALUES ('x')"); !shardmap.IsFenced(err) {
		t.Fatalf("a write into the old schema: %v, want the fence", err)
	}
	rr, err := e.mover.recoverResult(ctx, connect(t, e.ctlDSN), stuck.MoveID, RecoverResult{})
	if err != nil || rr.Swap.WindowMS <= 0 || rr.Rows != wantRows+800+600+400+200 || rr.DropAside != "DROP SCHEMA "+aside+" CASCADE" {
		t.Fatalf("recovery result %+v %v", rr, err)
	}
	t.Logf("recovered %d rows; swap blocked shard 1 for %.1f ms", rr.Rows, rr.Swap.WindowMS)
	if _, err := e.mover.Abort(ctx, stuck.MoveID); err == nil {
		t.Fatal("abort of a finished recovery succeeded")
	}

	// Abort before the swap: the temporary schema goes, the shard is untouched.
	mustExec(t, copyConn, shardmap.ShardSchemaSQL(2), pgx.QueryExecModeSimpleProtocol)
	before := queryInt(t, live, "SELECT count(*) FROM shard_0002.users")
	actx, astop := context.WithCancel(ctx)
	aopt := testOptions()
	aopt.Hook = func(step string) {
		if step == StepRecoverSchema {
			astop()
		}
	}
	_, err = e.mover.Recover(actx, RecoverPlan{Shard: 2, Node: "a", Source: "b", SourceDSN: e.nodes[1].DSN}, aopt)
	if !errors.As(err, &stuck) {
		t.Fatalf("recover of shard 2 stopped after the schema: %v", err)
	}
	if queryInt(t, live, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", TempSchema(2, stuck.MoveID)) != 1 {
		t.Fatal("no temporary schema after the schema step")
	}
	st, err = e.mover.Abort(ctx, stuck.MoveID)
	if err != nil || st.State != StateAborted {
		t.Fatalf("abort recovery: %+v %v", st, err)
	}
	if queryInt(t, live, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", TempSchema(2, stuck.MoveID)) != 0 ||
		queryInt(t, live, "SELECT count(*) FROM shard_0002.users") != before {
		t.Fatal("abort left the temporary schema or changed shard 2")
	}
	// A crash right after the swap committed, before the journal recorded it: resume finds the
	// swap done and finishes without the restored copy.
	mustExec(t, copyConn, shardmap.ShardSchemaSQL(3), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, copyConn, "INSERT INTO shard_0003.users (username) VALUES ('s3-at-target')")
	id := recoverCrashAt(t, e, RecoverPlan{Shard: 3, Node: "a", Source: "b", SourceDSN: e.nodes[1].DSN}, StepRecoverSwap+".committed")
	mustExec(t, connect(t, e.ctlDSN), "UPDATE shard_moves SET plan = jsonb_set(plan, '{recover,source_dsn}', '\"postgres://nobody@127.0.0.1:1/gone\"') WHERE id = $1", id)
	st, err = e.mover.Resume(ctx, id, testOptions())
	if err != nil || st.State != StateCompleted {
		t.Fatalf("resume after a crash past the swap: %+v %v", st, err)
	}
	if got := usernames(t, live, "shard_0003"); len(got) != 1 || !got["s3-at-target"] {
		t.Fatalf("shard 3 after the recovery: %v", got)
	}
	rr, err = e.mover.recoverResult(ctx, connect(t, e.ctlDSN), id, RecoverResult{})
	if err != nil || !rr.Swap.Resumed {
		t.Fatalf("recovery %d after the crash: %+v %v, want the swap found done", id, rr.Swap, err)
	}

	// A shard the node does not own is refused before anything is recorded.
	if _, err := e.mover.Recover(ctx, RecoverPlan{Shard: 2, Node: "b", Source: "b", SourceDSN: e.nodes[1].DSN}, testOptions()); !errors.Is(err, ErrRefused) {
		t.Fatalf("recover onto a node that does not own the shard: %v, want refused", err)
	}
}

// recoverCrashAt runs a recovery that dies (panics out of Recover, as a killed process stops) at
// hook point, and returns its id.
func recoverCrashAt(t *testing.T, e *pgEnv, plan RecoverPlan, point string) (id int64) {
	t.Helper()
	type crash struct{}
	opt := testOptions()
	opt.Hook = func(p string) {
		if p == point {
			panic(crash{})
		}
	}
	func() {
		defer func() {
			if v := recover(); v != nil {
				if _, ok := v.(crash); !ok {
					panic(v)
				}
			}
		}()
		_, err := e.mover.Recover(context.Background(), plan, opt)
		t.Fatalf("recovery did not stop at %s: %v", point, err)
	}()
	if err := connect(t, e.ctlDSN).QueryRow(context.Background(), "SELECT max(id) FROM shard_moves WHERE kind = 'recover' AND shard = $1",
		plan.Shard).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
