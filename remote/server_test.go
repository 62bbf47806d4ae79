package remote

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// testKey is an ed25519 key pair with its private half written to a file.
type testKey struct {
	signer ssh.Signer
	file   string
}

func newTestKey(t testing.TB, dir, name string) testKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{signer: signer, file: file}
}

// testServer is an in-process SSH server on 127.0.0.1:0 that runs exec
// requests with /bin/sh on this machine, for fast unit tests.
type testServer struct {
	t          testing.TB
	ln         net.Listener
	port       int
	hostKey    ssh.Signer
	config     *ssh.ServerConfig
	keepalives atomic.Int32
	silent     atomic.Bool  // stop answering global requests
	dropNext   atomic.Int32 // close this many new connections at once, like MaxStartups
	accepted   atomic.Int32
	noSignals  atomic.Bool // refuse "signal" like OpenSSH does for root

	mu    sync.Mutex
	conns []net.Conn
}

func newTestServer(t testing.TB, authorized ssh.PublicKey) *testServer {
	t.Helper()
	hostKey := newTestKey(t, t.TempDir(), "host_key").signer
	s := &testServer{t: t, hostKey: hostKey}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if string(k.Marshal()) == string(authorized.Marshal()) {
				return nil, nil
			}
			return nil, io.EOF
		},
	}
	s.config.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	s.port = ln.Addr().(*net.TCPAddr).Port
	go s.serve()
	t.Cleanup(s.close)
	return s
}

func (s *testServer) target() Target {
	return Target{Name: "unit", Address: "127.0.0.1", Port: s.port}
}

// knownHostsLine is the line ssh-keyscan would print for this server.
func (s *testServer) knownHostsLine() string {
	return knownhosts.Line([]string{knownhosts.Normalize("127.0.0.1:" + strconv.Itoa(s.port))}, s.hostKey.PublicKey())
}

func (s *testServer) close() {
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}

func (s *testServer) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		if s.dropNext.Add(-1) >= 0 {
			conn.Close()
			continue
		}
		s.mu.Lock()
		s.conns = append(s.conns, conn)
		s.mu.Unlock()
		go s.handle(conn)
	}
}

func (s *testServer) handle(conn net.Conn) {
	sc, chans, reqs, err := ssh.NewServerConn(conn, s.config)
	if err != nil {
		conn.Close()
		return
	}
	defer sc.Close()
	go func() {
		for req := range reqs {
			if req.Type == "keepalive@openssh.com" {
				s.keepalives.Add(1)
			}
			if s.silent.Load() {
				continue
			}
			req.Reply(false, nil)
		}
	}()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go s.session(ch, chReqs)
	}
}

// session serves exec and signal requests on one session channel.
func (s *testServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var cmd *exec.Cmd
	exited := make(chan struct{})
	for req := range reqs {
		switch req.Type {
		case "exec":
			if cmd != nil {
				req.Reply(false, nil)
				continue
			}
			n := binary.BigEndian.Uint32(req.Payload)
			cmd = exec.Command("/bin/sh", "-c", string(req.Payload[4:4+n]))
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
			stdin, _ := cmd.StdinPipe()
			if err := cmd.Start(); err != nil {
				req.Reply(false, nil)
				return
			}
			req.Reply(true, nil)
			go func() {
				io.Copy(stdin, ch)
				stdin.Close()
			}()
			go func() {
				defer close(exited)
				err := cmd.Wait()
				code := 0
				if ee, ok := err.(*exec.ExitError); ok {
					ws := ee.Sys().(syscall.WaitStatus)
					if ws.Signaled() {
						sig := map[syscall.Signal]string{syscall.SIGKILL: "KILL", syscall.SIGTERM: "TERM"}[ws.Signal()]
						msg := ssh.Marshal(struct {
							Signal     string
							CoreDumped bool
							Msg, Lang  string
						}{Signal: sig})
						ch.SendRequest("exit-signal", false, msg)
						ch.Close()
						return
					}
					code = ws.ExitStatus()
				}
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
				ch.Close()
			}()
		case "signal":
			if s.noSignals.Load() {
				req.Reply(false, nil)
				continue
			}
			var sig struct{ Name string }
			ssh.Unmarshal(req.Payload, &sig)
			if cmd != nil && cmd.Process != nil {
				s := map[string]syscall.Signal{"KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM}[sig.Name]
				syscall.Kill(-cmd.Process.Pid, s)
			}
			if req.WantReply {
				req.Reply(true, nil)
			}
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
	// The client closed the channel: kill what is left.
	if cmd != nil && cmd.Process != nil {
		select {
		case <-exited:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}
}
