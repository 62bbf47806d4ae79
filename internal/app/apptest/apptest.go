// Package apptest starts the app server in-process over real components — two PostgreSQL 15
// nodes (the control database on the first), Redis, memcached and moto S3 — for the tests of
// package app and of the load generator.
package apptest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/app"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/shardmap"
)

// Components are the running backing services.
type Components struct {
	Nodes      []*testenv.Postgres
	NodeDSNs   map[string]string // node name -> DSN
	ControlDSN string
	RedisAddr  string
	Memcached  string
	S3Endpoint string
	Bucket     string
	Shards     int
}

// StartComponents starts two Postgres nodes, installs a shard map of shards logical shards
// spread over them (control database "control" on node pg1), and starts Redis, memcached and
// moto with a bucket. Everything stops at test cleanup.
func StartComponents(t testing.TB, shards int) *Components {
	t.Helper()
	ctx := context.Background()
	c := &Components{NodeDSNs: map[string]string{}, Shards: shards, Bucket: "photos"}
	var nodes []shardmap.Node
	for i, name := range []string{"pg1", "pg2"} {
		pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
		c.Nodes = append(c.Nodes, pg)
		mustExec(t, pg.URL("postgres"), "CREATE DATABASE instagram")
		if i == 0 {
			mustExec(t, pg.URL("postgres"), "CREATE DATABASE control")
			c.ControlDSN = pg.URL("control")
		}
		c.NodeDSNs[name] = pg.URL("instagram")
		nodes = append(nodes, shardmap.Node{Name: name, DSN: pg.URL("instagram")})
	}
	conn, err := pgx.Connect(ctx, c.ControlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := shardmap.Install(ctx, conn, shards, nodes); err != nil {
		t.Fatal(err)
	}
	m, err := shardmap.Load(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := shardmap.InitShards(ctx, m); err != nil {
		t.Fatal(err)
	}
	c.RedisAddr = testenv.Redis(t)
	c.Memcached = testenv.Memcached(t)
	c.S3Endpoint = testenv.Moto(t)
	t.Setenv("AWS_ENDPOINT_URL", c.S3Endpoint)
	// testenv.Moto sets these only for a *testing.T; benchmarks need them too.
	for k, v := range map[string]string{"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
		"AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"} {
		t.Setenv(k, v)
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s3c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(c.Bucket)}); err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	return c
}

func mustExec(t testing.TB, dsn, sql string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Config returns an app configuration for the components, with short test timings.
func (c *Components) Config() app.Config {
	cfg := app.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.ControlDSN = c.ControlDSN
	cfg.RedisAddr = c.RedisAddr
	cfg.MemcachedAddrs = []string{c.Memcached}
	cfg.S3Bucket = c.Bucket
	cfg.Release = "test"
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.QueueHeartbeat = 200 * time.Millisecond
	return cfg
}

// Server is an app server running in-process.
type Server struct {
	App  *app.App
	URL  string
	Addr string
	stop context.CancelFunc
	done chan struct{}
	err  error
}

// Shutdown triggers the graceful shutdown (as SIGTERM would) and returns Serve's result.
func (s *Server) Shutdown() error {
	s.stop()
	<-s.done
	return s.err
}

// StartApp starts an app server on a free loopback port with cfg; it shuts down at cleanup.
func StartApp(t testing.TB, cfg app.Config) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var out io.Writer = io.Discard
	if os.Getenv("APPTEST_LOG") != "" {
		out = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(out, nil))
	if cfg.SwitchesFile == app.DefaultConfig().SwitchesFile {
		// Never the machine's own /var/lib/instagram: each server its own file.
		cfg.SwitchesFile = filepath.Join(t.TempDir(), "switches.json")
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, app.Build{Version: "test", Commit: "none"}, log)
	if err != nil {
		cancel()
		ln.Close()
		t.Fatalf("app.New: %v", err)
	}
	s := &Server{App: a, URL: "http://" + ln.Addr().String(), Addr: ln.Addr().String(), stop: cancel,
		done: make(chan struct{})}
	go func() { s.err = a.Serve(ctx, ln); close(s.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
			if s.err != nil && !errors.Is(s.err, context.Canceled) {
				t.Logf("app shutdown: %v", s.err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("app did not shut down")
		}
	})
	if err := testenv.WaitTCP(s.Addr, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return s
}
