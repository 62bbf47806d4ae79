package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSSHDRun(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "LogLevel DEBUG1")
	c, err := env.dialer(t, nil).Dial(context.Background(), h.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer func() {
		if t.Failed() {
			t.Log(h.logText())
		}
	}()
	ctx := context.Background()
	res, err := c.Run(ctx, Script("echo out; echo err >&2; exit 7"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 7 || string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Errorf("got %+v", res)
	}
	res, err = c.Run(ctx, Cmd("sha256sum"), strings.NewReader("abc"))
	if err != nil || !strings.HasPrefix(string(res.Stdout), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") {
		t.Errorf("stdin: %+v %v", res, err)
	}
	res, err = c.Run(ctx, Cmd("printf", "%s|", "a b", "it's", "$HOME"), nil)
	if err != nil || string(res.Stdout) != "a b|it's|$HOME|" {
		t.Errorf("argv: %q %v", res.Stdout, err)
	}
	// Cancellation kills the remote command (OpenSSH honours "signal").
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	marker := filepath.Join(t.TempDir(), "survived")
	if _, err := c.Run(cctx, Script("sleep 1 && touch "+Quote(marker)), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancel: %v", err)
	}
	// Sessions are cheap once connected: the .bashrc workaround holds.
	start := time.Now()
	for range 10 {
		if res, err := c.Run(ctx, Cmd("true"), nil); err != nil || res.ExitCode != 0 {
			t.Fatal(res, err)
		}
	}
	t.Logf("10 sequential sessions on one connection: %v", time.Since(start))
	time.Sleep(1200 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Error("cancelled command kept running")
	}
}

func TestSSHDUpload(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "")
	c, err := env.dialer(t, nil).Dial(context.Background(), h.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	content := make([]byte, 8<<20+123)
	rand.Read(content)
	src := filepath.Join(t.TempDir(), "artifact")
	os.WriteFile(src, content, 0o600)
	f, _ := os.Open(src)
	defer f.Close()
	dst := filepath.Join(t.TempDir(), "releases", "v2", "app")
	start := time.Now()
	sum, err := c.Upload(context.Background(), f, dst, 0o750)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded %d bytes in %v", len(content), time.Since(start))
	want := sha256.Sum256(content)
	if sum != hex.EncodeToString(want[:]) {
		t.Errorf("sha256 %s", sum)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("content differs: %v", err)
	}
	if st, _ := os.Stat(dst); st.Mode().Perm() != 0o750 {
		t.Errorf("mode %v", st.Mode())
	}
	if entries, _ := os.ReadDir(filepath.Dir(dst)); len(entries) != 1 {
		t.Errorf("leftovers: %v", entries)
	}
}

func TestSSHDHostKeys(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "new-host", false, "")
	ctx := context.Background()

	t.Run("unknown", func(t *testing.T) {
		_, err := env.dialer(t, nil).Dial(ctx, h.target())
		var hk *HostKeyError
		if !errors.As(err, &hk) || hk.Kind != HostKeyUnknown {
			t.Fatalf("err = %v", err)
		}
		fix := fmt.Sprintf("ssh-keyscan -p %d %s >> %s", h.port, h.ip, env.knownHosts)
		if !strings.Contains(err.Error(), fix) {
			t.Fatalf("message lacks %q: %v", fix, err)
		}
		t.Logf("refusal: %v", err)
	})

	t.Run("changed", func(t *testing.T) {
		impostor := env.start(t, "impostor", false, "")
		wrong := strings.Replace(impostor.knownHostsLine(), impostor.ip+"]:"+fmt.Sprint(impostor.port), h.ip+"]:"+fmt.Sprint(h.port), 1)
		kh := filepath.Join(t.TempDir(), "known_hosts")
		os.WriteFile(kh, []byte(wrong+"\n"), 0o600)
		_, err := env.dialer(t, func(c *Config) { c.KnownHostsFile = kh; c.AcceptNewHostKeys = true }).Dial(ctx, h.target())
		var hk *HostKeyError
		if !errors.As(err, &hk) || hk.Kind != HostKeyChanged {
			t.Fatalf("err = %v", err)
		}
		if b, _ := os.ReadFile(kh); string(b) != wrong+"\n" {
			t.Errorf("known_hosts modified: %s", b)
		}
		t.Logf("refusal: %v", err)
	})

	t.Run("accept-new", func(t *testing.T) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		d := env.dialer(t, func(c *Config) { c.KnownHostsFile = kh; c.AcceptNewHostKeys = true })
		for range 2 {
			c, err := d.Dial(ctx, h.target())
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		b, _ := os.ReadFile(kh)
		if string(b) != h.knownHostsLine()+"\n" {
			t.Errorf("known_hosts:\n%s", b)
		}
		// OpenSSH agrees with what was recorded.
		out, err := exec.Command("ssh-keygen", "-F", fmt.Sprintf("[%s]:%d", h.ip, h.port), "-f", kh).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ssh-ed25519") {
			t.Errorf("ssh-keygen -F: %v %s", err, out)
		}
	})

	t.Run("suggested keyscan fix works", func(t *testing.T) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		out, err := exec.Command("sh", "-c", fmt.Sprintf("ssh-keyscan -p %d %s >> %s", h.port, h.ip, kh)).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keyscan: %v %s", err, out)
		}
		c, err := env.dialer(t, func(c *Config) { c.KnownHostsFile = kh }).Dial(ctx, h.target())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
}

