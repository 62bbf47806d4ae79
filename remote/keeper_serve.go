package remote

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// sessionOpenError is a session that could not be opened on a connection: nothing ran, so
// the keeper may dial again and retry. Its text is the underlying error's.
type sessionOpenError struct{ err error }

func (e *sessionOpenError) Error() string { return e.err.Error() }
func (e *sessionOpenError) Unwrap() error { return e.err }

// ErrKeeperRunning is ListenKeeper's answer when another keeper already serves the socket.
var ErrKeeperRunning = errors.New("another ssh keeper serves this socket")

// ListenKeeper takes the socket's lock (socket + ".lock") and listens on it, removing a
// socket file a dead keeper left. release closes the listener (removing the socket) and
// drops the lock. ErrKeeperRunning means another keeper holds the lock.
func ListenKeeper(socket string) (ln net.Listener, release func(), err error) {
	lock, err := os.OpenFile(socket+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("ssh keeper lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, ErrKeeperRunning
		}
		return nil, nil, fmt.Errorf("ssh keeper lock %s: %w", socket+".lock", err)
	}
	// Holding the lock, any socket file here is a dead keeper's.
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		lock.Close()
		return nil, nil, fmt.Errorf("remove stale ssh keeper socket: %w", err)
	}
	ln, err = net.Listen("unix", socket)
	if err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("ssh keeper: %w", err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		lock.Close()
		return nil, nil, fmt.Errorf("ssh keeper socket: %w", err)
	}
	return ln, func() { ln.Close(); lock.Close() }, nil
}

// StartKeeper starts cmd (a process that serves socket: `instactl ssh-keeper serve`) in a
// session of its own, hands it cfg as JSON on its stdin, sends its output to socket +
// ".log", and returns once the socket answers. It fails, quoting the log, when the
// process exits first or ctx ends.
func StartKeeper(ctx context.Context, socket string, cfg Config, cmd *exec.Cmd) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	logPath := socket + ".log"
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("ssh keeper log: %w", err)
	}
	defer logf.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(b), logf, logf
	// Its own session: no terminal's hangup or Ctrl-C reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			// A keeper that lost the race to another exits at once; that one answers.
			if c, derr := net.Dial("unix", socket); derr == nil {
				c.Close()
				return nil
			}
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("ssh keeper exited before listening on %s (%v): %s", socket, err, strings.TrimSpace(string(log)))
		case <-ctx.Done():
			return fmt.Errorf("ssh keeper did not listen on %s: %w (its log: %s)", socket, ctx.Err(), logPath)
		case <-tick.C:
		}
	}
}

// ServeKeeper serves keeper sessions on ln with connections from d, until ctx ends, a
// client asks it to stop, or idle has passed with no session running; then it closes
// every connection it holds. Only peers of this process's uid are served.
func ServeKeeper(ctx context.Context, ln net.Listener, d *SSHDialer, idle time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	k := &keeper{pool: NewPool(d), cfg: d.cfg, idle: idle, started: time.Now(), last: time.Now(), stop: cancel,
		sessions: map[string]context.CancelFunc{}, cancelled: map[string]bool{}}
	defer k.pool.Close()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go k.watchIdle(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ssh keeper accept: %w", err)
		}
		if ctx.Err() != nil { // stopping: serve no one new
			conn.Close()
			return nil
		}
		if err := checkPeer(conn); err != nil {
			fmt.Fprintf(os.Stderr, "ssh keeper: refused a peer: %v\n", err)
			conn.Close()
			continue
		}
		k.begin()
		wg.Go(func() {
			defer conn.Close()
			k.serve(ctx, conn)
		})
	}
}

// checkPeer refuses a peer of another uid: the socket's mode already keeps others out;
// this holds even if the directory's mode were changed under us.
func checkPeer(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return credErr
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("pid %d has uid %d, not %d", cred.Pid, cred.Uid, os.Getuid())
	}
	return nil
}

// keeper is ServeKeeper's state.
type keeper struct {
	pool    *Pool
	cfg     Config
	idle    time.Duration
	started time.Time
	stop    func()

	mu        sync.Mutex
	active    int
	last      time.Time
	sessions  map[string]context.CancelFunc // running sessions by id, for opCancel
	cancelled map[string]bool               // cancels that came before their session
}

func (k *keeper) begin() {
	k.mu.Lock()
	k.active++
	k.mu.Unlock()
}

func (k *keeper) end() {
	k.mu.Lock()
	k.active--
	k.last = time.Now()
	k.mu.Unlock()
}

