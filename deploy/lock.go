package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/instactl/instactl/internal/errtext"
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
	Holder  string    `json:"holder"`
	Time    time.Time `json:"time"`
	Kind    Kind      `json:"kind"`
	Release string    `json:"release"`
	Message string    `json:"message,omitempty"`
	RunID   string    `json:"run_id"`
	Stack   string    `json:"stack"`
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
		return nil
	case state == "held":
		return &LockedError{Host: c.Target().String(), Info: held}
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
		return &LockedError{Host: c.Target().String(), Info: held}
	}
	return nil
}

// runOK runs cmd and turns a non-zero exit into an error naming the host.
func runOK(ctx context.Context, c *remote.Client, cmd remote.Command) ([]byte, error) {
	res, err := c.Run(ctx, cmd, nil)
	if err != nil {
		return nil, err
	}
	if err := res.Err(); err != nil {
		return res.Stdout, err
	}
	return res.Stdout, nil
}
