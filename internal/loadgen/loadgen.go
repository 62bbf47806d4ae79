package loadgen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/instactl/instactl/errtext"
)

// Mix weighs the operations; zero weights are never chosen. An operation that needs users or
// photos that do not exist yet becomes a sign-up or an upload.
type Mix struct {
	SignUp  int `json:"signup"`
	Follow  int `json:"follow"`
	Upload  int `json:"upload"`
	Like    int `json:"like"`
	Comment int `json:"comment"`
	Feed    int `json:"feed"`
}

// DefaultMix is read-heavy, like the real thing.
var DefaultMix = Mix{SignUp: 5, Follow: 15, Upload: 10, Like: 20, Comment: 5, Feed: 45}

// Config describes one run.
type Config struct {
	// BaseURL of the app (or its load balancer), e.g. http://127.0.0.1:8080.
	BaseURL string
	// Rate is the target requests per second, sent open-loop: a slow server does not slow
	// the schedule down.
	Rate float64
	// Duration of the run.
	Duration time.Duration
	Mix      Mix
	// Timeout per request.
	Timeout time.Duration
	// MaxInFlight bounds concurrent requests; a request due while the bound is reached is
	// dropped (shed, never sent) and counted in Result.Dropped, apart from the errors: it says
	// the server (or this machine) could not keep up with Rate, not that a request failed.
	MaxInFlight int
	// WaitForSlot makes a request due while MaxInFlight requests are out wait for one to finish
	// instead of being dropped: the generator turns closed-loop while the server cannot keep up,
	// and every scheduled request is sent. Tests that check correctness use it, so a loaded
	// machine slows them down rather than shedding the writes they verify.
	WaitForSlot bool
	// PhotoBytes is the size of each uploaded photo.
	PhotoBytes int
	// RecordFile receives one JSON line per acknowledged write; empty: no record.
	RecordFile string
	// Seed makes the operation sequence repeatable.
	Seed uint64
	// Client is the HTTP client; nil means a default one.
	Client *http.Client
}

func (c *Config) defaults() error {
	if c.BaseURL == "" {
		return errors.New("loadgen: base URL is required")
	}
	if c.Rate <= 0 || c.Duration <= 0 {
		return fmt.Errorf("loadgen: rate (%v) and duration (%v) must be positive", c.Rate, c.Duration)
	}
	if c.Mix == (Mix{}) {
		c.Mix = DefaultMix
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 256
	}
	if c.PhotoBytes <= 0 {
		c.PhotoBytes = 4096
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.MaxInFlight}}
	}
	return nil
}

// Record is one acknowledged write, as stored in the record file.
type Record struct {
	// Kind is user, follow, photo, like or comment.
	Kind string `json:"kind"`
	// ID is the user, photo or comment id; for follow the follower, for like the photo.
	ID int64 `json:"id"`
	// Ref is the related id: followee, photo owner, liking user, commented photo.
	Ref int64 `json:"ref,omitempty"`
	// SHA256 is the hex digest of the payload: username, photo bytes, comment body, or
	// "follower->followee" / "user likes photo".
	SHA256 string    `json:"sha256"`
	At     time.Time `json:"at"`
}

