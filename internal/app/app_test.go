package app_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/internal/app"
	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/shardmap"
)

type client struct {
	t    *testing.T
	base string
}

// call sends a JSON request and decodes a JSON answer into out; it returns the status code.
func (c client) call(method, path string, in, out any) int {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+path, body)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

func (c client) signUp(name string) app.User {
	c.t.Helper()
	var u app.User
	if code := c.call("POST", "/users", map[string]string{"username": name}, &u); code != http.StatusCreated {
		c.t.Fatalf("sign up %s: %d", name, code)
	}
	return u
}

func (c client) upload(owner int64, caption string, img []byte) app.Photo {
	c.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("user_id", fmt.Sprint(owner))
	mw.WriteField("caption", caption)
	fw, _ := mw.CreateFormFile("photo", "p.jpg")
	fw.Write(img)
	mw.Close()
	resp, err := http.Post(c.base+"/photos", mw.FormDataContentType(), &buf)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var p app.Photo
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(raw, &p) != nil {
		c.t.Fatalf("upload: %d %s", resp.StatusCode, raw)
	}
	return p
}

func (c client) feed(user int64) []int64 {
	c.t.Helper()
	var page struct{ Photos []app.Photo }
	if code := c.call("GET", fmt.Sprintf("/users/%d/feed?limit=50", user), nil, &page); code != http.StatusOK {
		c.t.Fatalf("feed: %d", code)
	}
	var ids []int64
	for _, p := range page.Photos {
		ids = append(ids, p.ID)
	}
	return ids
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestApp runs the API over two real Postgres nodes, Redis, memcached and moto S3.
func TestApp(t *testing.T) {
	comps := apptest.StartComponents(t, 8)
	cfg := comps.Config()
	cfg.MapRefresh = time.Hour                               // only NOTIFY (or a fence) re-routes: the NOTIFY check cannot pass on the timer
	cfg.PhotoBaseURL = comps.S3Endpoint + "/" + comps.Bucket // as the sandbox's app.env has it (templates.PhotoBaseURL)
	allowPhotoReads(t, comps.Bucket)                         // as sandbox up does (sandboxctl.AllowPhotoReads)
	srv := apptest.StartApp(t, cfg)
	c := client{t: t, base: srv.URL}

	t.Run("sign up, follow, upload, feed, like, comment", func(t *testing.T) {
		c := client{t: t, base: srv.URL}
		alice, bob, carol := c.signUp("alice"), c.signUp("bob"), c.signUp("carol")
		if code := c.call("POST", "/users", map[string]string{"username": "alice"}, nil); code != http.StatusConflict {
			t.Fatalf("duplicate sign-up: %d", code)
		}
		for _, f := range [][2]int64{{bob.ID, alice.ID}, {carol.ID, alice.ID}} {
			if code := c.call("POST", fmt.Sprintf("/users/%d/follow/%d", f[0], f[1]), nil, nil); code != http.StatusOK {
				t.Fatalf("follow: %d", code)
			}
		}
		if code := c.call("DELETE", fmt.Sprintf("/users/%d/follow/%d", carol.ID, alice.ID), nil, nil); code != http.StatusOK {
			t.Fatalf("unfollow: %d", code)
		}
		var following struct{ Following []int64 }
		c.call("GET", fmt.Sprintf("/users/%d/following", bob.ID), nil, &following)
		if !slices.Equal(following.Following, []int64{alice.ID}) {
			t.Fatalf("bob follows %v", following.Following)
		}
		img := randomBytes(50_000)
		p := c.upload(alice.ID, "sunset", img)
		if shardmap.ShardOf(p.ID) != shardmap.ShardOf(alice.ID) {
			t.Fatalf("photo %d in shard %d, owner in %d", p.ID, shardmap.ShardOf(p.ID), shardmap.ShardOf(alice.ID))
		}
		resp, err := http.Get(fmt.Sprintf("%s/photos/%d/image", srv.URL, p.ID))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(got, img) {
			t.Fatalf("image from S3: %d bytes, want %d", len(got), len(img))
		}
		// The photo's url (photo base URL + key) serves the same bytes straight from the bucket.
		if want := cfg.PhotoBaseURL + "/" + p.S3Key; p.URL != want {
			t.Fatalf("photo url = %q, want %q", p.URL, want)
		}
		if resp, err := http.Get(p.URL); err != nil {
			t.Fatal(err)
		} else if got, _ := io.ReadAll(resp.Body); resp.Body.Close() != nil || !bytes.Equal(got, img) {
			t.Fatalf("GET %s: %s, %d bytes, want %d", p.URL, resp.Status, len(got), len(img))
		}
		deadline := time.Now().Add(time.Minute)
		for !slices.Contains(c.feed(bob.ID), p.ID) {
			if time.Now().After(deadline) {
				t.Fatal("photo never reached bob's feed")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if f := c.feed(carol.ID); len(f) != 0 {
			t.Fatalf("carol unfollowed but her feed has %v", f)
		}
		// A raw-body upload, then the feed is newest first and pages with before=.
		req, _ := http.NewRequest("POST", fmt.Sprintf("%s/photos?user_id=%d&caption=raw", srv.URL, alice.ID), bytes.NewReader(randomBytes(1000)))
		req.Header.Set("Content-Type", "image/jpeg")
		resp, err = http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("raw upload: %v %v", err, resp.Status)
		}
		var p2 app.Photo
		json.NewDecoder(resp.Body).Decode(&p2)
		resp.Body.Close()
		for time.Now().Before(deadline) && len(c.feed(bob.ID)) < 2 {
			time.Sleep(20 * time.Millisecond)
		}
		if f := c.feed(bob.ID); !slices.Equal(f, []int64{p2.ID, p.ID}) {
			t.Fatalf("bob's feed %v, want [%d %d]", f, p2.ID, p.ID)
		}
		var page struct{ Photos []app.Photo }
		c.call("GET", fmt.Sprintf("/users/%d/feed?before=%d&limit=5", bob.ID, p2.ID), nil, &page)
		if len(page.Photos) != 1 || page.Photos[0].ID != p.ID {
			t.Fatalf("feed page before %d: %+v", p2.ID, page.Photos)
		}

		if code := c.call("POST", fmt.Sprintf("/photos/%d/likes", p.ID), map[string]int64{"user_id": bob.ID}, nil); code != http.StatusOK {
			t.Fatalf("like: %d", code)
		}
		c.call("POST", fmt.Sprintf("/photos/%d/likes", p.ID), map[string]int64{"user_id": bob.ID}, nil) // idempotent
		var cm app.Comment
		if code := c.call("POST", fmt.Sprintf("/photos/%d/comments", p.ID), map[string]any{"user_id": carol.ID, "body": "wow"}, &cm); code != http.StatusCreated {
			t.Fatalf("comment: %d", code)
		}
		var got1 app.Photo
		c.call("GET", fmt.Sprintf("/photos/%d", p.ID), nil, &got1)
		if got1.LikeCount != 1 || got1.CommentCount != 1 || got1.Caption != "sunset" {
			t.Fatalf("photo after like+comment: %+v", got1)
		}
		var comments struct{ Comments []app.Comment }
		c.call("GET", fmt.Sprintf("/photos/%d/comments", p.ID), nil, &comments)
		if len(comments.Comments) != 1 || comments.Comments[0].Body != "wow" || shardmap.ShardOf(comments.Comments[0].ID) != shardmap.ShardOf(p.ID) {
			t.Fatalf("comments: %+v", comments)
		}
		var ups struct{ Photos []app.Photo }
		c.call("GET", fmt.Sprintf("/users/%d/photos", alice.ID), nil, &ups)
		if len(ups.Photos) != 2 {
			t.Fatalf("alice's photos: %+v", ups)
		}
		if code := c.call("POST", "/photos/123/likes", map[string]int64{"user_id": bob.ID}, nil); code != http.StatusNotFound {
			t.Fatalf("like of a missing photo: %d", code)
		}
	})

	t.Run("healthz and metrics", func(t *testing.T) {
		var h struct{ Checks map[string]string }
		if code := c.call("GET", "/healthz", nil, &h); code != http.StatusOK || len(h.Checks) != 5 {
			t.Fatalf("healthz %d %v", code, h.Checks)
		}
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`instagram_http_requests_total{code="201",method="POST",route="POST /users"}`,
			`instagram_http_request_duration_seconds_bucket{route="GET /users/{id}/feed"`,
			`instagram_db_pool_conns{node="pg1",state="idle"}`, "instagram_shard_map_version 1",
			`instagram_build_info{commit="none",release="test",version="test"} 1`} {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})

	t.Run("fenced write refreshes the map and retries on the new node", func(t *testing.T) {
		testFenceRetry(t, comps, srv)
	})

	t.Run("graceful shutdown completes an in-flight upload", func(t *testing.T) {
		testGracefulShutdown(t, comps)
	})

	t.Run("healthz fails when redis is down", func(t *testing.T) {
		cfg := comps.Config()
		cfg.RedisAddr = testenv.Redis(t)
		s := apptest.StartApp(t, cfg)
		c := client{t: t, base: s.URL}
		if code := c.call("GET", "/healthz", nil, nil); code != http.StatusOK {
			t.Fatalf("healthz before: %d", code)
		}
		redis.NewClient(&redis.Options{Addr: cfg.RedisAddr}).ShutdownNoSave(context.Background())
		var h struct{ Checks map[string]string }
		if code := c.call("GET", "/healthz", nil, &h); code != http.StatusServiceUnavailable || h.Checks["redis"] == "ok" {
			t.Fatalf("healthz with redis down: %d %v", code, h.Checks)
		}
	})
}

func pgConn(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// testFenceRetry plays the cutover of the shard move protocol against a live server: the target
// already has the shard schema, the source is fenced, and the map flips 300 ms later. A sign-up
// landing on the shard in that window must succeed on the target node; with no flip it must fail
// with 503 and write nothing.
func testFenceRetry(t *testing.T, comps *apptest.Components, srv *apptest.Server) {
	ctx := context.Background()
	control := pgConn(t, comps.ControlDSN)
	m, err := shardmap.Load(ctx, control)
	if err != nil {
		t.Fatal(err)
	}
	src, dst := pgConn(t, comps.NodeDSNs["pg1"]), pgConn(t, comps.NodeDSNs["pg2"])
	shards := m.ShardsOn("pg1")
	shard, stuck := shards[0], shards[1]
	nameOn := func(shard int, prefix string) string {
		for i := 0; ; i++ {
			if n := fmt.Sprintf("%s%d", prefix, i); app.ShardForUsername(n, m.LogicalShards()) == shard {
				return n
			}
		}
	}
	if _, err := dst.Exec(ctx, shardmap.ShardSchemaSQL(shard)); err != nil {
		t.Fatal(err)
	}
	if err := shardmap.SetFence(ctx, src, shard, true, time.Second); err != nil {
		t.Fatal(err)
	}
	a := m.Shards[shard]
	// Flip once the sign-up has hit the fence and waits for the map (a real condition, not a
	// delay: on a loaded machine the sign-up may take any time to get there).
	flipped := make(chan error, 1)
	retriesBefore := srv.App.Router().FenceRetries()
	go func() {
		for deadline := time.Now().Add(time.Minute); srv.App.Router().FenceRetries() == retriesBefore; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				flipped <- errors.New("the sign-up never hit the fence")
				return
			}
		}
		flipped <- shardmap.Flip(ctx, control, shard, a.Node, "pg2", a.Epoch)
	}()
	c := client{t: t, base: srv.URL}
	start := time.Now()
	u := c.signUp(nameOn(shard, "moved"))
	if err := <-flipped; err != nil {
		t.Fatal(err)
	}
	t.Logf("sign-up across the flip took %s", time.Since(start))
	if shardmap.ShardOf(u.ID) != shard {
		t.Fatalf("user %d on shard %d, want %d", u.ID, shardmap.ShardOf(u.ID), shard)
	}
	var onSrc, onDst int
	q := fmt.Sprintf("SELECT count(*) FROM %s.users WHERE id = $1", shardmap.SchemaName(shard))
	src.QueryRow(ctx, q, u.ID).Scan(&onSrc)
	dst.QueryRow(ctx, q, u.ID).Scan(&onDst)
	if onSrc != 0 || onDst != 1 {
		t.Fatalf("user rows: source %d, target %d; want 0, 1", onSrc, onDst)
	}
	if r := srv.App.Router().FenceRetries(); r < 1 {
		t.Fatalf("fence retries = %d", r)
	}
	// Reads and later writes go to the new node directly.
	var got app.User
	if code := c.call("GET", fmt.Sprintf("/users/%d", u.ID), nil, &got); code != http.StatusOK || got.Username != u.Username {
		t.Fatalf("read after move: %d %+v", code, got)
	}

	// NOTIFY alone (the timer refresh is 30 s) re-routes: flip a shard of pg2 there and back.
	m2, _ := shardmap.Load(ctx, control)
	other := m2.ShardsOn("pg2")[0]
	for i, hop := range [][2]string{{"pg2", "pg1"}, {"pg1", "pg2"}} {
		if err := shardmap.Flip(ctx, control, other, hop[0], hop[1], m2.Shards[other].Epoch+int64(i)); err != nil {
			t.Fatal(err)
		}
		want := m2.Version + int64(i) + 1
		deadline := time.Now().Add(20 * time.Second) // under the server's MapRefresh of one hour
		for srv.App.Router().Map().Version < want {
			if time.Now().After(deadline) {
				t.Fatalf("app did not see map version %d via NOTIFY", want)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got := srv.App.Router().Map().Shards[other].Node; got != hop[1] {
			t.Fatalf("shard %d routed to %s, want %s", other, got, hop[1])
		}
	}

	// A fence with no flip: one retry after FenceWait, then 503 and nothing written.
	if err := shardmap.SetFence(ctx, src, stuck, true, time.Second); err != nil {
		t.Fatal(err)
	}
	defer shardmap.SetFence(ctx, src, stuck, false, time.Second)
	req, _ := http.NewRequest("POST", srv.URL+"/users", strings.NewReader(`{"username":"`+nameOn(stuck, "stuck")+`"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("write to a fenced, unflipped shard: %s", resp.Status)
	}
}

// testGracefulShutdown starts a slow upload, triggers shutdown while its body is half sent, and
// checks that the upload completes, new connections are refused, and Serve returns cleanly.
func testGracefulShutdown(t *testing.T, comps *apptest.Components) {
	s := apptest.StartApp(t, comps.Config())
	c := client{t: t, base: s.URL}
	owner := c.signUp("slowpoke")
	pr, pw := io.Pipe()
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("POST", fmt.Sprintf("%s/photos?user_id=%d", s.URL, owner.ID), pr)
		req.Header.Set("Content-Type", "image/png")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		resp.Body.Close()
		done <- result{code: resp.StatusCode}
	}()
	img := randomBytes(200_000)
	pw.Write(img[:100_000])
	time.Sleep(200 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- s.Shutdown() }()
	// The listener closes as the shutdown starts: wait for that, however slow the machine.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		conn, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("server still accepts connections a minute into its shutdown")
		}
	}
	select {
	case err := <-stopped:
		t.Fatalf("shutdown returned with a request in flight: %v", err)
	default:
	}
	pw.Write(img[100_000:])
	pw.Close()
	r := <-done
	if r.err != nil || r.code != http.StatusCreated {
		t.Fatalf("in-flight upload: %d %v", r.code, r.err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// allowPhotoReads lets anonymous clients read the bucket's objects, as `sandbox up` does for
// the photo URLs (sandboxctl.PhotoReadPolicy).
func allowPhotoReads(t *testing.T, bucket string) {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::` + bucket + `/*"}]}`
	if _, err := c.PutBucketPolicy(context.Background(), &s3.PutBucketPolicyInput{Bucket: aws.String(bucket), Policy: aws.String(policy)}); err != nil {
		t.Fatal(err)
	}
}
