package app

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/shardmap"
)

// BenchmarkOwnerMapping stores photo -> owner mappings three ways and reports Redis memory per
// mapping (used_memory delta from INFO memory, and the sum of MEMORY USAGE over the keys):
// one string key per photo; hashes bucketed by id/1000 as Instagram did with dense ids; and
// OwnerIndex's hashes bucketed by the id's second. Ids are generated as next_id() would at 100
// uploads/s spread over 64 shards. Run: go test -run '^$' -bench OwnerMapping -benchtime 100000x
func BenchmarkOwnerMapping(b *testing.B) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(b)})
	defer rdb.Close()
	ctx := context.Background()
	strategies := []struct {
		name string
		slot func(id int64) (key, field string)
	}{
		{"string-per-photo", func(id int64) (string, string) { return "photo_owner:" + strconv.FormatInt(id, 10), "" }},
		{"hash-id-div-1000", func(id int64) (string, string) {
			return "p2o1k:" + strconv.FormatInt(id/1000, 10), strconv.FormatInt(id%1000, 10)
		}},
		{"hash-per-second", ownerSlot},
	}
	for _, s := range strategies {
		b.Run(s.name, func(b *testing.B) {
			rdb.FlushAll(ctx)
			before := usedMemory(b, rdb)
			rng := rand.New(rand.NewPCG(1, 2))
			t0 := time.Now()
			keys := map[string]bool{}
			pipe := rdb.Pipeline()
			i := 0
			for b.Loop() {
				ts := t0.Add(time.Duration(i) * 10 * time.Millisecond)
				id := shardmap.MakeID(ts, rng.IntN(64), int64(i))
				owner := shardmap.MakeID(ts.Add(-time.Hour), rng.IntN(64), int64(i))
				k, f := s.slot(id)
				keys[k] = true
				if f == "" {
					pipe.Set(ctx, k, owner, 0)
				} else {
					pipe.HSet(ctx, k, f, owner)
				}
				if i++; i%1000 == 0 {
					if _, err := pipe.Exec(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			if _, err := pipe.Exec(ctx); err != nil && i%1000 != 0 {
				b.Fatal(err)
			}
			b.StopTimer()
			var usage int64
			for k := range keys {
				usage += rdb.MemoryUsage(ctx, k).Val()
			}
			b.ReportMetric(float64(usedMemory(b, rdb)-before)/float64(i), "bytes/mapping")
			b.ReportMetric(float64(usage)/float64(i), "memusage-bytes/mapping")
			b.ReportMetric(float64(i)/float64(len(keys)), "mappings/key")
		})
	}
}

func usedMemory(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no used_memory in INFO memory")
	return 0
}
