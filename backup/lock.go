package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/instactl/instactl/remote"
)

// hostLock is a held backup lock: a remote flock process that lives as long as its stdin is
// open. Release closes stdin; a killed instactl closes the connection, which ends it too.
type hostLock struct {
	stdin *io.PipeWriter
	done  chan struct{}
	once  sync.Once
}

// lockWriter watches the lock command's stdout for "acquired".
type lockWriter struct {
	mu       sync.Mutex
	buf      strings.Builder
	acquired chan struct{}
	once     sync.Once
}

func (w *lockWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), "acquired") {
		w.once.Do(func() { close(w.acquired) })
	}
	return len(p), nil
}

// holderText describes this run for whoever finds the lock held.
func holderText(now time.Time) string {
	name, _ := os.Hostname()
	return fmt.Sprintf("instactl pid %d on %s since %s", os.Getpid(), name, now.UTC().Format(time.RFC3339))
}

// acquireLock takes the backup lock of the host c is connected to, waiting up to wait. It
// returns *LockedError when another run holds it.
func acquireLock(ctx context.Context, c *remote.Client, cmds commands, hostName, holder string, wait time.Duration) (*hostLock, error) {
	pr, pw := io.Pipe()
	w := &lockWriter{acquired: make(chan struct{})}
	l := &hostLock{stdin: pw, done: make(chan struct{})}
	type outcome struct {
		res remote.Result
		err error
	}
	resc := make(chan outcome, 1)
	// The session must outlive ctx of this call: it is the lock. It ends on Release or when
	// the connection closes.
	go func() {
		res, err := c.RunStream(context.WithoutCancel(ctx), cmds.lock(holder, wait), pr, w, nil)
		resc <- outcome{res, err}
		close(l.done)
	}()
	select {
	case <-w.acquired:
		return l, nil
	case o := <-resc:
		pw.Close()
		if o.err != nil {
			return nil, fmt.Errorf("take backup lock on %s: %w", hostName, o.err)
		}
		if o.res.ExitCode == lockConflictExit {
			return nil, &LockedError{Host: hostName, Holder: trimOut(o.res)}
		}
		return nil, fmt.Errorf("take backup lock on %s: %w", hostName, o.res.Err())
	case <-ctx.Done():
		pw.Close()
		return nil, fmt.Errorf("take backup lock on %s: %w", hostName, ctx.Err())
	}
}

// Release ends the remote lock process and waits (briefly) for it to exit.
func (l *hostLock) Release() error {
	var err error
	l.once.Do(func() {
		l.stdin.Close()
		select {
		case <-l.done:
		case <-time.After(10 * time.Second):
			err = errors.New("release backup lock: the lock process did not exit within 10s")
		}
	})
	return err
}
