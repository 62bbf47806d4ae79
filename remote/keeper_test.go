package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// servedKeeper is a keeper served by this test process: done is closed when ServeKeeper
// has returned err.
type servedKeeper struct {
	done chan struct{}
	err  error
}

// startKeeper serves a keeper in this process on a socket in a new directory, with
// connections from d.
func startKeeper(t *testing.T, d *SSHDialer, idle time.Duration) (string, *servedKeeper) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "k.sock")
	ln, release, err := ListenKeeper(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sk := &servedKeeper{done: make(chan struct{})}
	go func() {
		defer close(sk.done)
		defer release()
		sk.err = ServeKeeper(ctx, ln, d, idle)
	}()
	t.Cleanup(func() {
		cancel()
		<-sk.done
	})
	return sock, sk
}

// accepted counts the connections sshd accepted (LogLevel VERBOSE logs each).
func accepted(h *sshdHost) int { return strings.Count(h.logText(), "Accepted publickey") }

func TestKeeperSessions(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "")
	sock, _ := startKeeper(t, env.dialer(t, nil), time.Minute)
	ctx := context.Background()
	defer func() {
		if t.Failed() {
			t.Log(h.logText())
		}
	}()

	// Two runs, each with its own dialer and pool as two instactl processes would have.
	for run := 1; run <= 2; run++ {
		pool := NewPool(&KeeperDialer{Socket: sock})
		c, err := pool.Get(ctx, h.target())
		if err != nil {
			t.Fatal(err)
		}
		if c.SSH() != nil || c.Addr() == "" {
			t.Errorf("run %d: kept client has SSH() %v and Addr %q; want nil and the host's address", run, c.SSH(), c.Addr())
		}
		res, err := c.Run(ctx, Script("echo out; echo err >&2; exit 7"), nil)
		if err != nil || res.ExitCode != 7 || string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
			t.Errorf("run %d: got %+v, %v", run, res, err)
		}
		res, err = c.Run(ctx, Cmd("printf", "%s|", "a b", "it's", "$HOME"), nil)
		if err != nil || string(res.Stdout) != "a b|it's|$HOME|" {
			t.Errorf("run %d: argv: %q %v", run, res.Stdout, err)
		}
		// Stdin larger than many frames arrives whole.
		data := make([]byte, 3<<20+17)
		rand.Read(data)
		sum := sha256.Sum256(data)
		res, err = c.Run(ctx, Cmd("sha256sum"), bytes.NewReader(data))
		if err != nil || !strings.HasPrefix(string(res.Stdout), hex.EncodeToString(sum[:])) {
			t.Errorf("run %d: stdin of %d bytes: %q %v", run, len(data), res.Stdout, err)
		}
		// Output larger than a frame, streamed to the caller's writer and kept.
		var live bytes.Buffer
		res, err = c.RunStream(ctx, Script("head -c 200000 /dev/zero | tr '\\0' x"), nil, &live, nil)
		if err != nil || len(res.Stdout) != 200000 || live.Len() != 200000 {
			t.Errorf("run %d: output: kept %d, streamed %d bytes, %v", run, len(res.Stdout), live.Len(), err)
		}
		pool.Close()
	}
	if n := accepted(h); n != 1 {
		t.Errorf("sshd accepted %d connections for two runs through one keeper; want 1", n)
	}

	st, err := (&KeeperDialer{Socket: sock}).Status(ctx)
	if err != nil || st.PID != os.Getpid() || len(st.Hosts) != 1 || st.Hosts[0] != "app-1" || st.Active != 0 {
		t.Errorf("status = %+v, %v; want this pid, host app-1, no session running", st, err)
	}
}

