package appbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/internal/app"
	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/internal/loadgen"
)

// Sizes of the seeded data set and of uploads (a 612x612 JPEG of 2011 was about 60 KB).
const (
	shards      = 16
	seedUsers   = 200
	seedFollows = 30 // per user
	seedPhotos  = 400
	uploadBytes = 64 << 10
)

// BenchmarkApp starts the components once, seeds users, follows and photos (fan-out done), and
// runs the sub-benchmarks against that one server:
//
//	feed-cN      closed loop, N concurrent clients, GET /users/{random}/feed?limit=20
//	upload-cN    closed loop, N concurrent clients, POST /photos with 64 KiB of random bytes
//	s3put-cN    closed loop, the upload's S3 PUT alone, straight to moto (the floor under uploads)
//	mix         open loop: loadgen's default mix at APPBENCH_RATE req/s (default 100), one
//	            second of load per b.N; reports feed and upload percentiles from loadgen.Result
//
// Each closed-loop sub-benchmark reports req/s, p50 and p99 in milliseconds; any failed request
// fails the benchmark. Run: bench/app/run.sh, or
// go test -run '^$' -bench App -benchtime 2000x ./bench/app
func BenchmarkApp(b *testing.B) {
	comps := apptest.StartComponents(b, shards)
	srv := apptest.StartApp(b, comps.Config())
	c := &client{base: srv.URL, http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	users := seed(b, c, comps.RedisAddr)

	for _, n := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("feed-c%d", n), func(b *testing.B) {
			closedLoop(b, n, func(rng *rand.Rand) error {
				u := users[rng.IntN(len(users))]
				return c.do("GET", fmt.Sprintf("/users/%d/feed?limit=20", u), "", nil, http.StatusOK, nil)
			})
		})
	}
	for _, n := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("upload-c%d", n), func(b *testing.B) {
			closedLoop(b, n, func(rng *rand.Rand) error {
				return c.upload(users[rng.IntN(len(users))], randomBytes(rng, uploadBytes))
			})
		})
	}
	// The floor under uploads: the same PUT straight to moto, without the app.
	blobs, err := app.NewBlobs(context.Background(), comps.Bucket)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("s3put-c%d", n), func(b *testing.B) {
			var seq atomic.Int64
			closedLoop(b, n, func(rng *rand.Rand) error {
				key := fmt.Sprintf("bench/%d", seq.Add(1))
				return blobs.Put(context.Background(), key, "image/jpeg", randomBytes(rng, uploadBytes))
			})
		})
	}
	b.Run("mix", func(b *testing.B) {
		rate := 100.0
		if s := os.Getenv("APPBENCH_RATE"); s != "" {
			rate, _ = strconv.ParseFloat(s, 64)
		}
		res, err := loadgen.Run(context.Background(), loadgen.Config{BaseURL: srv.URL, Rate: rate,
			Duration: time.Duration(b.N) * time.Second, MaxInFlight: 256, PhotoBytes: uploadBytes})
		if err != nil {
			b.Fatal(err)
		}
		if res.Errors > 0 {
			b.Errorf("%d errors of %d requests: %v %v", res.Errors, res.Requests, res.ErrorKinds, res.FirstErrors)
		}
		b.ReportMetric(res.Throughput, "req/s")
		for _, k := range []string{"feed", "upload"} {
			ks := res.ByKind[k]
			b.ReportMetric(ks.P50Ms, k+"-p50-ms")
			b.ReportMetric(ks.P99Ms, k+"-p99-ms")
		}
		b.ReportMetric(res.Latency.P99Ms, "all-p99-ms")
	})
}

// closedLoop runs b.N operations on n goroutines, each sending its next request as soon as the
// previous one is answered, and reports throughput and latency percentiles.
func closedLoop(b *testing.B, n int, op func(*rand.Rand) error) {
	var next atomic.Int64
	lat := make([]time.Duration, b.N)
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for g := range n {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), uint64(b.N)))
			for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
				t0 := time.Now()
				if err := op(rng); err != nil {
					errOnce.Do(func() { firstErr = err })
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(ms(lat[(len(lat)-1)*50/100]), "p50-ms")
	b.ReportMetric(ms(lat[(len(lat)-1)*99/100]), "p99-ms")
	b.ReportMetric(0, "ns/op") // req/s says it better; ns/op would be per op across n clients
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// seed signs up users, makes each follow seedFollows others, uploads seedPhotos photos from
// random owners, and waits until the fan-out queue is empty, so that feeds are full.
func seed(b *testing.B, c *client, redisAddr string) []int64 {
	rng := rand.New(rand.NewPCG(7, 7))
	users := make([]int64, seedUsers)
	for i := range users {
		var u struct{ ID int64 }
		if err := c.do("POST", "/users", "application/json", fmt.Appendf(nil, `{"username":"bench%d"}`, i),
			http.StatusCreated, &u); err != nil {
			b.Fatal(err)
		}
		users[i] = u.ID
	}
	for _, u := range users {
		for _, j := range rng.Perm(len(users))[:seedFollows] {
			if users[j] == u {
				continue
			}
			if err := c.do("POST", fmt.Sprintf("/users/%d/follow/%d", u, users[j]), "", nil, http.StatusOK, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	for range seedPhotos {
		if err := c.upload(users[rng.IntN(len(users))], randomBytes(rng, 4096)); err != nil {
			b.Fatal(err)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if n, err := rdb.LLen(context.Background(), "q:fanout:pending").Result(); err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("fan-out queue did not drain in a minute")
		}
	}
	return users
}

func randomBytes(rng *rand.Rand, n int) []byte {
	img := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			img[i+j] = byte(v >> (8 * j))
		}
	}
	return img
}

type client struct {
	base string
	http *http.Client
}

func (c *client) upload(owner int64, img []byte) error {
	return c.do("POST", fmt.Sprintf("/photos?user_id=%d&caption=bench", owner), "image/jpeg", img, http.StatusCreated, nil)
}

// do sends one request and decodes the answer into out when the status is want.
func (c *client) do(method, path, contentType string, body []byte, want int, out any) error {
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: HTTP %d: %.200s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}
