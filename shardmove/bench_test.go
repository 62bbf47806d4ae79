package shardmove

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkMove moves one seeded shard back and forth between two real PostgreSQL 15 nodes
// (no write load) and reports the phases. SHARDMOVE_BENCH_N sets the seed size (about 10*N
// rows; default 20000, i.e. ~200k rows). Compare with shared/peers/shardmove (logical_sync,
// window) by seeding a comparable size:
//
//	SHARDMOVE_BENCH_N=500000 go test ./shardmove -run '^$' -bench BenchmarkMove -benchtime 2x
func BenchmarkMove(b *testing.B) {
	n := 20000
	if v, err := strconv.Atoi(os.Getenv("SHARDMOVE_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	e := newPGEnv(b)
	ctx := context.Background()
	if _, err := e.mover.Init(ctx, InitSpec{LogicalShards: 2, Nodes: e.nodes}); err != nil {
		b.Fatal(err)
	}
	seed(b, e.node(b, "a"), 0, n)
	opt := Options{ChunkRows: 20000}
	var copySec, verifySec, windowMS float64
	var bytes int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		to := "b"
		if loadMap(b, e).Shards[0].Node == "b" {
			to = "a"
		}
		plan, err := e.mover.PlanMove(ctx, 0, to)
		if err != nil {
			b.Fatal(err)
		}
		bytes = plan.Bytes
		st, err := e.mover.Move(ctx, plan, opt)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		steps, err := e.mover.Steps(ctx, st.ID)
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range steps {
			switch s.Step {
			case StepWaitSync:
				var d syncDetails
				_ = json.Unmarshal(s.Details, &d)
				copySec += d.Seconds
			case StepCutover:
				b.Logf("cutover: %s", s.Details)
			case StepVerify:
				b.Logf("verify: %s", s.Details)
				var d VerifyReport
				_ = json.Unmarshal(s.Details, &d)
				verifySec += d.Seconds
			}
		}
		windowMS += float64(st.Window.Microseconds()) / 1000
		if _, err := e.mover.Complete(ctx, st.ID, CompleteOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(copySec/float64(b.N), "copy-s/op")
	b.ReportMetric(verifySec/float64(b.N), "verify-s/op")
	b.ReportMetric(windowMS/float64(b.N), "window-ms/op")
	b.ReportMetric(float64(bytes)/(1<<20), "shard-MiB")
}

// BenchmarkInit4096 creates 4,096 logical shards (a schema each, with its tables, next_id, sequence
// and fence) over two real PostgreSQL 15 nodes, the "well under a minute", and reports
// the time per full init and the time of an idempotent re-run.
//
//	go test ./shardmove -run '^$' -bench BenchmarkInit4096 -benchtime 1x
func BenchmarkInit4096(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newPGEnv(b)
		ctx := context.Background()
		b.StartTimer()
		start := time.Now()
		res, err := e.mover.Init(ctx, InitSpec{LogicalShards: 4096, Nodes: e.nodes})
		if err != nil {
			b.Fatal(err)
		}
		first := time.Since(start)
		start = time.Now()
		again, err := e.mover.Init(ctx, InitSpec{LogicalShards: 4096, Nodes: e.nodes})
		if err != nil {
			b.Fatal(err)
		}
		rerun := time.Since(start)
		if res.Created != 4096 || again.Created != 0 || again.Existing != 4096 {
			b.Fatalf("init created %d, re-run created %d existing %d", res.Created, again.Created, again.Existing)
		}
		b.ReportMetric(first.Seconds(), "init-s")
		b.ReportMetric(rerun.Seconds(), "rerun-s")
	}
}
