package remote

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkFanOutUpload is the deploy job of shared/peers/deploy done with
// this package: connect to N real sshd hosts, upload a ~20 MB artifact to
// each (sha256-verified, atomic rename), then run the activation command,
// through one pooled connection per host. Each iteration starts with a fresh
// pool, so handshakes are counted as they are for the peer tools.
//
// Host counts: INSTACTL_BENCH_HOSTS="1,4" (the default), e.g.
//
//	INSTACTL_BENCH_HOSTS=10,50 go test -run '^$' -bench FanOutUpload -benchtime 3x ./remote/
//
// Unlike the peers' hosts these sshd processes share the machine's
// filesystem (no mount namespace), so each host writes under its own
// directory.
func BenchmarkFanOutUpload(b *testing.B) {
	counts := []int{1, 4}
	if v := os.Getenv("INSTACTL_BENCH_HOSTS"); v != "" {
		counts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("INSTACTL_BENCH_HOSTS=%q: want a list of host counts", v)
			}
			counts = append(counts, n)
		}
	}
	env := newSSHDEnv(b)
	artifact := filepath.Join(env.dir, "app")
	content := make([]byte, 20<<20)
	rand.Read(content)
	if err := os.WriteFile(artifact, content, 0o644); err != nil {
		b.Fatal(err)
	}
	var hosts []*sshdHost
	for _, n := range counts {
		for len(hosts) < n {
			// Raised limits as in the peers' hosts: the comparison is about
			// the transfer, not about MaxStartups.
			hosts = append(hosts, env.start(b, fmt.Sprintf("h%d", len(hosts)+1), true, "MaxStartups 500:30:1000\nMaxSessions 100"))
		}
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			targets := make([]Target, n)
			for i, h := range hosts[:n] {
				targets[i] = h.target()
			}
			d := env.dialer(b, func(c *Config) { c.MaxConcurrentDials = 64 })
			b.SetBytes(int64(len(content) * n))
			b.ResetTimer()
			for b.Loop() {
				benchDeployOnce(b, d, targets, hosts[:n], artifact)
			}
		})
	}
}

func benchDeployOnce(b *testing.B, d Dialer, targets []Target, hosts []*sshdHost, artifact string) {
	pool := NewPool(d)
	defer pool.Close()
	byName := map[string]*sshdHost{}
	for _, h := range hosts {
		byName[h.name] = h
	}
	results := pool.FanOut(context.Background(), targets, len(targets), func(ctx context.Context, c *Client, t Target) error {
		root := filepath.Join(byName[t.Name].dir, "srv", "app")
		f, err := os.Open(artifact)
		if err != nil {
			return err
		}
		defer f.Close()
		rel := filepath.Join(root, "releases", "v2")
		if _, err := c.Upload(ctx, f, filepath.Join(rel, "app"), 0o755); err != nil {
			return err
		}
		res, err := c.Run(ctx, Script(fmt.Sprintf("ln -sfn %s %s", Quote(rel), Quote(filepath.Join(root, "current")))), nil)
		if err != nil {
			return err
		}
		return res.Err()
	})
	for _, r := range results {
		if r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}