func TestSSHDProxyJump(t *testing.T) {
	env := newSSHDEnv(t)
	j1 := env.start(t, "bastion-1", true, "LogLevel DEBUG1")
	j2 := env.start(t, "bastion-2", true, "LogLevel DEBUG1")
	app := env.start(t, "app-1", true, "")
	cfgFile := filepath.Join(env.dir, "ssh_config")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf(`Host app-*
  HostName %s
  Port %d
  ProxyJump %s@%s:%d,bastion2

Host bastion2
  HostName %s
  Port %d
`, app.ip, app.port, currentUser(t), j1.ip, j1.port, j2.ip, j2.port)), 0o600)
	d := env.dialer(t, func(c *Config) { c.SSHConfigFile = cfgFile })
	c, err := d.Dial(context.Background(), Target{Name: "app-1"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Run(context.Background(), Script("echo via jumps"), nil)
	if err != nil || string(res.Stdout) != "via jumps\n" {
		t.Fatalf("%+v %v", res, err)
	}
	if c.Addr() != fmt.Sprintf("%s:%d", app.ip, app.port) {
		t.Errorf("Addr %s", c.Addr())
	}
	c.Close()
	for _, hop := range []struct {
		h    *sshdHost
		next string
	}{{j1, fmt.Sprintf("%s port %d", j2.ip, j2.port)}, {j2, fmt.Sprintf("%s port %d", app.ip, app.port)}} {
		if log := hop.h.logText(); !strings.Contains(log, "direct-tcpip") || !strings.Contains(log, hop.next) {
			t.Errorf("%s did not forward to %s; log:\n%s", hop.h.name, hop.next, log)
		}
	}
	// A jump host whose key is unknown is refused like any other host.
	kh := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(kh, []byte(app.knownHostsLine()+"\n"), 0o600)
	_, err = env.dialer(t, func(c *Config) { c.SSHConfigFile = cfgFile; c.KnownHostsFile = kh }).Dial(context.Background(), Target{Name: "app-1"})
	var hk *HostKeyError
	if !errors.As(err, &hk) || !strings.Contains(err.Error(), "jump host "+j1.ip) {
		t.Errorf("unknown jump host key: %v", err)
	}
}

// TestSSHDBurst dials one stock sshd (MaxStartups 10:30:100) 40 times at
// once with the concurrency limit set above it: sshd drops connections, and
// the dialer must absorb every drop.
func TestSSHDBurst(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "burst", true, "")
	d := env.dialer(t, func(c *Config) { c.MaxConcurrentDials = 40 })
	var wg sync.WaitGroup
	errs := make([]error, 40)
	clients := make([]*Client, 40)
	start := time.Now()
	for i := range errs {
		wg.Go(func() { clients[i], errs[i] = d.Dial(context.Background(), h.target()) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, c := range clients {
		if c != nil {
			defer c.Close()
		}
	}
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			t.Error(err)
		}
	}
	drops := strings.Count(h.logText(), "past MaxStartups")
	t.Logf("40 dials in %v: %d failed; sshd dropped %d; dialer stats %+v", elapsed, failed, drops, d.Stats())
	for i, c := range clients {
		if c == nil {
			continue
		}
		if res, err := c.Run(context.Background(), Cmd("true"), nil); err != nil || res.ExitCode != 0 {
			t.Errorf("client %d: %v %v", i, res, err)
		}
	}
}

// UploadSum against a real sshd: the right sum puts the file in place and runs the script
// after it in the same session (its output returned); a sum that does not match the content
// (the file changed since it was hashed) is refused by the host, which keeps nothing and
// does not run the script.
func TestSSHDUploadSum(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "")
	c, err := env.dialer(t, nil).Dial(context.Background(), h.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	content := make([]byte, 3<<20+7)
	rand.Read(content)
	sum := sha256.Sum256(content)
	dir := t.TempDir()
	dst := filepath.Join(dir, "releases", "v3", "app")
	then := "echo sealed > " + Quote(dst+".sealed") + " && echo done"
	out, err := c.UploadSum(context.Background(), bytes.NewReader(content), dst, 0o755, hex.EncodeToString(sum[:]), then)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "done\n" {
		t.Errorf("then's output %q, want %q", out, "done\n")
	}
	if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("content differs: %v", err)
	}
	if b, err := os.ReadFile(dst + ".sealed"); err != nil || string(b) != "sealed\n" {
		t.Errorf("then did not run: %q %v", b, err)
	}

	other := filepath.Join(dir, "releases", "v4", "app")
	changed := append([]byte(nil), content...)
	changed[12345] ^= 1
	_, err = c.UploadSum(context.Background(), bytes.NewReader(changed), other, 0o755, hex.EncodeToString(sum[:]), then)
	if err == nil || !strings.Contains(err.Error(), "exited 3") {
		t.Fatalf("content not matching its sum: %v; want the host to refuse it (exit 3)", err)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("refused upload left %s: %v", other, err)
	}
	if _, err := os.Stat(other + ".sealed"); !os.IsNotExist(err) {
		t.Errorf("then ran after a refused upload: %v", err)
	}
	if _, err := c.UploadSum(context.Background(), bytes.NewReader(content), other, 0o755, "ABC", ""); err == nil {
		t.Error("a malformed sum was accepted")
	}
}