func TestKeeperCancelKills(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "")
	sock, _ := startKeeper(t, env.dialer(t, nil), time.Minute)
	c, err := (&KeeperDialer{Socket: sock}).Dial(context.Background(), h.target())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	marker := filepath.Join(t.TempDir(), "survived")
	started := filepath.Join(t.TempDir(), "started")
	go func() {
		for {
			if _, err := os.Stat(started); err == nil {
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	_, err = c.Run(ctx, Script("touch "+Quote(started)+"; sleep 2 && touch "+Quote(marker)), nil)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "cancelled, command killed") {
		t.Errorf("cancelled run: %v; want context.Canceled, command killed", err)
	}
	// A cancel is heard even while the session's stream is full of stdin the command
	// does not read.
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() {
		for {
			if _, err := os.Stat(started + "2"); err == nil {
				cancel2()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	_, err = c.Run(ctx2, Script("touch "+Quote(started+"2")+"; sleep 30"), bytes.NewReader(make([]byte, 64<<20)))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled run with unread stdin: %v; want context.Canceled", err)
	}
	// The command would have touched marker 2 s after it started: wait past that.
	time.Sleep(2500 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Error("the cancelled command kept running")
	}
}

func TestKeeperRedialsDroppedConnection(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "")
	sock, _ := startKeeper(t, env.dialer(t, func(c *Config) { c.KeepAliveInterval = -1 }), time.Minute)
	ctx := context.Background()
	k := &KeeperDialer{Socket: sock}
	c, err := k.Dial(ctx, h.target())
	if err != nil {
		t.Fatal(err)
	}
	if res, err := c.Run(ctx, Cmd("true"), nil); err != nil || res.ExitCode != 0 {
		t.Fatal(res, err)
	}
	// Drop the kept connection on the host's side, as a rebooted host or a restarted
	// sshd does: kill every per-connection sshd process under the listener.
	kids, _ := os.ReadFile("/proc/" + strconv.Itoa(h.pid) + "/task/" + strconv.Itoa(h.pid) + "/children")
	if len(strings.Fields(string(kids))) == 0 {
		t.Fatal("no per-connection sshd process to kill")
	}
	for _, f := range strings.Fields(string(kids)) {
		pid, _ := strconv.Atoi(f)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	// The next run's sessions get a new connection; nothing ran on the dead one.
	c2, err := (&KeeperDialer{Socket: sock}).Dial(ctx, h.target())
	if err != nil {
		t.Fatal(err)
	}
	res, err := c2.Run(ctx, Script("echo again"), nil)
	if err != nil || string(res.Stdout) != "again\n" {
		t.Fatalf("after the host dropped the connection: %+v, %v", res, err)
	}
	if n := accepted(h); n != 2 {
		t.Errorf("sshd accepted %d connections; want 2 (the first, then one after the drop)", n)
	}
}

func TestKeeperDialErrorsAndLifetime(t *testing.T) {
	env := newSSHDEnv(t)
	stranger := env.start(t, "stranger", false, "")
	ctx := context.Background()

	// A dial error reads as the direct dialer's, word for word.
	_, direct := env.dialer(t, nil).Dial(ctx, stranger.target())
	sock, done := startKeeper(t, env.dialer(t, nil), 300*time.Millisecond)
	_, kept := (&KeeperDialer{Socket: sock}).Dial(ctx, stranger.target())
	if direct == nil || kept == nil || kept.Error() != direct.Error() {
		t.Errorf("through the keeper: %v\ndirect: %v\nwant the same error", kept, direct)
	}

	// A second keeper on the same socket is refused; the first keeps it.
	if _, _, err := ListenKeeper(sock); !errors.Is(err, ErrKeeperRunning) {
		t.Errorf("second ListenKeeper: %v; want ErrKeeperRunning", err)
	}

	// With no session for its idle time, the keeper exits and removes its socket.
	select {
	case <-done.done:
		if done.err != nil {
			t.Errorf("idle keeper: %v", done.err)
		}
	case <-time.After(time.Minute): // a bound, not a timing: idle is 300ms
		t.Fatal("the keeper did not exit when idle")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after exit: %v; want it removed", err)
	}
	// Stop on a keeper that is not running is not an error; Dial without Start fails.
	if err := (&KeeperDialer{Socket: sock}).Stop(ctx); err != nil {
		t.Errorf("stop with no keeper: %v", err)
	}
	if _, err := (&KeeperDialer{Socket: sock}).Dial(ctx, stranger.target()); err == nil {
		t.Error("dial with no keeper and no Start succeeded")
	}
}

func TestKeeperStop(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "")
	sock, done := startKeeper(t, env.dialer(t, nil), time.Hour)
	k := &KeeperDialer{Socket: sock}
	if _, err := k.Dial(context.Background(), h.target()); err != nil {
		t.Fatal(err)
	}
	if err := k.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Stop returns once the keeper no longer answers: a status right after finds none.
	if _, err := k.Status(context.Background()); err == nil {
		t.Error("the keeper still answers after Stop returned")
	}
	select {
	case <-done.done:
		if done.err != nil {
			t.Errorf("stopped keeper: %v", done.err)
		}
	case <-time.After(time.Minute): // a bound, not a timing
		t.Fatal("the keeper did not exit when asked to stop")
	}
}

func TestStartKeeperReportsEarlyExit(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "k.sock")
	err := StartKeeper(context.Background(), sock, Config{KnownHostsFile: "/dev/null"}, exec.Command("sh", "-c", "echo cannot read the key >&2; exit 3"))
	if err == nil || !strings.Contains(err.Error(), "cannot read the key") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("StartKeeper of a process that exits: %v; want its exit and its log", err)
	}
}

