package remote

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

const sshdPath = "/usr/sbin/sshd"

// requireSSHD skips (or, on CI, fails) when OpenSSH's server is missing, and
// makes sure sshd's privilege separation directory exists.
func requireSSHD(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(sshdPath); err != nil {
		msg := "OpenSSH server not installed (" + sshdPath + "): apt-get install -y openssh-server"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if testing.Short() {
		t.Skip("real sshd tests skipped in -short mode")
	}
	if os.Geteuid() == 0 {
		// sshd refuses to start without /run/sshd, which the systemd unit
		// normally creates; on a bare machine create it as the unit would.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("creating /run/sshd for sshd privilege separation: %v", err)
		}
	}
}

// sshdHost is a real OpenSSH sshd started by a test on 127.0.0.N:PORT.
type sshdHost struct {
	name    string
	ip      string
	port    int
	dir     string
	log     string
	hostKey ssh.PublicKey
	pid     int
}

var sshdSeq atomic.Int32

// nextLoopbackIP spreads test hosts over 127.0.0.150-249, away from the
// .11-.110 range the peer deploy scripts use.
func nextLoopbackIP() string {
	return fmt.Sprintf("127.0.0.%d", 150+int(sshdSeq.Add(1))%100)
}

// freePort finds a free TCP port on ip (sshd cannot report one it chose).
func freePort(t testing.TB, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startSSHD starts sshd in the foreground (-D) with its own host key, config
// and log under a temp dir, trusting clientKey for the current user. extra is
// appended to sshd_config. The process is stopped by PID at cleanup.
func startSSHD(t testing.TB, name string, clientKey ssh.PublicKey, extra string) *sshdHost {
	t.Helper()
	requireSSHD(t)
	dir := t.TempDir()
	h := &sshdHost{name: name, ip: nextLoopbackIP(), dir: dir, log: filepath.Join(dir, "sshd.log")}
	h.port = freePort(t, h.ip)
	hk := newTestKey(t, dir, "ssh_host_ed25519_key")
	h.hostKey = hk.signer.PublicKey()
	os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientKey), 0o600)
	// sshd keeps the first value of a keyword: extra goes first.
	cfg := fmt.Sprintf(`%s
ListenAddress %s:%d
HostKey %s
PidFile %s
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
# Debian's bash sources ~/.bashrc in every SSH session of a top-level shell
# (it sees SSH_CLIENT and SHLVL < 2); root's .bashrc here runs pyenv init,
# which is slow. SHLVL=1 makes the session shell level 2.
SetEnv SHLVL=1
LogLevel VERBOSE
`, extra, h.ip, h.port, hk.file, filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "authorized_keys"))
	cfgFile := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshdPath, "-D", "-f", cfgFile, "-E", h.log)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting sshd: %v", err)
	}
	h.pid = cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Let the per-connection children finish while the listener can
		// still reap them; orphans would become zombies under an init that
		// does not reap.
		waitNoChildren(h.pid, 3*time.Second)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, _ := os.ReadFile(h.log); bytes.Contains(b, []byte("Server listening on")) {
			return h
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(h.log)
			t.Fatalf("sshd %s exited: %s%s", name, stderr.String(), b)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(h.log)
			t.Fatalf("sshd %s did not start listening in 5s: %s", name, b)
		}
	}
}

func (h *sshdHost) target() Target {
	return Target{Name: h.name, Address: h.ip, Port: h.port}
}

func (h *sshdHost) knownHostsLine() string {
	return knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(h.ip, strconv.Itoa(h.port)))}, h.hostKey)
}

func (h *sshdHost) logText() string {
	b, _ := os.ReadFile(h.log)
	return string(b)
}

// sshdEnv is a client key and a known_hosts file for a set of real hosts.
type sshdEnv struct {
	dir        string
	key        testKey
	knownHosts string
}

func newSSHDEnv(t testing.TB) *sshdEnv {
	t.Helper()
	requireSSHD(t)
	dir := t.TempDir()
	return &sshdEnv{dir: dir, key: newTestKey(t, dir, "id_ed25519"), knownHosts: filepath.Join(dir, "known_hosts")}
}

// start starts a host and, if trusted, records its key in known_hosts.
func (e *sshdEnv) start(t testing.TB, name string, trusted bool, extra string) *sshdHost {
	t.Helper()
	h := startSSHD(t, name, e.key.signer.PublicKey(), extra)
	if trusted {
		if err := appendLocked(e.knownHosts, h.knownHostsLine()+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func (e *sshdEnv) dialer(t testing.TB, mod func(*Config)) *SSHDialer {
	t.Helper()
	cfg := Config{User: currentUser(t), IdentityFiles: []string{e.key.file}, KnownHostsFile: e.knownHosts}
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

func currentUser(t testing.TB) string {
	out, err := exec.Command("id", "-un").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// waitNoChildren waits until process pid has no child processes, or timeout.
func waitNoChildren(pid int, timeout time.Duration) {
	file := fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		b, err := os.ReadFile(file)
		if err != nil || len(bytes.TrimSpace(b)) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
