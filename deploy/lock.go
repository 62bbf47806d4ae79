package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/remote"
)

// LockInfo is who holds the stack-wide deploy lock.
//
// The lock is a directory, <path>/.instactl/lock, created with mkdir(2) on the lock host (the
// first host of the deploy role by name, or Config.LockHost), with info.json beside it.
// mkdir is atomic on every file system, needs nothing but SSH (which every operator already
// has), and lives where every operator's deploy must go anyway; a local lock file would only
// stop deploys from the same laptop. The price: the lock host must be reachable to deploy,
// and a host rebuilt from scratch forgets the lock.
type LockInfo struct {
	Holder string `json:"holder"`
	// Hostname and PID name the instactl process that holds the lock, so that a run on the
	// same machine can tell a lock whose holder was killed (see [HolderGone]).
	Hostname string    `json:"hostname,omitempty"`
	PID      int       `json:"pid,omitempty"`
	Time     time.Time `json:"time"`
	Kind     Kind      `json:"kind"`
	Release  string    `json:"release"`
	Message  string    `json:"message,omitempty"`
	RunID    string    `json:"run_id"`
	Stack    string    `json:"stack"`
}

// parseLockReply reads "acquired", "released", "free", or "held" + info.json.
func parseLockReply(out []byte) (state string, info LockInfo) {
	s := strings.TrimSpace(string(out))
	state, rest, _ := strings.Cut(s, "\n")
	if state == "held" {
		if err := json.Unmarshal([]byte(strings.TrimSpace(rest)), &info); err != nil {
			info.Holder = "unknown (info.json missing or damaged: the lock is being taken, or a run died while taking it)"
		}
	}
	return strings.TrimSpace(state), info
}

// HolderGone says why the holder of a lock is known to be dead, or "" when it may be alive.
// It knows only about holders on this machine (same host name): their process id is gone, or
// now belongs to a process started after the lock was taken (the id was reused). A holder on
// another machine, or one that recorded no process id, is assumed alive.
func HolderGone(i LockInfo) string {
	host, err := os.Hostname()
	if err != nil || i.PID <= 0 || i.Hostname != host {
		return ""
	}
	if err := syscall.Kill(i.PID, 0); errors.Is(err, syscall.ESRCH) {
		return fmt.Sprintf("its process %d on %s is gone", i.PID, host)
	}
	if start, ok := processStart(i.PID); ok && !i.Time.IsZero() && start.After(i.Time.Add(2*time.Second)) {
		return fmt.Sprintf("its process %d on %s is gone (the id now belongs to a process started at %s)",
			i.PID, host, start.Format(time.RFC3339))
	}
	return ""
}

// processStart reads when process pid started, from /proc (Linux).
func processStart(pid int) (time.Time, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return time.Time{}, false
	}
	// "pid (comm) state ppid ...": comm may hold spaces, so count fields after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return time.Time{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return time.Time{}, false
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64) // field 22, starttime, in clock ticks since boot
	if err != nil {
		return time.Time{}, false
	}
	st, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			const clockTicks = 100 // USER_HZ: 100 on every Linux architecture Go supports
			return time.Unix(boot, 0).Add(time.Duration(ticks) * time.Second / clockTicks), true
		}
	}
	return time.Time{}, false
}

// lockHostOf returns the Host named by plan.LockHost.
func lockHostOf(lockName string, hosts []Host) (Host, error) {
	for _, h := range hosts {
		if h.Name == lockName {
			return h, nil
		}
	}
	return Host{}, fmt.Errorf("lock host %s is not one of the deploy hosts", lockName)
}

// acquireLock takes the lock for the run, or returns *LockedError. A lock held by the same
// run id (an interrupted run being resumed) is taken over.
func acquireLock(ctx context.Context, c *remote.Client, root string, info LockInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("encode lock info: %w", err)
	}
	out, err := runOK(ctx, c, LockCommand(root, b))
	if err != nil {
		return fmt.Errorf("take deploy lock: %w", err)
	}
	state, held := parseLockReply(out)
	switch {
	case state == "acquired":
		return nil
	case state == "held" && held.RunID == info.RunID:
		// A resumed run takes its own lock over, and records its own process as the holder.
		if _, err := runOK(ctx, c, LockRewriteCommand(root, b)); err != nil {
			return fmt.Errorf("take over deploy lock: %w", err)
		}
		return nil
	case state == "held":
		return &LockedError{Host: c.Target().String(), Info: held, Gone: HolderGone(held)}
	}
	return fmt.Errorf("take deploy lock on %s: unexpected reply %q", c.Target(), errtext.OneLine(string(out)))
}

// releaseLock drops the lock if runID holds it (any holder when runID is "").
func releaseLock(ctx context.Context, c *remote.Client, root, runID string) error {
	out, err := runOK(ctx, c, UnlockCommand(root, runID))
	if err != nil {
		return fmt.Errorf("release deploy lock: %w", err)
	}
	state, held := parseLockReply(out)
	if state == "held" {
		return &LockedError{Host: c.Target().String(), Info: held, Gone: HolderGone(held)}
	}
	return nil
}

// runOK runs cmd and turns a non-zero exit into an error naming the host.
func runOK(ctx context.Context, c *remote.Client, cmd remote.Command) ([]byte, error) {
	countSent(ctx, cmdBytes(cmd))
	res, err := c.Run(ctx, cmd, nil)
	if err != nil {
		return nil, err
	}
	if err := res.Err(); err != nil {
		return res.Stdout, err
	}
	return res.Stdout, nil
}
