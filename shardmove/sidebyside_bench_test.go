package shardmove

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// BenchmarkSideBySide measures, in one run on the same seeded shard: the stock baselines of
// SHARDMOVE_BENCH_BASELINE (bench/shardmove/baseline.sh: pg_dump | psql, binary COPY with
// indexes after), then an instactl move with CopySnapshot while clients write
// SHARDMOVE_BENCH_RATE writes/s (default 500) to the moving shard, then the move back with
// CopyLogical (the built-in initial sync) without load. SHARDMOVE_BENCH_N scales the shard
// (about 11*N rows; N=500000 is the peers' 5.6 M rows). Run it with bench/shardmove/run.sh.
func BenchmarkSideBySide(b *testing.B) {
	n := envInt("SHARDMOVE_BENCH_N", 50000)
	rate := envInt("SHARDMOVE_BENCH_RATE", 500)
	e := newPGEnv(b)
	ctx := context.Background()
	if _, err := e.mover.Init(ctx, InitSpec{LogicalShards: 2, Nodes: e.nodes}); err != nil {
		b.Fatal(err)
	}
	a := e.node(b, "a")
	ts := time.Now()
	seed(b, a, 0, n)
	mustExec(b, a, "VACUUM ANALYZE")
	mustExec(b, a, "CHECKPOINT")
	s := shardmap.SchemaName(0)
	b.Logf("seeded %d rows (%s) in %s", queryInt(b, a, `SELECT (SELECT count(*) FROM `+s+`.users) + (SELECT count(*) FROM `+s+`.photos)
		+ (SELECT count(*) FROM `+s+`.likes) + (SELECT count(*) FROM `+s+`.comments) + (SELECT count(*) FROM `+s+`.follows)`),
		humanBytes(queryInt(b, a, `SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`, s)), time.Since(ts).Round(time.Second))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if script := os.Getenv("SHARDMOVE_BENCH_BASELINE"); script != "" {
			mustExec(b, connect(b, e.b.URL("postgres")), "DROP DATABASE IF EXISTS baseline")
			mustExec(b, connect(b, e.b.URL("postgres")), "CREATE DATABASE baseline")
			out, err := exec.Command(script, e.nodes[0].DSN, e.b.URL("baseline"), s).CombinedOutput()
			if err != nil {
				b.Fatalf("%s: %v\n%s", script, err, out)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line)
				if sec, err := strconv.ParseFloat(f[1], 64); err == nil && len(f) >= 2 {
					b.ReportMetric(sec, f[0]+"-s")
				}
				b.Logf("baseline %s", line)
			}
		}
		sbsMove(b, e, CopySnapshot, "b", rate)
		sbsMove(b, e, CopyLogical, "a", 0)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

// sbsMove moves shard 0 to node to with copy method cm under rate writes/s and reports its
// phases, the client-side write stalls and the verification rate.
func sbsMove(b *testing.B, e *pgEnv, cm, to string, rate int) {
	ctx := context.Background()
	s := shardmap.SchemaName(0)
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		mu       sync.Mutex
		lat      []time.Duration
		failed   atomic.Int64
		retried  atomic.Int64
		dsns     = map[string]string{"a": e.nodes[0].DSN, "b": e.nodes[1].DSN}
		nWriters = 4
	)
	for w := 0; w < nWriters && rate > 0; w++ {
		c := &client{shard: 0, ctl: connect(b, e.ctlDSN), conns: map[string]*pgx.Conn{}, dsns: dsns, mp: loadMap(b, e)}
		every := time.Duration(nWriters) * time.Second / time.Duration(rate)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				t0 := time.Now()
				_, r, err := c.do(ctx, func(cn *pgx.Conn) error {
					if rng.IntN(2) == 0 {
						_, err := cn.Exec(ctx, "INSERT INTO "+s+".photos (user_id, s3_key, size, sha256) VALUES (7, 'load', 1, 'h')")
						return err
					}
					_, err := cn.Exec(ctx, "UPDATE "+s+".photos SET like_count = like_count + 1 WHERE id = (SELECT min(id) FROM "+s+".photos)")
					return err
				})
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
				if r {
					retried.Add(1)
				}
				if err != nil {
					failed.Add(1)
				}
			}
		})
	}
	plan, err := e.mover.PlanMove(ctx, 0, to)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	st, err := e.mover.Move(ctx, plan, Options{Copy: cm})
	total := time.Since(t0)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err != nil {
		b.Fatal(err)
	}
	steps, err := e.mover.Steps(ctx, st.ID)
	if err != nil {
		b.Fatal(err)
	}
	var copySec, verifySec float64
	for _, r := range steps {
		if r.FinishedAt == nil {
			continue
		}
		d := r.FinishedAt.Sub(r.StartedAt).Seconds()
		switch r.Step {
		case StepCopyData, StepIndexes, StepSubscription, StepWaitSync:
			copySec += d
		case StepVerify:
			var v VerifyReport
			_ = json.Unmarshal(r.Details, &v)
			verifySec = v.Seconds
		}
		b.Logf("%s move %d %-22s %7.3fs %s", cm, st.ID, r.Step, d, r.Details)
	}
	b.ReportMetric(copySec, cm+"-copy-s")
	b.ReportMetric(float64(plan.Bytes)/(1<<30)/(verifySec/60), cm+"-verify-GB/min")
	b.ReportMetric(ms(st.Window), cm+"-window-ms")
	if len(lat) > 0 {
		slices.Sort(lat)
		p99 := lat[len(lat)*99/100]
		b.ReportMetric(ms(lat[len(lat)-1]), cm+"-max-stall-ms")
		b.ReportMetric(ms(p99), cm+"-p99-write-ms")
		b.Logf("%s: %d writes in %s (%.0f/s), %d retried, %d failed; write latency p50 %s p99 %s max %s",
			cm, len(lat), total.Round(time.Millisecond), float64(len(lat))/total.Seconds(), retried.Load(), failed.Load(),
			lat[len(lat)/2], p99, lat[len(lat)-1])
		if failed.Load() > 0 {
			b.Errorf("%d writes failed", failed.Load())
		}
	}
	b.Logf("%s move of %s: %s in all, copy phase %.2fs, verify %.2fs, window %s", cm, humanBytes(plan.Bytes),
		total.Round(time.Millisecond), copySec, verifySec, st.Window)
	if _, err := e.mover.Complete(ctx, st.ID, CompleteOptions{}); err != nil {
		b.Fatal(err)
	}
}
