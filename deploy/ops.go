package deploy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/remote"
)

// Release is one release staged on a host.
type Release struct {
	ID       string    `json:"id"`
	StagedAt time.Time `json:"staged_at"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256"`
	Current  bool      `json:"current,omitempty"`
	// Previous marks the release a rollback would switch to.
	Previous bool `json:"previous,omitempty"`
}

// HostReleases is the releases of one host, newest first.
type HostReleases struct {
	Host     string    `json:"host"`
	Current  string    `json:"current"`
	Previous string    `json:"previous"`
	Releases []Release `json:"releases"`
	Error    string    `json:"error,omitempty"`
}

// Releases lists the releases on every host in parallel. A host that cannot be reached has
// Error set; the error return is for what stops the whole listing.
func (d *Deployer) Releases(ctx context.Context, cfg Config, hosts []Host) ([]HostReleases, error) {
	cfg = cfg.withDefaults()
	out := make([]HostReleases, len(hosts))
	cmd := ReleasesCommand(cfg.Path, cfg.Binary)
	err := d.each(ctx, cfg, hosts, func(ctx context.Context, c *remote.Client, i int) error {
		res, err := runOK(ctx, c, cmd)
		if err != nil {
			return err
		}
		out[i] = parseReleases(res)
		return nil
	}, func(i int, err error) { out[i].Error = ErrorLine(err) })
	for i, h := range hosts {
		out[i].Host = h.Name
	}
	return out, err
}

// parseReleases reads ReleasesCommand's output.
func parseReleases(out []byte) HostReleases {
	var hr HostReleases
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 1 && f[0] == "current":
			hr.Current = field(f, 1)
		case len(f) >= 1 && f[0] == "previous":
			hr.Previous = field(f, 1)
		case len(f) == 5 && f[0] == "release":
			unix, _ := strconv.ParseInt(f[2], 10, 64)
			size, _ := strconv.ParseInt(f[3], 10, 64)
			hr.Releases = append(hr.Releases, Release{ID: f[1], StagedAt: time.Unix(unix, 0).UTC(), Size: size, SHA256: f[4]})
		}
	}
	for i := range hr.Releases {
		hr.Releases[i].Current = hr.Releases[i].ID == hr.Current
		hr.Releases[i].Previous = hr.Releases[i].ID == hr.Previous
	}
	return hr
}

func field(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}

// LockStatus returns the holder of the stack-wide lock, or nil when it is free.
func (d *Deployer) LockStatus(ctx context.Context, cfg Config, hosts []Host) (*LockInfo, string, error) {
	cfg = cfg.withDefaults()
	if len(hosts) == 0 {
		return nil, "", fmt.Errorf("lock status: no hosts in role %q", cfg.Role)
	}
	lh, err := lockHostOf(lockHost(cfg, hosts), hosts)
	if err != nil {
		return nil, "", err
	}
	var info *LockInfo
	err = d.onHost(ctx, lh, func(ctx context.Context, c *remote.Client) error {
		out, err := runOK(ctx, c, LockStatusCommand(cfg.Path))
		if err != nil {
			return err
		}
		if state, held := parseLockReply(out); state == "held" {
			info = &held
		}
		return nil
	})
	if err != nil {
		return nil, lh.Name, fmt.Errorf("lock status on %s: %w", lh.Name, err)
	}
	return info, lh.Name, nil
}

// ReleaseLock drops the stack-wide lock. Without force it only drops a lock held by runID;
// with force it drops whoever holds it (for a run that died), which the operator must
// confirm first.
func (d *Deployer) ReleaseLock(ctx context.Context, cfg Config, hosts []Host, runID string, force bool) error {
	cfg = cfg.withDefaults()
	if len(hosts) == 0 {
		return fmt.Errorf("release lock: no hosts in role %q", cfg.Role)
	}
	if !force && runID == "" {
		return fmt.Errorf("release lock: name the run that holds it, or force")
	}
	if force {
		runID = ""
	}
	lh, err := lockHostOf(lockHost(cfg, hosts), hosts)
	if err != nil {
		return err
	}
	return d.onHost(ctx, lh, func(ctx context.Context, c *remote.Client) error {
		return releaseLock(ctx, c, cfg.Path, runID)
	})
}

// each runs fn on every host in parallel over one-off connections; onErr records a host's
// failure. The returned error is only ctx's.
func (d *Deployer) each(ctx context.Context, cfg Config, hosts []Host, fn func(ctx context.Context, c *remote.Client, i int) error, onErr func(i int, err error)) error {
	pool, done := d.pool()
	defer done()
	targets := make([]remote.Target, len(hosts))
	index := map[remote.Target]int{}
	for i, h := range hosts {
		targets[i] = h.Target()
		index[targets[i]] = i
	}
	res := pool.FanOut(ctx, targets, cfg.Parallel, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		return fn(ctx, c, index[t])
	})
	for i, r := range res {
		if r.Err != nil {
			onErr(i, r.Err)
		}
	}
	return ctx.Err()
}

// onHost runs fn on one host over a fresh connection.
func (d *Deployer) onHost(ctx context.Context, h Host, fn func(ctx context.Context, c *remote.Client) error) error {
	pool, done := d.pool()
	defer done()
	c, err := pool.Get(ctx, h.Target())
	if err != nil {
		return err
	}
	return fn(ctx, c)
}

// pool returns the connection pool for one operation and what to call when it is over: the
// Dialer itself when it is already a pool (its owner closes it), else a new pool over it.
func (d *Deployer) pool() (*remote.Pool, func()) {
	if p, ok := d.Dialer.(*remote.Pool); ok {
		return p, func() {}
	}
	p := remote.NewPool(d.Dialer)
	return p, func() { p.Close() }
}
