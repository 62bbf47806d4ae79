package remote

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// A keeper is a background process that holds SSH connections open between runs, as
// OpenSSH's ControlPersist does for ssh (and Ansible relies on): the first run pays one
// handshake per host, and every run within the keeper's idle time opens sessions on the
// connections it already has. For an unchanged redeploy that is the difference between
// a handshake and a session per host (several round trips and two processes forked by
// each host's sshd) and one session per host.
//
// The keeper listens on a unix socket in a directory only its user can enter, and serves
// only peers of its own uid (SO_PEERCRED). Every session is one connection to the socket
// carrying frames: the request, then stdin from the client, and stdout, stderr and the
// result from the keeper. The local leg is not encrypted (the socket is private, as
// OpenSSH's control socket is), so an upload through the keeper costs one local copy, not
// a second cipher. Cancelling a session goes on a connection of its own (opCancel with the
// session's id), so it is heard even while the session's stream is full of stdin that the
// command does not read.
//
// One keeper serves one Config: KeeperSocket derives the socket's name from it, so a run
// with other keys, another known_hosts or another user never shares a connection that was
// authenticated or verified under different rules.

// keeperProtocol changes whenever the frames change; it is part of the socket's name, so
// an older keeper is never asked in a newer dialect.
const keeperProtocol = 1

// Frame types. The client sends frameRequest first, then stdin frames ending with
// frameStdinEOF; the keeper answers with output frames and ends with one frameResult.
const (
	frameRequest  byte = 'q'
	frameStdin    byte = 'i'
	frameStdinEOF byte = 'I'
	frameStdout   byte = 'o'
	frameProgress byte = 'p' // 8 bytes: how much of a kept file the keeper has read
	frameStderr   byte = 'e'
	frameResult   byte = 'r'
)

// maxFrame bounds one frame's payload; senders split data into frames of at most
// frameChunk bytes.
const (
	maxFrame   = 1 << 20
	frameChunk = 256 << 10
)

// Keeper operations.
const (
	opDial   = "dial"
	opRun    = "run"
	opStop   = "stop"
	opStatus = "status"
	opCancel = "cancel"
)

// keeperRequest is a session's first frame.
type keeperRequest struct {
	Op     string  `json:"op"`
	Target Target  `json:"target"`
	Cmd    Command `json:"cmd,omitempty"`
	Stdin  bool    `json:"stdin,omitempty"`
	// Session names a run, so that a cancel (on a connection of its own) can find it.
	Session string `json:"session,omitempty"`
	// File, when set, is the run's stdin, read by the keeper itself.
	File *keptFile `json:"file,omitempty"`
}

// keptFile is a run's stdin that the keeper reads from a local file (same machine, same
// uid): Size bytes of Path, then the line Sum, as UploadSum sends them.
type keptFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	Sum  string `json:"sum"`

	readErr string // from the result: reading the file failed
}

// keeperResult is a session's last frame. Err is the full text of a dial or transport
// error (the command's outcome is then unknown, as with a direct connection).
type keeperResult struct {
	Err      string        `json:"err,omitempty"`
	Addr     string        `json:"addr,omitempty"`
	ExitCode int           `json:"exit_code"`
	Signal   string        `json:"signal,omitempty"`
	Duration time.Duration `json:"duration"`
	Status   *KeeperStatus `json:"status,omitempty"`
	// StdinErr says reading a kept file failed (the command saw its stdin end early).
	StdinErr string `json:"stdin_err,omitempty"`
}

// KeeperStatus is what a running keeper reports about itself.
type KeeperStatus struct {
	PID     int           `json:"pid"`
	Started time.Time     `json:"started"`
	Idle    time.Duration `json:"idle"`     // how long it stays after its last session
	Active  int           `json:"active"`   // sessions running now
	Hosts   []string      `json:"hosts"`    // targets it holds a live connection to
	LastUse time.Time     `json:"last_use"` // when the last session ended
	// User and KnownHosts are the settings its connections were made with.
	User       string `json:"user"`
	KnownHosts string `json:"known_hosts"`
}

