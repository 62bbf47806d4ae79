package remote

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// unitEnv is an in-process server, a client key it accepts, and a
// known_hosts file that trusts it.
type unitEnv struct {
	srv        *testServer
	key        testKey
	knownHosts string
}

func newUnitEnv(t *testing.T) *unitEnv {
	t.Helper()
	dir := t.TempDir()
	key := newTestKey(t, dir, "id_ed25519")
	srv := newTestServer(t, key.signer.PublicKey())
	kh := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(kh, []byte(srv.knownHostsLine()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &unitEnv{srv: srv, key: key, knownHosts: kh}
}

func (e *unitEnv) dialer(t *testing.T, mod func(*Config)) *SSHDialer {
	t.Helper()
	cfg := Config{User: "tester", IdentityFiles: []string{e.key.file}, KnownHostsFile: e.knownHosts}
	if mod != nil {
		mod(&cfg)
	}
	d, err := NewDialer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func (e *unitEnv) client(t *testing.T) *Client {
	t.Helper()
	c, err := e.dialer(t, nil).Dial(context.Background(), e.srv.target())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRunOutputAndExitCodes(t *testing.T) {
	c := newUnitEnv(t).client(t)
	ctx := context.Background()
	tests := []struct {
		name       string
		cmd        Command
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"echo", Cmd("echo", "hello world"), "", 0, "hello world\n", ""},
		{"exit code", Script("echo out; echo err >&2; exit 3"), "", 3, "out\n", "err\n"},
		{"stdin", Cmd("cat"), "line1\nline2\n", 0, "line1\nline2\n", ""},
		{"quoted argv", Cmd("printf", "%s|", "a b", "it's", "$HOME", ""), "", 0, "a b|it's|$HOME||", ""},
		{"false", Cmd("false"), "", 1, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdin *strings.Reader
			if tt.stdin != "" {
				stdin = strings.NewReader(tt.stdin)
			}
			var res Result
			var err error
			if stdin != nil {
				res, err = c.Run(ctx, tt.cmd, stdin)
			} else {
				res, err = c.Run(ctx, tt.cmd, nil)
			}
			if err != nil {
				t.Fatalf("Run: transport error %v", err)
			}
			if res.ExitCode != tt.wantCode || string(res.Stdout) != tt.wantStdout || string(res.Stderr) != tt.wantStderr {
				t.Errorf("got code %d stdout %q stderr %q; want %d %q %q", res.ExitCode, res.Stdout, res.Stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			if (res.Err() == nil) != (tt.wantCode == 0) {
				t.Errorf("Result.Err() = %v for exit %d", res.Err(), res.ExitCode)
			}
		})
	}
}

func TestRunExitErrorMessage(t *testing.T) {
	c := newUnitEnv(t).client(t)
	res, err := c.Run(context.Background(), Script("echo first >&2; echo 'disk full' >&2; exit 28"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var ee *ExitError
	if !errors.As(res.Err(), &ee) || ee.ExitCode != 28 {
		t.Fatalf("Err() = %v", res.Err())
	}
	// A multi-line cause is kept whole, indented under the command.
	want := `unit: sh -c 'echo first >&2; echo '\''disk full'\'' >&2; exit 28' exited 28:
    first
    disk full`
	if got := res.Err().Error(); got != want {
		t.Errorf("message\n got %s\nwant %s", got, want)
	}
}

// TestRunExitErrorKeepsLongCause: the command line (decoration) may be shortened, the remote
// error never.
func TestRunExitErrorKeepsLongCause(t *testing.T) {
	c := newUnitEnv(t).client(t)
	cause := "error: " + strings.Repeat("the service refused to start because ", 20) + "END-OF-CAUSE"
	script := "# " + strings.Repeat("a long script ", 30) + "\necho '" + cause + "' >&2; exit 1"
	res, err := c.Run(context.Background(), Script(script), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := res.Err().Error()
	if !strings.HasSuffix(got, ": "+cause) {
		t.Errorf("the remote error was not kept whole (%d bytes, cause %d):\n%s", len(got), len(cause), got)
	}
	if len(got) > len(cause)+200 {
		t.Errorf("the command line was not shortened: %d bytes", len(got))
	}
}

// A cause longer than MaxOutputBytes cannot be kept whole: the message says it was cut.
func TestRunExitErrorSaysStderrWasCut(t *testing.T) {
	env := newUnitEnv(t)
	c, err := env.dialer(t, func(c *Config) { c.MaxOutputBytes = 1000 }).Dial(context.Background(), env.srv.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Run(context.Background(), Script("head -c 5000 /dev/zero | tr '\\0' x >&2; exit 1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Err().Error(); !strings.Contains(got, strings.Repeat("x", 1000)) || !strings.Contains(got, "stderr cut after its first 1000 bytes") {
		t.Errorf("message does not say stderr was cut:\n%s", got)
	}
}

func TestRunBoundedOutput(t *testing.T) {
	env := newUnitEnv(t)
	c, err := env.dialer(t, func(c *Config) { c.MaxOutputBytes = 1000 }).Dial(context.Background(), env.srv.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Run(context.Background(), Script("head -c 100000 /dev/zero"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stdout) != 1000 || !res.StdoutTruncated || res.StderrTruncated {
		t.Errorf("stdout %d bytes, truncated %v/%v", len(res.Stdout), res.StdoutTruncated, res.StderrTruncated)
	}
}

func TestRunCancelKillsCommand(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("signals refused=%v", refuse), func(t *testing.T) {
			t.Parallel()
			env := newUnitEnv(t)
			env.srv.noSignals.Store(refuse)
			testCancelKills(t, env.client(t))
		})
	}
}

func testCancelKills(t *testing.T, c *Client) {
	dir := t.TempDir()
	marker, pidFile := filepath.Join(dir, "survived"), filepath.Join(dir, "pid")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// The command would run for a minute: returning at all before then means the cancel worked,
	// on however loaded a machine.
	script := "echo $$ >" + Quote(pidFile) + "; sleep 60; touch " + Quote(marker)
	_, err := c.Run(ctx, Script(script), nil)
	if err != nil && c.Err() != nil {
		t.Fatal(c.Err())
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	// The remote shell must be gone: wait on the process itself, never on a fixed sleep.
	b, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatalf("the command never started: %v", rerr)
	}
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if perr != nil {
		t.Fatalf("pid file %q: %v", b, perr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the command (pid %d) survived cancellation", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the command survived cancellation")
	}
	// The connection is still usable.
	if res, err := c.Run(context.Background(), Cmd("true"), nil); err != nil || res.ExitCode != 0 {
		t.Errorf("after cancel: %v %v", res, err)
	}
}

func TestRunStreamPrefixed(t *testing.T) {
	c := newUnitEnv(t).client(t)
	var out bytes.Buffer
	shared := NewSharedWriter(&out)
	pw := NewPrefixWriter(shared, "web-1")
	res, err := c.RunStream(context.Background(), Script("printf 'a\\nb\\nc'"), nil, pw, pw)
	if err != nil || res.ExitCode != 0 {
		t.Fatal(res, err)
	}
	pw.Close()
	if got, want := out.String(), "web-1 | a\nweb-1 | b\nweb-1 | c\n"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
}

func TestUploadInProcess(t *testing.T) {
	c := newUnitEnv(t).client(t)
	dst := filepath.Join(t.TempDir(), "new dir", "it's", "app.bin")
	content := bytes.Repeat([]byte("instactl\n"), 100000)
	sum, err := c.Upload(context.Background(), bytes.NewReader(content), dst, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(content)
	if sum != hex.EncodeToString(want[:]) {
		t.Errorf("sum %s", sum)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("content differs (%v)", err)
	}
	if st, _ := os.Stat(dst); st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v", st.Mode())
	}
	// A reader of unknown size is spooled, and overwriting is atomic.
	if _, err := c.Upload(context.Background(), struct{ *strings.Reader }{strings.NewReader("v2")}, dst, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "v2" {
		t.Errorf("after overwrite: %q", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(dst))
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestUploadShortReaderLeavesNothing(t *testing.T) {
	c := newUnitEnv(t).client(t)
	dir := t.TempDir()
	dst := filepath.Join(dir, "app")
	f, err := os.Create(filepath.Join(t.TempDir(), "src"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("01234")
	f.Seek(0, 0)
	// The reader claims more than it delivers: the host must not rename.
	r := &shrinkingFile{File: f}
	_, err = c.Upload(context.Background(), r, dst, 0o644)
	if err == nil {
		t.Fatal("upload of short content succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left %v", entries)
	}
}

// shrinkingFile claims 10 bytes (via Len) and holds 5.
type shrinkingFile struct{ *os.File }

func (s *shrinkingFile) Len() int { return 10 }

func TestHostKeyUnknown(t *testing.T) {
	env := newUnitEnv(t)
	os.WriteFile(env.knownHosts, nil, 0o600)
	_, err := env.dialer(t, nil).Dial(context.Background(), env.srv.target())
	var hk *HostKeyError
	if !errors.As(err, &hk) || hk.Kind != HostKeyUnknown {
		t.Fatalf("err = %v, want unknown host key", err)
	}
	wantFix := fmt.Sprintf("run with --accept-new-host-keys, or: ssh-keyscan -p %d 127.0.0.1 >> %s", env.srv.port, env.knownHosts)
	if !strings.Contains(err.Error(), wantFix) || !strings.Contains(err.Error(), fmt.Sprintf("[127.0.0.1]:%d", env.srv.port)) {
		t.Errorf("message lacks the fix:\n%v", err)
	}
	if !strings.HasPrefix(err.Error(), "dial unit (127.0.0.1:") {
		t.Errorf("message does not start with the host: %v", err)
	}
	if n := env.srv.accepted.Load(); n != 1 {
		t.Errorf("host key refusal was retried: %d connections", n)
	}
}

func TestHostKeyChangedRefusedEvenWithAcceptNew(t *testing.T) {
	env := newUnitEnv(t)
	other := newTestServer(t, env.key.signer.PublicKey())
	// known_hosts has other's key under env.srv's address.
	line := strings.Replace(other.knownHostsLine(), fmt.Sprint(other.port), fmt.Sprint(env.srv.port), 1)
	os.WriteFile(env.knownHosts, []byte(line+"\n"), 0o600)
	_, err := env.dialer(t, func(c *Config) { c.AcceptNewHostKeys = true }).Dial(context.Background(), env.srv.target())
	var hk *HostKeyError
	if !errors.As(err, &hk) || hk.Kind != HostKeyChanged {
		t.Fatalf("err = %v, want changed host key", err)
	}
	for _, want := range []string{"HOST KEY CHANGED", "ssh-keygen -f " + env.knownHosts + " -R '[127.0.0.1]:", "man-in-the-middle"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%v", want, err)
		}
	}
	if got, _ := os.ReadFile(env.knownHosts); string(got) != line+"\n" {
		t.Errorf("known_hosts was modified:\n%s", got)
	}
}

func TestHostKeyAcceptNewRecordsOnce(t *testing.T) {
	env := newUnitEnv(t)
	os.Remove(env.knownHosts) // a missing file is an empty one
	d := env.dialer(t, func(c *Config) { c.AcceptNewHostKeys = true })
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			c, err := d.Dial(context.Background(), env.srv.target())
			if err == nil {
				c.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(env.knownHosts)
	if string(got) != env.srv.knownHostsLine()+"\n" {
		t.Errorf("known_hosts:\n%s\nwant exactly:\n%s", got, env.srv.knownHostsLine())
	}
	// A strict dialer now trusts it.
	if c, err := env.dialer(t, nil).Dial(context.Background(), env.srv.target()); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
}

func TestHostKeyHashedEntry(t *testing.T) {
	env := newUnitEnv(t)
	line := env.srv.knownHostsLine()
	host, rest, _ := strings.Cut(line, " ")
	hashed := fmt.Sprintf("%s %s\n", hashHostForTest(host), rest)
	os.WriteFile(env.knownHosts, []byte(hashed), 0o600)
	c, err := env.dialer(t, nil).Dial(context.Background(), env.srv.target())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestKeepAlive(t *testing.T) {
	env := newUnitEnv(t)
	c, err := env.dialer(t, func(c *Config) { c.KeepAliveInterval = 50 * time.Millisecond }).Dial(context.Background(), env.srv.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(300 * time.Millisecond)
	if n := env.srv.keepalives.Load(); n < 3 {
		t.Fatalf("%d keepalives in 300ms at a 50ms interval", n)
	}
	select {
	case <-c.Done():
		t.Fatalf("closed while the server answers: %v", c.Err())
	default:
	}
	env.srv.silent.Store(true)
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("connection not closed after unanswered keepalives")
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "keepalive") {
		t.Errorf("Err() = %v", err)
	}
	if _, err := c.Run(context.Background(), Cmd("true"), nil); err == nil {
		t.Error("Run on a dead connection succeeded")
	}
}

func TestDialRetriesRefusedConnections(t *testing.T) {
	env := newUnitEnv(t)
	env.srv.dropNext.Store(3)
	d := env.dialer(t, func(c *Config) { c.MaxConcurrentDials = 4 })
	c, err := d.Dial(context.Background(), env.srv.target())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	st := d.Stats()
	if st.Retries != 3 || st.Attempts != 4 || st.Decreases < 1 || st.Limit >= 4 {
		t.Errorf("stats %+v", st)
	}
}

func TestDialGivesUpAfterAttempts(t *testing.T) {
	env := newUnitEnv(t)
	env.srv.dropNext.Store(100)
	d := env.dialer(t, func(c *Config) { c.DialAttempts = 3 })
	_, err := d.Dial(context.Background(), env.srv.target())
	if err == nil || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("err = %v", err)
	}
}

func TestPoolReusesAndRedials(t *testing.T) {
	env := newUnitEnv(t)
	p := NewPool(env.dialer(t, nil))
	defer p.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	clients := make([]*Client, 5)
	for i := range clients {
		wg.Go(func() { clients[i], _ = p.Get(ctx, env.srv.target()) })
	}
	wg.Wait()
	for _, c := range clients {
		if c == nil || c != clients[0] {
			t.Fatal("pool did not share one connection")
		}
	}
	if n := env.srv.accepted.Load(); n != 1 {
		t.Errorf("%d connections", n)
	}
	clients[0].Close()
	c, err := p.Get(ctx, env.srv.target())
	if err != nil || c == clients[0] {
		t.Fatalf("no redial after close: %v", err)
	}
	p.Close()
	select {
	case <-c.Done():
	default:
		t.Error("pool Close left a connection open")
	}
	if _, err := p.Get(ctx, env.srv.target()); err == nil {
		t.Error("Get on a closed pool succeeded")
	}
}

func TestFanOutContinuesOnFailure(t *testing.T) {
	env := newUnitEnv(t)
	p := NewPool(env.dialer(t, func(c *Config) { c.ConnectTimeout = time.Second }))
	defer p.Close()
	good := env.srv.target()
	bad := Target{Name: "down", Address: "127.0.0.1", Port: 1}
	good2 := good
	good2.Name = "unit-2"
	results := p.FanOut(context.Background(), []Target{good, bad, good2}, 2, func(ctx context.Context, c *Client, t Target) error {
		res, err := c.Run(ctx, Cmd("echo", t.Name), nil)
		if err != nil {
			return err
		}
		if string(res.Stdout) != t.Name+"\n" {
			return fmt.Errorf("stdout %q", res.Stdout)
		}
		return res.Err()
	})
	if len(results) != 3 {
		t.Fatal(results)
	}
	if results[0].Err != nil || results[2].Err != nil {
		t.Errorf("good hosts failed: %v / %v", results[0].Err, results[2].Err)
	}
	if results[1].Err == nil || !strings.Contains(results[1].Err.Error(), "dial down") {
		t.Errorf("bad host: %v", results[1].Err)
	}
	if results[0].Target != good || results[0].Duration <= 0 {
		t.Errorf("result 0: %+v", results[0])
	}
}
