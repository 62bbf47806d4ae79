package backup

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/walarchive"
)

// BenchmarkSandboxPITR measures point-in-time recovery on a sandbox of its own at 127.0.157.x
// (moto on 15157: do not run it beside TestSandboxPITR):
//
//   - replay: a set, then INSTACTL_PITR_BENCH_MB (default 1024) MB of WAL written on the
//     primary (insert, truncate, again), then a restore to a time after the load with
//     restore_command prefetching 8 segments, and the same restore fetching one segment per
//     call (--prefetch 1): replay GB/min is the WAL between the set's checkpoint and the point
//     reached over the time from start to promotion.
//
//   - rpo: a writer on the primary with archive_timeout 60 s (the default); both members are
//     killed at once; the acknowledged writes whose LSN lies past the end of the newest
//     archived segment are the loss, and the time from the first of them to the kill the RPO.
//
//     go test -run '^$' -bench BenchmarkSandboxPITR -benchtime 1x -timeout 30m ./backup/
func BenchmarkSandboxPITR(b *testing.B) {
	requireSandbox(b)
	mb := 1024
	if v := os.Getenv("INSTACTL_PITR_BENCH_MB"); v != "" {
		mb, _ = strconv.Atoi(v)
	}
	dir := b.TempDir()
	s := newPITREnv(b, dir+"/sandbox", 6144)
	s.env.Stack.Backup.ArchiveTimeout = time.Minute
	startPITRMoto(b)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = s.p.Down(ctx)
	})
	archiver := buildInstactl(b)
	s.bringUpPITR(b, archiver)
	ctx := context.Background()
	if _, err := Create(ctx, Options{Env: s.env, Target: TargetPostgres}); err != nil {
		b.Fatal(err)
	}
	// About 70 MB of WAL per round.
	s.sh(b, "pg-0", psqlOn("instagram", "CREATE TABLE load (id int, pad text)"))
	t0 := time.Now()
	for done := 0; done < mb; done += 70 {
		s.sh(b, "pg-0", psqlOn("instagram", "INSERT INTO load SELECT g, md5(g::text) || repeat('x', 200) FROM generate_series(1, 200000) g")+" && "+
			psqlOn("instagram", "TRUNCATE load"))
	}
	b.Logf("wrote about %d MB of WAL in %s; load average %s", mb, time.Since(t0).Round(time.Millisecond), loadAverage(b))
	target := time.Now()
	for _, prefetch := range []int{walarchive.DefaultPrefetch, 1} {
		b.Run("replay-prefetch-"+strconv.Itoa(prefetch), func(b *testing.B) {
			for b.Loop() {
				r, err := RestoreToTime(ctx, PITROptions{Env: s.env, Node: "pg-0", To: "scratch-0", Time: target, Archiver: archiver, Prefetch: prefetch})
				if err != nil {
					b.Fatal(err)
				}
				gb := float64(r.ReplayedBytes) / (1 << 30)
				b.ReportMetric(gb/r.Replay.Minutes(), "GB/min")
				b.ReportMetric(float64(r.ReplayedBytes)/(1<<20), "MB-replayed")
				b.ReportMetric(r.Replay.Seconds(), "replay-s")
				b.ReportMetric(r.Duration.Seconds(), "rto-s")
				b.Logf("replay %s of %d MB with prefetch %d; load average after it %s", r.Replay.Round(time.Millisecond), r.ReplayedBytes>>20, prefetch, loadAverage(b))
				if err := Teardown(ctx, s.env, &r.Restored); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("rpo", func(b *testing.B) {
		for b.Loop() {
			w := startPGWriter(b, pitrHosts[0].addr)
			// Long enough for archive_timeout to switch segments a few times.
			time.Sleep(150 * time.Second)
			killed := time.Now()
			for _, h := range []string{"pg-0", "pg-1"} {
				s.sh(b, h, "kill -9 $(head -1 /var/lib/postgresql/15/main/postmaster.pid)")
			}
			w.stop.Store(true)
			<-w.done
			// Nothing acknowledged after the kill: what is not archived now is lost.
			arch, err := templates.WALArchiveFor(s.env.Stack, "pg-0").Config().Open(ctx, s.sysID(b))
			if err != nil {
				b.Fatal(err)
			}
			files, err := arch.List(ctx)
			if err != nil {
				b.Fatal(err)
			}
			var end uint64
			for _, f := range files {
				if f.Kind == walarchive.KindSegment && (f.SegNo+1)*walarchive.SegmentSize > end {
					end = (f.SegNo + 1) * walarchive.SegmentSize
				}
			}
			w.mu.Lock()
			lost, firstLost := 0, time.Time{}
			for i, pos := range w.pos {
				if pos > end {
					if lost == 0 {
						firstLost = w.at[i]
					}
					lost++
				}
			}
			total := len(w.ids)
			w.mu.Unlock()
			rpo := time.Duration(0)
			if lost > 0 {
				rpo = killed.Sub(firstLost)
			}
			b.Logf("killed both members after %d acknowledged writes; %d not in the archive (end %s); RPO %s; load average %s", total, lost, walarchive.LSN(end), rpo.Round(time.Millisecond), loadAverage(b))
			b.ReportMetric(float64(lost), "writes-lost")
			b.ReportMetric(rpo.Seconds(), "rpo-s")
		}
	})
}

// loadAverage is the machine's 1, 5 and 15 minute load average, printed beside every figure
// so a reader can tell a quiet run from a loaded one.
func loadAverage(b *testing.B) string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		b.Fatalf("read the load average: %v", err)
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		b.Fatalf("/proc/loadavg: unexpected %q", raw)
	}
	return strings.Join(f[:3], " ")
}

// sysID reads pg-1's system identifier from its control file (the members share it).
func (s *sandboxEnv) sysID(b testing.TB) string {
	out := s.sh(b, "pg-1", "/usr/lib/postgresql/15/bin/pg_controldata /var/lib/postgresql/15/main | sed -n 's/^Database system identifier: *//p'")
	return out
}
