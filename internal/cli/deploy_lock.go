package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/errtext"
)

// deployReleasesRun is `instactl releases`.
func deployReleasesRun(ctx context.Context, f *Factory, out Output, o *ReleasesOptions) error {
	env, err := deployLoad(ctx, f, o.Role)
	if err != nil {
		return err
	}
	pool, err := deployPool(ctx, f, o.AcceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	d := &deploy.Deployer{Dialer: pool}
	rels, err := d.Releases(ctx, env.cfg, env.hosts)
	if err != nil {
		return err
	}
	if err := render(f.IO, out, rels, func(w io.Writer) error { return deployRenderReleases(w, rels) }); err != nil {
		return err
	}
	failed := 0
	for _, h := range rels {
		if h.Error != "" {
			failed++
		}
	}
	return deployHostsExit(failed, len(rels), "could not list releases")
}

// deployHostsExit is 0 when no host failed, 5 when some did, 1 when all did.
func deployHostsExit(failed, total int, what string) error {
	switch {
	case failed == 0:
		return nil
	case failed == total:
		return withCode(ExitError, fmt.Errorf("%s on all %d hosts", what, total))
	}
	return withCode(ExitPartial, fmt.Errorf("%s on %d of %d hosts", what, failed, total))
}

func deployRenderReleases(w io.Writer, rels []deploy.HostReleases) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\t \tRELEASE\tSTAGED\tSIZE\tNOTE")
	for _, h := range rels {
		if h.Error != "" {
			fmt.Fprintf(tw, "%s\t \t-\t-\t-\tERROR: %s\n", h.Host, errtext.OneLine(h.Error))
			continue
		}
		if len(h.Releases) == 0 {
			fmt.Fprintf(tw, "%s\t \t-\t-\t-\tnothing deployed\n", h.Host)
		}
		for _, r := range h.Releases {
			mark, note := " ", ""
			if r.Current {
				mark, note = "*", "current"
			}
			if r.Previous {
				note = "previous (rollback target)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", h.Host, mark, r.ID, r.StagedAt.Local().Format("2006-01-02 15:04:05"),
				humanBytes(r.Size), note)
		}
	}
	return tw.Flush()
}

// deployLockState is `instactl lock status -o json`.
type deployLockState struct {
	Held bool             `json:"held"`
	Host string           `json:"host"`
	Info *deploy.LockInfo `json:"info,omitempty"`
	// Stale says why the holder is known to be dead, if it is.
	Stale string `json:"stale,omitempty"`
}

// deployLockStatusRun is `instactl lock status`; it exits 4 when the lock is held.
func deployLockStatusRun(ctx context.Context, f *Factory, out Output, o *LockOptions) error {
	env, d, done, err := deployLockEnv(ctx, f, o.Role)
	if err != nil {
		return err
	}
	defer done()
	info, host, err := d.LockStatus(ctx, env.cfg, env.hosts)
	if err != nil {
		return err
	}
	st := deployLockState{Held: info != nil, Host: host, Info: info}
	if info != nil {
		st.Stale = deploy.HolderGone(*info)
	}
	err = render(f.IO, out, st, func(w io.Writer) error {
		if info == nil {
			_, err := fmt.Fprintf(w, "The deploy lock of %s (on %s) is free.\n", env.st.Name, host)
			return err
		}
		_, err := fmt.Fprintln(w, deployLockedText(&deploy.LockedError{Host: host, Info: *info, Gone: st.Stale}))
		return err
	})
	if err != nil {
		return err
	}
	if info != nil {
		return silentExit{ExitLocked}
	}
	return nil
}

// deployLockReleaseRun is `instactl lock release`.
func deployLockReleaseRun(ctx context.Context, f *Factory, o *LockOptions) error {
	env, d, done, err := deployLockEnv(ctx, f, o.Role)
	if err != nil {
		return err
	}
	defer done()
	if err := d.ReleaseLock(ctx, env.cfg, env.hosts, o.Run, o.Force); err != nil {
		var le *deploy.LockedError
		if errors.As(err, &le) {
			return withCode(ExitLocked, errors.New(deployLockedText(le)))
		}
		return err
	}
	f.IO.Statusf("The deploy lock of %s is released.", env.st.Name)
	return nil
}

// deployLockEnv loads what both lock commands need: the deploy settings and hosts of role,
// and a deployer over an SSH pool that done closes.
func deployLockEnv(ctx context.Context, f *Factory, role string) (*deployEnv, *deploy.Deployer, func(), error) {
	env, err := deployLoad(ctx, f, role)
	if err != nil {
		return nil, nil, nil, err
	}
	pool, err := deployPool(ctx, f, false)
	if err != nil {
		return nil, nil, nil, err
	}
	return env, &deploy.Deployer{Dialer: pool}, func() { pool.Close() }, nil
}
