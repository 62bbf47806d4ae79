package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/internal/testenv"
)

// TestBinary builds the server with a stamped version, runs it as a host would (settings only
// from an env file), checks /healthz, then SIGTERMs it and expects a clean exit.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "instagram-app")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v1.2.3 -X main.commit=abc123", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "instagram-app v1.2.3 (commit abc123)" {
		t.Fatalf("-version: %q %v", out, err)
	}

	comps := apptest.StartComponents(t, 4)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "127.0.0.1"))
	env := filepath.Join(t.TempDir(), "app.env")
	os.WriteFile(env, []byte(strings.Join([]string{
		"INSTAGRAM_LISTEN=" + addr, "INSTAGRAM_CONTROL_DSN=" + comps.ControlDSN,
		"INSTAGRAM_REDIS_ADDR=" + comps.RedisAddr, "INSTAGRAM_MEMCACHED_ADDRS=" + comps.Memcached,
		"INSTAGRAM_S3_BUCKET=" + comps.Bucket, "INSTAGRAM_VERSION=r7", "AWS_ENDPOINT_URL=" + comps.S3Endpoint,
	}, "\n")), 0o644)
	cmd := exec.Command(bin, "-config", env)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	if err := testenv.WaitTCP(addr, 10*time.Second); err != nil {
		cmd.Process.Kill()
		<-exited
		t.Fatalf("%v\n%s", err, log.String())
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil || !strings.Contains(log.String(), `"msg":"stopped"`) {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, log.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15 s after SIGTERM")
	}
	t.Logf("clean exit %s after SIGTERM", time.Since(start).Round(time.Millisecond))
}
