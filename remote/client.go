package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/instactl/instactl/errtext"
)

// Client is an open, authenticated connection to one host. Every step of a
// job runs as its own session over this one connection. It is safe for
// concurrent use.
type Client struct {
	target    Target
	addr      string
	ssh       *ssh.Client
	jumps     []*ssh.Client
	keeper    *KeeperDialer // set when the keeper holds the connection; ssh is nil then
	maxOutput int

	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	reason    error // why the connection ended, if not by Close
	closing   bool  // Close was called by the owner
}

func newClient(t Target, addr string, sc *ssh.Client, jumps []*ssh.Client, cfg Config) *Client {
	c := &Client{target: t, addr: addr, ssh: sc, jumps: jumps, maxOutput: cfg.MaxOutputBytes, done: make(chan struct{})}
	go func() {
		err := sc.Wait()
		c.fail(fmt.Errorf("connection to %s closed: %w", t, err))
	}()
	if cfg.KeepAliveInterval > 0 {
		go c.keepalive(cfg.KeepAliveInterval)
	}
	return c
}

// Target is the host this client is connected to.
func (c *Client) Target() Target { return c.target }

// Addr is the host:port dialled (the last hop for ProxyJump).
func (c *Client) Addr() string { return c.addr }

// SSH exposes the underlying connection for what this package does not wrap
// (port forwarding, SFTP). It is nil for a client of a KeeperDialer.
func (c *Client) SSH() *ssh.Client { return c.ssh }

// Done is closed when the connection has ended, by Close, by the host, or by
// an unanswered keepalive.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is open or after a
// plain Close.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

// Close closes the connection and the jump host connections under it.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.reason == nil {
		c.closing = true
	}
	c.mu.Unlock()
	var err error
	c.closeOnce.Do(func() {
		if c.ssh != nil { // nil when the keeper holds the connection: it stays open there
			err = c.ssh.Close()
		}
		closeAll(c.jumps)
		close(c.done)
	})
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

// fail records why the connection is unusable and closes it.
func (c *Client) fail(reason error) {
	c.mu.Lock()
	if !c.closing && c.reason == nil {
		c.reason = reason
	}
	c.mu.Unlock()
	c.Close()
}

// keepalive sends keepalive@openssh.com every interval and closes the
// connection when one goes unanswered for another interval, so a dead host
// fails the step in progress instead of hanging it.
func (c *Client) keepalive(interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-tick.C:
		}
		reply := make(chan error, 1)
		go func() {
			_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		timer := time.NewTimer(interval)
		select {
		case err := <-reply:
			timer.Stop()
			if err != nil {
				c.fail(fmt.Errorf("keepalive to %s: %w", c.target, err))
				return
			}
		case <-timer.C:
			c.fail(fmt.Errorf("keepalive to %s: no answer within %v, connection closed", c.target, interval))
			return
		case <-c.done:
			timer.Stop()
			return
		}
	}
}

// Result is the outcome of a command that ran to completion. A non-zero
// ExitCode is a normal Result, not an error; see [Result.Err].
type Result struct {
	Target   Target
	Cmd      Command
	ExitCode int
	// Signal names the signal that killed the command ("KILL"), if any;
	// ExitCode is then 128 + its number.
	Signal string
	// Stdout and Stderr hold at most Config.MaxOutputBytes each, from the
	// start of the stream; the Truncated flags say whether more was dropped.
	Stdout, Stderr                   []byte
	StdoutTruncated, StderrTruncated bool
	Duration                         time.Duration
}

// Err returns nil for exit status 0, and an *ExitError otherwise.
func (r Result) Err() error {
	if r.ExitCode == 0 {
		return nil
	}
	return &ExitError{Target: r.Target, Cmd: r.Cmd, ExitCode: r.ExitCode, Signal: r.Signal, Stderr: r.Stderr,
		StderrTruncated: r.StderrTruncated}
}

// ExitError is a command that ran and exited with a non-zero status.
type ExitError struct {
	Target   Target
	Cmd      Command
	ExitCode int
	Signal   string
	Stderr   []byte
	// StderrTruncated says Stderr holds only the start of what the command wrote (see
	// Config.MaxOutputBytes); the message says so rather than pass the head off as all of it.
	StderrTruncated bool
}

// Error names the host, the command, the status and what the command wrote to stderr. The
// command line is decoration and is shortened; stderr is the cause and is kept whole (it is
// already bounded by Config.MaxOutputBytes), indented on its own lines when it has several.
func (e *ExitError) Error() string {
	how := fmt.Sprintf("exited %d", e.ExitCode)
	if e.Signal != "" {
		how = "killed by SIG" + e.Signal
	}
	msg := errtext.Cause(fmt.Sprintf("%s: %s %s", e.Target, shorten(e.Cmd.String(), 120), how), string(e.Stderr))
	if e.StderrTruncated {
		msg += fmt.Sprintf("\n    (stderr cut after its first %d bytes: the rest is on the host only)", len(e.Stderr))
	}
	return msg
}