// Bucket is one second of the run, by scheduled send time. Requests and Errors count the
// requests sent; Dropped those shed by the in-flight bound.
type Bucket struct {
	Second   int     `json:"second"`
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	Dropped  int     `json:"dropped,omitempty"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
}

// Latency summarises the latencies of the requests that were sent (failed ones included,
// dropped ones excluded), in milliseconds.
type Latency struct {
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// KindStats counts one operation kind.
type KindStats struct {
	Requests int `json:"requests"`
	Errors   int `json:"errors"`
	Latency
}

// Result summarises a run.
type Result struct {
	// Requests counts every scheduled request: those sent and those dropped.
	Requests int `json:"requests"`
	// Errors counts requests sent that failed (an error status, a timeout, a broken
	// connection). Dropped requests are not errors.
	Errors int `json:"errors"`
	// Dropped counts requests never sent because MaxInFlight requests were out: load shed by
	// the generator, the sign of a server (or machine) slower than Rate.
	Dropped int `json:"dropped"`
	Writes  int `json:"acknowledged_writes"`
	// Elapsed runs from the first send to the last answer.
	Elapsed time.Duration `json:"elapsed"`
	// Throughput is requests answered (dropped ones excluded) per second of Elapsed.
	Throughput float64 `json:"throughput_rps"`
	// Latency covers every answered request; ByKind splits it by operation.
	Latency Latency              `json:"latency"`
	ByKind  map[string]KindStats `json:"by_kind"`
	// ErrorKinds counts errors by cause: "http 503", "timeout", "connection", "other".
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	Buckets    []Bucket       `json:"buckets"`
	// FirstErrors holds up to ten distinct error messages.
	FirstErrors []string `json:"first_errors,omitempty"`
}

type runner struct {
	cfg   Config
	runID int64

	mu        sync.Mutex
	rng       *rand.Rand
	users     []int64
	photos    []int64
	nextName  int
	latencies [][]time.Duration // by second
	byOp      map[string][]time.Duration
	errs      []int // by second
	drops     []int // by second
	res       Result

	recMu sync.Mutex
	rec   *json.Encoder
}

// Run sends the configured load until Duration has passed (or ctx ends), waits for in-flight
// requests (each bounded by Timeout), and returns the summary. Only failing to create the
// record file or a bad config is an error: request failures are counted.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	r := &runner{cfg: cfg, runID: time.Now().UnixNano(), rng: rand.New(rand.NewPCG(cfg.Seed, 0x1c)),
		byOp: map[string][]time.Duration{}, res: Result{ByKind: map[string]KindStats{}, ErrorKinds: map[string]int{}}}
	seconds := int(cfg.Duration/time.Second) + 1
	r.latencies, r.errs, r.drops = make([][]time.Duration, seconds), make([]int, seconds), make([]int, seconds)
	if cfg.RecordFile != "" {
		f, err := os.OpenFile(cfg.RecordFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return Result{}, fmt.Errorf("loadgen: open record file: %w", err)
		}
		defer f.Close()
		r.rec = json.NewEncoder(f)
	}
	sem := make(chan struct{}, cfg.MaxInFlight)
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	start := time.Now()
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if due.Sub(start) >= cfg.Duration {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(due)):
		}
		if ctx.Err() != nil {
			break
		}
		sec := int(due.Sub(start) / time.Second)
		if cfg.WaitForSlot {
			sem <- struct{}{}
		} else {
			select {
			case sem <- struct{}{}:
			default:
				r.dropped(sec)
				continue
			}
		}
		op := r.pick()
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Timeout)
			defer cancel()
			t0 := time.Now()
			err := r.do(rctx, op)
			r.done(sec, op, time.Since(t0), err)
		})
	}
	wg.Wait()
	r.res.Elapsed = time.Since(start)
	r.summarise()
	return r.res, nil
}

func (r *runner) pick() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.cfg.Mix
	ops := []struct {
		name string
		w    int
	}{{"signup", m.SignUp}, {"follow", m.Follow}, {"upload", m.Upload}, {"like", m.Like}, {"comment", m.Comment}, {"feed", m.Feed}}
	total := 0
	for _, o := range ops {
		total += o.w
	}
	n := r.rng.IntN(total)
	op := ops[len(ops)-1].name
	for _, o := range ops {
		if n < o.w {
			op = o.name
			break
		}
		n -= o.w
	}
	switch {
	case len(r.users) < 2 && op != "signup":
		return "signup"
	case (op == "like" || op == "comment") && len(r.photos) == 0:
		return "upload"
	}
	return op
}

// dropped counts a request shed by the in-flight bound.
func (r *runner) dropped(sec int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Requests++
	r.res.Dropped++
	r.drops[min(sec, len(r.drops)-1)]++
	if testHookDropped != nil {
		testHookDropped()
	}
}

// testHookDropped, when set by a test, runs on every drop (under the runner's lock).
var testHookDropped func()

func (r *runner) done(sec int, op string, lat time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ks := r.res.ByKind[op]
	ks.Requests++
	r.res.Requests++
	sec = min(sec, len(r.errs)-1)
	if err != nil {
		ks.Errors++
		r.res.Errors++
		r.errs[sec]++
		r.res.ErrorKinds[errorKind(err)]++
		if msg := err.Error(); len(r.res.FirstErrors) < 10 && !slices.Contains(r.res.FirstErrors, msg) {
			r.res.FirstErrors = append(r.res.FirstErrors, msg)
		}
	}
	r.latencies[sec] = append(r.latencies[sec], lat)
	r.byOp[op] = append(r.byOp[op], lat)
	r.res.ByKind[op] = ks
}

// errorKind classifies a failed request for Result.ErrorKinds.
func errorKind(err error) string {
	var se *StatusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("http %d", se.Code)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF):
		return "connection"
	}
	return "other"
}

func (r *runner) summarise() {
	var all []time.Duration
	for s := range r.latencies {
		lat := r.latencies[s]
		all = append(all, lat...)
		p := percentiles(lat)
		b := Bucket{Second: s, Requests: len(lat), Errors: r.errs[s], Dropped: r.drops[s], P50Ms: p.P50Ms, P99Ms: p.P99Ms}
		if b.Requests > 0 || b.Errors > 0 || b.Dropped > 0 {
			r.res.Buckets = append(r.res.Buckets, b)
		}
	}
	r.res.Latency = percentiles(all)
	for op, lat := range r.byOp {
		ks := r.res.ByKind[op]
		ks.Latency = percentiles(lat)
		r.res.ByKind[op] = ks
	}
	if r.res.Elapsed > 0 {
		r.res.Throughput = float64(len(all)) / r.res.Elapsed.Seconds()
	}
}

// percentiles sorts lat and reads p50, p99 (nearest rank below) and max.
func percentiles(lat []time.Duration) Latency {
	if len(lat) == 0 {
		return Latency{}
	}
	slices.Sort(lat)
	return Latency{P50Ms: ms(lat[(len(lat)-1)*50/100]), P99Ms: ms(lat[(len(lat)-1)*99/100]), MaxMs: ms(lat[len(lat)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *runner) record(rec Record) {
	r.mu.Lock()
	r.res.Writes++
	r.mu.Unlock()
	if r.rec == nil {
		return
	}
	rec.At = time.Now().UTC()
	r.recMu.Lock()
	defer r.recMu.Unlock()
	_ = r.rec.Encode(rec)
}

// randUser returns a known user; randPhoto a known photo.
func (r *runner) randUser() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.users[r.rng.IntN(len(r.users))]
}

// userPair returns two distinct known users (pick makes sure there are two).
func (r *runner) userPair() (int64, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := r.rng.IntN(len(r.users))
	j := (i + 1 + r.rng.IntN(len(r.users)-1)) % len(r.users)
	return r.users[i], r.users[j]
}

func (r *runner) randPhoto() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.photos[r.rng.IntN(len(r.photos))]
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (r *runner) do(ctx context.Context, op string) error {
	switch op {
	case "signup":
		r.mu.Lock()
		r.nextName++
		name := fmt.Sprintf("lg%x-%d", r.runID, r.nextName)
		r.mu.Unlock()
		var u struct{ ID int64 }
		if err := r.call(ctx, "POST", "/users", "application/json", []byte(`{"username":"`+name+`"}`), http.StatusCreated, &u); err != nil {
			return err
		}
		r.mu.Lock()
		r.users = append(r.users, u.ID)
		r.mu.Unlock()
		r.record(Record{Kind: "user", ID: u.ID, SHA256: digest([]byte(name))})
	case "follow":
		a, b := r.userPair()
		if err := r.call(ctx, "POST", fmt.Sprintf("/users/%d/follow/%d", a, b), "", nil, http.StatusOK, nil); err != nil {
			return err
		}
		r.record(Record{Kind: "follow", ID: a, Ref: b, SHA256: digest(fmt.Appendf(nil, "%d->%d", a, b))})
	case "upload":
		owner := r.randUser()
		img := make([]byte, r.cfg.PhotoBytes)
		r.mu.Lock()
		for i := 0; i < len(img); i += 8 {
			v := r.rng.Uint64()
			for j := 0; j < 8 && i+j < len(img); j++ {
				img[i+j] = byte(v >> (8 * j))
			}
		}
		r.mu.Unlock()
		var p struct{ ID int64 }
		if err := r.call(ctx, "POST", fmt.Sprintf("/photos?user_id=%d&caption=loadgen", owner), "image/jpeg", img, http.StatusCreated, &p); err != nil {
			return err
		}
		r.mu.Lock()
		r.photos = append(r.photos, p.ID)
		r.mu.Unlock()
		r.record(Record{Kind: "photo", ID: p.ID, Ref: owner, SHA256: digest(img)})
	case "like":
		photo, user := r.randPhoto(), r.randUser()
		body := fmt.Appendf(nil, `{"user_id":%d}`, user)
		if err := r.call(ctx, "POST", fmt.Sprintf("/photos/%d/likes", photo), "application/json", body, http.StatusOK, nil); err != nil {
			return err
		}
		r.record(Record{Kind: "like", ID: photo, Ref: user, SHA256: digest(fmt.Appendf(nil, "%d likes %d", user, photo))})
	case "comment":
		photo, user := r.randPhoto(), r.randUser()
		text := fmt.Sprintf("comment %d by %d at %d", photo, user, time.Now().UnixNano())
		body, _ := json.Marshal(map[string]any{"user_id": user, "body": text})
		var c struct{ ID int64 }
		if err := r.call(ctx, "POST", fmt.Sprintf("/photos/%d/comments", photo), "application/json", body, http.StatusCreated, &c); err != nil {
			return err
		}
		r.record(Record{Kind: "comment", ID: c.ID, Ref: photo, SHA256: digest([]byte(text))})
	case "feed":
		return r.call(ctx, "GET", fmt.Sprintf("/users/%d/feed?limit=20", r.randUser()), "", nil, http.StatusOK, nil)
	}
	return nil
}

// call does one request and decodes a JSON answer into out when the status is want.
func (r *runner) call(ctx context.Context, method, path, contentType string, body []byte, want int, out any) error {
	return call(ctx, r.cfg.Client, r.cfg.BaseURL, method, path, contentType, body, want, out)
}

func call(ctx context.Context, c *http.Client, base, method, path, contentType string, body []byte, want int, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: read: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return &StatusError{Method: method, Path: path, Code: resp.StatusCode, Body: string(bytes.TrimSpace(raw))}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

// StatusError is an unexpected HTTP status.
type StatusError struct {
	Method, Path string
	Code         int
	Body         string
}

// Error describes the request and the answer, the body folded onto one line but whole: it is
// the cause (the app's error message, or the proxy's page saying which upstream failed).
func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.Path, e.Code, errtext.OneLine(e.Body))
}