// watchIdle stops the keeper once no session has run for k.idle.
func (k *keeper) watchIdle(ctx context.Context) {
	tick := time.NewTicker(min(max(k.idle/4, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		k.mu.Lock()
		quiet := k.active == 0 && time.Since(k.last) >= k.idle
		k.mu.Unlock()
		if quiet {
			k.stop()
			return
		}
	}
}

func (k *keeper) status() *KeeperStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	return &KeeperStatus{PID: os.Getpid(), Started: k.started, Idle: k.idle, Active: k.active - 1, Hosts: k.pool.Live(), LastUse: k.last,
		User: k.cfg.User, KnownHosts: k.cfg.KnownHostsFile}
}

// serve answers one session and counts it over (k.end) before it sends the result, so a
// client holding its result never sees its session still running in a status.
func (k *keeper) serve(ctx context.Context, conn net.Conn) {
	var once sync.Once
	end := func() { once.Do(k.end) }
	defer end()
	fc := &frameConn{Conn: conn}
	br := bufio.NewReader(conn)
	typ, p, err := readFrame(br)
	if err != nil || typ != frameRequest {
		return
	}
	var req keeperRequest
	if err := json.Unmarshal(p, &req); err != nil {
		fc.sendJSON(frameResult, keeperResult{Err: "ssh keeper: bad request: " + err.Error()}) //nolint:errcheck // the peer is gone or broken
		return
	}
	var res keeperResult
	switch req.Op {
	case opStatus:
		res.Status = k.status()
	case opStop:
		k.stop()
	case opDial:
		c, err := k.pool.Get(ctx, req.Target)
		if err != nil {
			res.Err = err.Error()
		} else {
			res.Addr = c.Addr()
		}
	case opRun:
		res = k.run(ctx, fc, br, req)
	case opCancel:
		k.mu.Lock()
		if cancel := k.sessions[req.Session]; cancel != nil {
			cancel()
		} else {
			k.cancelled[req.Session] = true
		}
		k.mu.Unlock()
	default:
		res.Err = fmt.Sprintf("ssh keeper: unknown operation %q", req.Op)
	}
	end()
	fc.sendJSON(frameResult, res) //nolint:errcheck // the peer is gone: nothing to tell
}

// run runs req's command on the kept connection, relaying stdin from the peer and output
// to it. A cancel for the session (opCancel, on another connection) kills the command as
// a direct session's would be; a client that goes away without cancelling leaves the
// command to finish, as sshd does when a direct client vanishes. A session that could not be opened on a connection that
// turned out dead is tried once more on a new connection: nothing ran, no stdin was read.
func (k *keeper) run(ctx context.Context, fc *frameConn, br *bufio.Reader, req keeperRequest) keeperResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if req.Session != "" {
		k.mu.Lock()
		k.sessions[req.Session] = cancel
		if k.cancelled[req.Session] { // the cancel overtook the request
			delete(k.cancelled, req.Session)
			cancel()
		}
		k.mu.Unlock()
		defer func() {
			k.mu.Lock()
			delete(k.sessions, req.Session)
			k.mu.Unlock()
		}()
	}
	var stdin io.Reader
	var upload *uploadStream
	switch {
	case req.File != nil:
		f, err := os.Open(req.File.Path)
		if err != nil {
			return keeperResult{Err: err.Error()}
		}
		defer f.Close()
		sum := req.File.Sum
		body := newProgressReader(f, req.File.Size, func(n int64) {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(n))
			fc.send(frameProgress, b[:]) //nolint:errcheck // the result tells what mattered
		})
		upload = &uploadStream{body: body, size: req.File.Size, sum: func() string { return sum }}
		stdin = upload
	case req.Stdin:
		stdin = &stdinFrames{br: br}
	}
	ow, ew := frameWriter{c: fc, typ: frameStdout}, frameWriter{c: fc, typ: frameStderr}
	var res Result
	for attempt := 1; ; attempt++ {
		c, err := k.pool.Get(ctx, req.Target)
		if err != nil {
			return keeperResult{Err: err.Error()}
		}
		res, err = c.RunStream(ctx, req.Cmd, stdin, ow, ew)
		var soe *sessionOpenError
		if err != nil && errors.As(err, &soe) && attempt == 1 && ctx.Err() == nil {
			c.fail(fmt.Errorf("connection to %s: %w", req.Target, err))
			continue
		}
		kr := keeperResult{ExitCode: res.ExitCode, Signal: res.Signal, Duration: res.Duration}
		if err != nil {
			kr.Err = err.Error()
		}
		if upload != nil {
			if err := upload.readErr(); err != nil {
				kr.StdinErr = err.Error()
			}
		}
		return kr
	}
}

// stdinFrames is a session's stdin read straight from its frames: no copy in between, so
// an upload through the keeper costs what a local pipe does.
type stdinFrames struct {
	br   *bufio.Reader
	left int   // bytes of the current stdin frame not yet read
	err  error // io.EOF after frameStdinEOF, or why the stream broke
}

func (s *stdinFrames) Read(p []byte) (int, error) {
	for s.left == 0 {
		if s.err != nil {
			return 0, s.err
		}
		typ, n, err := readHeader(s.br)
		switch {
		case err != nil:
			s.err = fmt.Errorf("the client went away: %w", err)
		case typ == frameStdin:
			s.left = n
		case typ == frameStdinEOF:
			s.err = io.EOF
		default:
			s.err = fmt.Errorf("ssh keeper: frame %q in a session's stdin", typ)
		}
	}
	n, err := s.br.Read(p[:min(len(p), s.left)])
	s.left -= n
	if err != nil {
		s.err = fmt.Errorf("the client went away: %w", err)
		return n, s.err
	}
	return n, nil
}

// Live returns the names of the targets whose connections are open, sorted.
func (p *Pool) Live() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	for t, e := range p.entries {
		select {
		case <-e.ready:
			if e.c != nil && e.c.Err() == nil {
				names = append(names, t.String())
			}
		default:
		}
	}
	slices.Sort(names)
	return names
}