// Run runs cmd on the host with stdin (nil for none) and waits for it. The
// error is non-nil only when the command's outcome is unknown: the session
// could not be opened, the connection died, or ctx ended, in which case the
// command is sent SIGTERM, then SIGKILL, and the session is closed.
func (c *Client) Run(ctx context.Context, cmd Command, stdin io.Reader) (Result, error) {
	return c.RunStream(ctx, cmd, stdin, nil, nil)
}

// RunStream is Run that also copies the command's output, as it arrives, to
// stdout and stderr when they are not nil (for live, host-prefixed output).
func (c *Client) RunStream(ctx context.Context, cmd Command, stdin io.Reader, stdout, stderr io.Writer) (Result, error) {
	res := Result{Target: c.target, Cmd: cmd}
	if len(cmd) == 0 {
		return res, fmt.Errorf("run on %s: empty command", c.target)
	}
	if c.keeper != nil {
		return c.runKept(ctx, cmd, stdin, nil, nil, stdout, stderr)
	}
	start := time.Now()
	sess, err := c.ssh.NewSession()
	if err != nil {
		return res, c.transportErr("open session for "+shorten(cmd.String(), 80), &sessionOpenError{err})
	}
	defer sess.Close()
	outBuf, errBuf := &capBuffer{max: c.maxOutput}, &capBuffer{max: c.maxOutput}
	pids := &pidCatcher{w: tee(errBuf, stderr)}
	sess.Stdout, sess.Stderr = tee(outBuf, stdout), pids
	if stdin != nil {
		w, err := sess.StdinPipe()
		if err != nil {
			return res, c.transportErr("stdin pipe", err)
		}
		// Not waited for: a command may exit without reading all of stdin.
		go func() {
			io.Copy(w, stdin) //nolint:errcheck // the exit status tells what mattered
			w.Close()
		}()
	}
	if err := sess.Start(wireCommand(cmd)); err != nil {
		return res, c.transportErr("start "+shorten(cmd.String(), 80), err)
	}
	err = c.waitOrKill(ctx, sess, pids)
	res.Duration = time.Since(start)
	res.Stdout, res.StdoutTruncated = outBuf.result()
	res.Stderr, res.StderrTruncated = errBuf.result()
	var exitErr *ssh.ExitError
	switch {
	case err == nil:
		return res, nil
	case ctx.Err() != nil:
		return res, fmt.Errorf("run %s on %s: cancelled, command killed: %w", shorten(cmd.String(), 80), c.target, ctx.Err())
	case errors.As(err, &exitErr):
		res.ExitCode, res.Signal = exitErr.ExitStatus(), exitErr.Signal()
		return res, nil
	}
	return res, c.transportErr("run "+shorten(cmd.String(), 80)+" (outcome unknown)", err)
}

// waitOrKill waits for the session; if ctx ends first it signals the
// command's process group (TERM, then KILL after a grace period) and closes
// the session.
func (c *Client) waitOrKill(ctx context.Context, sess *ssh.Session, pids *pidCatcher) error {
	waitc := make(chan error, 1)
	go func() { waitc <- sess.Wait() }()
	select {
	case err := <-waitc:
		return err
	case <-ctx.Done():
	}
	for _, sig := range []ssh.Signal{ssh.SIGTERM, ssh.SIGKILL} {
		if !signalSession(sess, sig) {
			c.killGroup(pids.remotePID(), sig)
		}
		select {
		case err := <-waitc:
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
	sess.Close()
	select {
	case err := <-waitc:
		return err
	case <-time.After(2 * time.Second):
		return ctx.Err()
	}
}

// transportErr wraps a failure of the connection itself, naming the host and
// why the connection ended if known.
func (c *Client) transportErr(what string, err error) error {
	if reason := c.Err(); reason != nil {
		return fmt.Errorf("%s on %s: %w (%v)", what, c.target, err, reason)
	}
	return fmt.Errorf("%s on %s: %w", what, c.target, err)
}

// capBuffer keeps the first max bytes written and counts the rest.
type capBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped bool
}

func (b *capBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room < len(p) {
		b.buf.Write(p[:max(room, 0)])
		b.dropped = true
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

func (b *capBuffer) result() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes()), b.dropped
}

func tee(buf io.Writer, w io.Writer) io.Writer {
	if w == nil {
		return buf
	}
	return io.MultiWriter(buf, w)
}

// shorten cuts decoration (a command line quoted in a message) to n bytes; never use it on
// a cause.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