func TestKeeperDirIsPrivate(t *testing.T) {
	base := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", base)
	dir, err := KeeperDir()
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("%s has mode %s; want 0700", dir, fi.Mode())
	}
	a, errA := KeeperSocket(Config{User: "a", KnownHostsFile: "/k"}, "/bin/instactl")
	b, errB := KeeperSocket(Config{User: "b", KnownHostsFile: "/k"}, "/bin/instactl")
	if errA != nil || errB != nil || a == b || filepath.Dir(a) != dir {
		t.Errorf("keeper sockets of two configs: %q (%v) and %q (%v); want two names in %s", a, errA, b, errB, dir)
	}
	os.Chmod(dir, 0o755)
	if _, err := KeeperDir(); err == nil || !strings.Contains(err.Error(), "ssh_persist: 0s") {
		t.Errorf("a keeper directory others can enter: %v; want a refusal naming the way out", err)
	}
}

func TestUploadFileSumDirectAndKept(t *testing.T) {
	env := newSSHDEnv(t)
	h := env.start(t, "app-1", true, "")
	ctx := context.Background()
	d := env.dialer(t, nil)
	sock, _ := startKeeper(t, d, time.Minute)
	direct, err := d.Dial(ctx, h.target())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	kept, err := (&KeeperDialer{Socket: sock}).Dial(ctx, h.target())
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 9<<20+5)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "artifact")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(data)
	sum := hex.EncodeToString(s[:])
	for name, c := range map[string]*Client{"direct": direct, "kept": kept} {
		t.Run(name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dir", "app")
			var seen []int64
			out, err := c.UploadFileSum(ctx, src, int64(len(data)), dst, 0o755, sum, "echo sealed", func(n int64) { seen = append(seen, n) })
			if err != nil || string(out) != "sealed\n" {
				t.Fatalf("upload: %q, %v", out, err)
			}
			if got, _ := os.ReadFile(dst); !bytes.Equal(got, data) {
				t.Errorf("%s holds %d bytes, not the file's %d", dst, len(got), len(data))
			}
			if len(seen) != 2 || seen[0] < 4<<20 || seen[1] < 8<<20 {
				t.Errorf("progress %v; want two reports, past 4 and 8 MiB", seen)
			}
			// Content that is not what the sum says is refused by the host, nothing put in place.
			bad := filepath.Join(t.TempDir(), "bad")
			if _, err := c.UploadFileSum(ctx, src, int64(len(data)), bad, 0o755, strings.Repeat("0", 64), "", nil); err == nil || !strings.Contains(err.Error(), "exited 3") {
				t.Errorf("wrong sum: %v; want the host's refusal (exit 3)", err)
			}
			if _, err := os.Stat(bad); err == nil {
				t.Errorf("wrong sum: %s was put in place", bad)
			}
			// A file shorter than the size given is a local read error, named as such.
			if _, err := c.UploadFileSum(ctx, src, int64(len(data))+10, bad, 0o755, sum, "", nil); err == nil || !strings.Contains(err.Error(), "reading local content") {
				t.Errorf("short file: %v; want a local read error", err)
			}
		})
	}
}
