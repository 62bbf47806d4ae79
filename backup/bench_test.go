package backup

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
)

// BenchmarkSandbox measures, on a sandbox of its own at 127.0.50.x (the tests' base: do not run
// it alongside them), the freeze window and the time of a full Postgres backup (lock, recovery,
// gate, checkpoint, guardian, freeze, one snapshot call for every data volume of the replica,
// thaw, manifest) and of a restore drill (restore, start, checks including pg_amcheck,
// teardown). Run:
//
//	go test -run '^$' -bench BenchmarkSandbox -benchtime 10x ./backup/
//
// The replica has its one data volume; the "2vol" runs attach a second 1 GiB volume (not
// mounted: the sandbox kernel has no md RAID) so the set holds two volumes and the copy of
// both falls inside the freeze.
func BenchmarkSandbox(b *testing.B) {
	requireSandbox(b)
	s := newSandboxEnv(b, b.TempDir()+"/sandbox")
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = s.p.Down(ctx)
	})
	s.bringUp(b)
	ctx := context.Background()
	s.sh(b, "pg-0", psqlOn("instagram", "CREATE TABLE bench AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g"))
	s.waitFor(b, "replica has the table", time.Minute, func() bool {
		out, _ := s.try("pg-1", psqlOn("instagram", "SELECT count(*) FROM bench"))
		return out == "200000"
	})
	var set string
	create := func(b *testing.B) {
		var freezes []float64
		for b.Loop() {
			res, err := Create(ctx, Options{Env: s.env, Target: TargetPostgres})
			if err != nil {
				b.Fatal(err)
			}
			set = res.Sets[0].SetID
			freezes = append(freezes, float64(res.Sets[0].FreezeDuration.Microseconds())/1000)
		}
		sort.Float64s(freezes)
		b.ReportMetric(freezes[len(freezes)/2], "freeze-median-ms")
		b.ReportMetric(freezes[len(freezes)-1], "freeze-max-ms")
	}
	b.Run("create-pg-1vol", create)
	b.Run("drill-pg", func(b *testing.B) {
		for b.Loop() {
			if _, err := Verify(ctx, VerifyOptions{Env: s.env, Set: set, ScratchHost: "scratch-0"}); err != nil {
				b.Fatal(err)
			}
		}
	})
	v, err := s.p.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: 1, Tags: map[string]string{cloud.TagStack: s.env.Stack.Name}})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.p.AttachVolume(ctx, v.ID, s.hosts["pg-1"].ID, "/dev/sdg"); err != nil {
		b.Fatal(err)
	}
	b.Run("create-pg-2vol", create)
}