// frameConn writes frames from several goroutines (stdin, cancel) without interleaving.
type frameConn struct {
	net.Conn
	mu sync.Mutex
}

func (c *frameConn) send(typ byte, p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var h [5]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
	bufs := net.Buffers{h[:], p} // one writev for header and payload
	_, err := bufs.WriteTo(c.Conn)
	return err
}

func (c *frameConn) sendJSON(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.send(typ, b)
}

// frameWriter is an io.Writer that sends what it is given as frames of one type.
type frameWriter struct {
	c   *frameConn
	typ byte
}

func (w frameWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += frameChunk {
		if err := w.c.send(w.typ, p[off:min(off+frameChunk, len(p))]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// readHeader reads a frame's type and payload length.
func readHeader(r *bufio.Reader) (byte, int, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, 0, fmt.Errorf("keeper frame of %d bytes is over the %d-byte bound", n, maxFrame)
	}
	return h[0], int(n), nil
}

func readFrame(r *bufio.Reader) (byte, []byte, error) {
	typ, n, err := readHeader(r)
	if err != nil {
		return 0, nil, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, fmt.Errorf("read keeper frame: %w", err)
	}
	return typ, p, nil
}

// KeeperSocket returns the unix socket of the keeper for cfg, creating its private
// directory ($XDG_RUNTIME_DIR/instactl-keeper, else instactl-keeper-UID in the temporary
// directory) when missing. The name is a hash of cfg, of the contents of its known_hosts
// and ssh config files, of the agent socket when cfg uses the agent, and of exe (the
// binary that will serve it), so only runs that would connect the same way share a
// keeper: a host key removed from known_hosts, or changed, is never trusted through a
// connection verified before.
func KeeperSocket(cfg Config, exe string) (string, error) {
	dir, err := KeeperDir()
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return "", fmt.Errorf("ssh keeper: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "instactl keeper %d\x00%s\x00%s\x00", keeperProtocol, b, exe)
	for _, f := range []string{cfg.KnownHostsFile, cfg.SSHConfigFile} {
		if b, err := os.ReadFile(f); err == nil {
			h.Write(b)
		}
		h.Write([]byte{0})
	}
	if cfg.UseAgent {
		io.WriteString(h, os.Getenv("SSH_AUTH_SOCK")) //nolint:errcheck // hash.Hash never fails
	}
	return filepath.Join(dir, hex.EncodeToString(h.Sum(nil))[:24]+".sock"), nil
}

// KeeperDir returns the directory of this user's keeper sockets, created with mode 0700
// when missing. An existing directory that another user owns, or that others can enter,
// is refused: its sockets would not be private.
func KeeperDir() (string, error) {
	uid := os.Getuid()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("instactl-keeper-%d", uid))
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		dir = filepath.Join(x, "instactl-keeper")
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("ssh keeper directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("ssh keeper directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != uid || fi.Mode().Perm() != 0o700 {
		return "", fmt.Errorf("ssh keeper directory %s is not a directory of uid %d with mode 0700 (it is %s): remove it, or run with ssh_persist: 0s in the stack's deploy section", dir, uid, fi.Mode())
	}
	return dir, nil
}

// KeeperDialer is a Dialer whose connections live in a keeper process (see
// [ServeKeeper]): Dial asks the keeper for a connection to the target (it dials one if it
// holds none), and the Client it returns runs every session through the keeper. Wrap it
// in a Pool like any Dialer.
type KeeperDialer struct {
	// Socket is the keeper's unix socket (see KeeperSocket).
	Socket string
	// Start starts a keeper listening on Socket and returns once it answers (see
	// StartKeeper). Called when no keeper answers; nil means never start one.
	Start func(ctx context.Context) error
	// MaxOutputBytes bounds the stdout and stderr kept in a Result, each. Default 4 MiB.
	MaxOutputBytes int

	startMu sync.Mutex
	started bool
}

var _ Dialer = (*KeeperDialer)(nil)

// Ensure connects to the keeper, starting it if none answers, and reports whether that
// worked: call it once before a run to fall back to direct connections in good time.
func (k *KeeperDialer) Ensure(ctx context.Context) error {
	conn, err := k.connect(ctx)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Dial returns a client whose sessions run on the keeper's connection to t, after the
// keeper has connected to t (or found its connection alive). A dial error is the
// keeper's, in full.
func (k *KeeperDialer) Dial(ctx context.Context, t Target) (*Client, error) {
	res, err := k.call(ctx, keeperRequest{Op: opDial, Target: t})
	if err != nil {
		return nil, fmt.Errorf("dial %s through the ssh keeper: %w", t, err)
	}
	if res.Err != "" {
		return nil, errors.New(res.Err)
	}
	maxOut := k.MaxOutputBytes
	if maxOut <= 0 {
		maxOut = defaultMaxOutput
	}
	return &Client{target: t, addr: res.Addr, keeper: k, maxOutput: maxOut, done: make(chan struct{})}, nil
}

// Status asks the running keeper about itself. It never starts one.
func (k *KeeperDialer) Status(ctx context.Context) (KeeperStatus, error) {
	res, err := k.callNoStart(ctx, keeperRequest{Op: opStatus})
	if err != nil {
		return KeeperStatus{}, err
	}
	if res.Status == nil {
		return KeeperStatus{}, fmt.Errorf("ssh keeper at %s sent no status", k.Socket)
	}
	return *res.Status, nil
}

// Stop asks the running keeper to close every connection and exit, and returns once its
// socket no longer answers (at most 10 s); sessions running through it end with a
// transport error. It never starts one; a keeper not running is not an error.
func (k *KeeperDialer) Stop(ctx context.Context) error {
	_, err := k.callNoStart(ctx, keeperRequest{Op: opStop})
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", k.Socket)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("ssh keeper at %s still answers after it was asked to stop", k.Socket)
			}
			return nil
		}
		c.Close()
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (k *KeeperDialer) call(ctx context.Context, req keeperRequest) (keeperResult, error) {
	conn, err := k.connect(ctx)
	if err != nil {
		return keeperResult{}, err
	}
	return roundTrip(ctx, conn, req)
}

func (k *KeeperDialer) callNoStart(ctx context.Context, req keeperRequest) (keeperResult, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", k.Socket)
	if err != nil {
		return keeperResult{}, err
	}
	return roundTrip(ctx, conn, req)
}

// roundTrip sends req on conn and reads the one result frame, closing conn.
func roundTrip(ctx context.Context, conn net.Conn, req keeperRequest) (keeperResult, error) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	fc := &frameConn{Conn: conn}
	if err := fc.sendJSON(frameRequest, req); err != nil {
		return keeperResult{}, fmt.Errorf("send to the ssh keeper: %w", err)
	}
	br := bufio.NewReader(conn)
	for {
		typ, p, err := readFrame(br)
		if err != nil {
			if ctx.Err() != nil {
				return keeperResult{}, ctx.Err()
			}
			return keeperResult{}, fmt.Errorf("read from the ssh keeper: %w", err)
		}
		if typ != frameResult {
			continue
		}
		var res keeperResult
		if err := json.Unmarshal(p, &res); err != nil {
			return keeperResult{}, fmt.Errorf("ssh keeper result: %w", err)
		}
		return res, nil
	}
}

// connect opens a session to the keeper, starting the keeper once if none answers.
func (k *KeeperDialer) connect(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", k.Socket)
	if err == nil || k.Start == nil {
		return conn, err
	}
	k.startMu.Lock()
	defer k.startMu.Unlock()
	if conn, err := d.DialContext(ctx, "unix", k.Socket); err == nil {
		return conn, nil
	}
	if k.started {
		return nil, fmt.Errorf("ssh keeper at %s stopped answering: %w", k.Socket, err)
	}
	k.started = true
	if err := k.Start(ctx); err != nil {
		return nil, fmt.Errorf("start the ssh keeper: %w", err)
	}
	return d.DialContext(ctx, "unix", k.Socket)
}

// onlyReader hides a reader's WriterTo, so io.CopyBuffer uses the buffer it is given and
// the frames are that large.
type onlyReader struct{ io.Reader }

// newSessionID returns a random name for a kept session.
func newSessionID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// runKept is RunStream for a client whose connection the keeper holds: the same
// results, errors and cancellation (the keeper kills the command) as a direct session.
// With file, the keeper reads the command's stdin from that local file, reporting how much
// it has read to progress.
func (c *Client) runKept(ctx context.Context, cmd Command, stdin io.Reader, file *keptFile, progress func(int64), stdout, stderr io.Writer) (Result, error) {
	res := Result{Target: c.target, Cmd: cmd}
	conn, err := c.keeper.connect(ctx)
	if err != nil {
		return res, fmt.Errorf("open session for %s on %s: ssh keeper: %w", shorten(cmd.String(), 80), c.target, err)
	}
	defer conn.Close()
	fc := &frameConn{Conn: conn}
	session := newSessionID()
	if err := fc.sendJSON(frameRequest, keeperRequest{Op: opRun, Target: c.target, Cmd: cmd, Stdin: stdin != nil, Session: session, File: file}); err != nil {
		return res, fmt.Errorf("open session for %s on %s: ssh keeper: %w", shorten(cmd.String(), 80), c.target, err)
	}
	if stdin != nil {
		// Not waited for, as with a direct session: a command may exit without reading
		// all of stdin; closing conn ends this copy.
		go func() {
			buf := make([]byte, frameChunk)
			if _, err := io.CopyBuffer(frameWriter{c: fc, typ: frameStdin}, onlyReader{stdin}, buf); err == nil {
				fc.send(frameStdinEOF, nil) //nolint:errcheck // the result tells what mattered
			}
		}()
	}
	// The keeper kills the command and still sends the result, read below.
	stop := context.AfterFunc(ctx, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.keeper.callNoStart(cctx, keeperRequest{Op: opCancel, Session: session}) //nolint:errcheck // a dead keeper fails the read below
	})
	defer stop()
	outBuf, errBuf := &capBuffer{max: c.maxOutput}, &capBuffer{max: c.maxOutput}
	ow, ew := tee(outBuf, stdout), tee(errBuf, stderr)
	br := bufio.NewReader(conn)
	for {
		typ, p, err := readFrame(br)
		if err != nil {
			res.Stdout, res.StdoutTruncated = outBuf.result()
			res.Stderr, res.StderrTruncated = errBuf.result()
			return res, fmt.Errorf("run %s on %s (outcome unknown): the ssh keeper's session ended: %w", shorten(cmd.String(), 80), c.target, err)
		}
		switch typ {
		case frameStdout:
			ow.Write(p) //nolint:errcheck // as a direct session, a failing writer does not stop the command
		case frameStderr:
			ew.Write(p) //nolint:errcheck // as above
		case frameProgress:
			if progress != nil && len(p) == 8 {
				progress(int64(binary.BigEndian.Uint64(p)))
			}
		case frameResult:
			var kr keeperResult
			if err := json.Unmarshal(p, &kr); err != nil {
				return res, fmt.Errorf("run %s on %s (outcome unknown): ssh keeper result: %w", shorten(cmd.String(), 80), c.target, err)
			}
			res.Duration, res.ExitCode, res.Signal = kr.Duration, kr.ExitCode, kr.Signal
			if file != nil {
				file.readErr = kr.StdinErr
			}
			res.Stdout, res.StdoutTruncated = outBuf.result()
			res.Stderr, res.StderrTruncated = errBuf.result()
			switch {
			case kr.Err == "":
				return res, nil
			case ctx.Err() != nil:
				return res, fmt.Errorf("run %s on %s: cancelled, command killed: %w", shorten(cmd.String(), 80), c.target, ctx.Err())
			}
			return res, errors.New(kr.Err)
		}
	}
}
