package remote

import (
	"bytes"
	"io"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Cancellation needs the remote process group. sshd makes each session's
// shell a session leader, so its pid is the group id. OpenSSH honours the
// "signal" channel request only for privilege-separated sessions, which root
// logins are not ("session signalling requires privilege separation"), so
// every command is prefixed with a line that reports the shell's pid on
// stderr; when the signal request is refused, a second session on the same
// connection runs kill on the group. The line is removed from stderr.

const pidMarker = "instactl-pid:"

// wireCommand is what is sent to sshd for cmd: the pid report, then cmd.
func wireCommand(cmd Command) string {
	return `printf '` + pidMarker + `%s\n' "$$" >&2; ` + cmd.String()
}

// pidCatcher passes stderr through to w, except the pid report line, which
// it parses. Lines before it (a noisy .bashrc) pass through untouched.
type pidCatcher struct {
	w io.Writer

	mu    sync.Mutex
	found bool
	buf   []byte
	pid   int
}

func (p *pidCatcher) Write(b []byte) (int, error) {
	p.mu.Lock()
	if p.found {
		p.mu.Unlock()
		return p.w.Write(b)
	}
	p.buf = append(p.buf, b...)
	var out []byte
	for !p.found {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			if len(p.buf) > maxPartialLine { // no report coming: give up
				p.found = true
				out = append(out, p.buf...)
				p.buf = nil
			}
			break
		}
		line := p.buf[:i]
		if rest, ok := bytes.CutPrefix(line, []byte(pidMarker)); ok {
			p.pid, _ = strconv.Atoi(string(rest))
			p.found = true
		} else {
			out = append(out, p.buf[:i+1]...)
		}
		p.buf = p.buf[i+1:]
	}
	if p.found {
		out = append(out, p.buf...)
		p.buf = nil
	}
	p.mu.Unlock()
	if len(out) > 0 {
		if _, err := p.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

func (p *pidCatcher) remotePID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// signalSession asks sshd to signal the session's process group and reports
// whether it agreed.
func signalSession(sess *ssh.Session, sig ssh.Signal) bool {
	ok, err := sess.SendRequest("signal", true, ssh.Marshal(struct{ Signal string }{string(sig)}))
	return err == nil && ok
}

// killGroup signals the process group pgid from a separate session.
func (c *Client) killGroup(pgid int, sig ssh.Signal) {
	if pgid <= 1 {
		return
	}
	sess, err := c.ssh.NewSession()
	if err != nil {
		return
	}
	defer sess.Close()
	done := make(chan struct{})
	go func() {
		sess.Run(Quote("kill", "-s", string(sig), "--", "-"+strconv.Itoa(pgid))) //nolint:errcheck // best effort
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}
