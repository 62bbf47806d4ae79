package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/topology"
)

// RejoinOptions name the former primary that becomes a standby.
type RejoinOptions struct {
	Deps
	Group string
	// Host is the member to rejoin; it must not be the group's primary.
	Host string
	// Stream bounds the wait until it streams (default 60 s).
	Stream time.Duration
}

// Rejoin makes opts.Host, a former primary of opts.Group, a streaming standby of the primary
// the topology records now. When its WAL forked from the primary's timeline (it wrote past the
// promotion point, or crashed so its end of WAL is unknown) pg_rewind runs first; when
// pg_rewind fails the error wraps ErrRebuildNeeded: the host must be restored from the newest
// snapshot set (`instactl backup restore`).
func Rejoin(ctx context.Context, opts RejoinOptions) (Report, error) {
	lk, err := acquire(opts.JournalDir, opts.Group)
	if err != nil {
		return Report{}, err
	}
	defer lk.release()
	if err := checkFree(opts.JournalDir, opts.Group); err != nil {
		return Report{}, err
	}
	g, err := opts.loadGroup(ctx, opts.Group)
	if err != nil {
		return Report{}, err
	}
	m, ok := g.Member(opts.Host)
	if !ok {
		return Report{}, fmt.Errorf("%w: %s is not a member of %s (members: %s)", ErrBadInput, opts.Host, g.Name, hosts(g.Members))
	}
	if m.Host == g.Primary {
		return Report{}, fmt.Errorf("%w: %s is the primary of %s (epoch %d): there is nothing to rejoin", ErrBadInput, m.Host, g.Name, g.Epoch)
	}
	primary, err := g.PrimaryMember()
	if err != nil {
		return Report{}, err
	}
	if opts.Server == nil {
		return Report{}, fmt.Errorf("%w: no Server", ErrBadInput)
	}
	srv, err := opts.Server(m)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Op: OpRejoin, Group: g.Name, OldPrimary: m.Host, NewPrimary: primary.Host, OldEpoch: g.Epoch, NewEpoch: g.Epoch}
	start := time.Now()
	rep.Rewound, err = rejoinMember(ctx, opts.Deps, srv, m, primary, defaultDuration(opts.Stream, 60*time.Second))
	res := StepResult{Name: StepRejoin, Duration: time.Since(start)}
	if err != nil {
		res.Err = err.Error()
	}
	rep.Steps = append(rep.Steps, res)
	return rep, err
}

// rejoinMember makes m a streaming standby of primary and reports whether it rewound it.
func rejoinMember(ctx context.Context, d Deps, srv Server, m, primary topology.Member, stream time.Duration) (bool, error) {
	if err := srv.Stop(ctx); err != nil {
		return false, err
	}
	cd, err := srv.ControlData(ctx)
	if err != nil {
		return false, err
	}
	need, why, err := needsRewind(ctx, d, cd, primary)
	if err != nil {
		return false, err
	}
	rewound := false
	if need {
		d.logf("rejoin %s: pg_rewind from %s: %s", m.Host, primary.Host, why)
		if err := rewind(ctx, d, srv, m, primary); err != nil {
			return false, err
		}
		rewound = true
	}
	err = follow(ctx, d, srv, m, primary, stream)
	if err == nil || rewound {
		return rewound, err
	}
	// It did not stream although the history said it could: rewind and try once more.
	d.logf("rejoin %s: not streaming (%v): pg_rewind from %s", m.Host, err, primary.Host)
	if err := srv.Stop(ctx); err != nil {
		return false, err
	}
	if err := rewind(ctx, d, srv, m, primary); err != nil {
		return false, err
	}
	return true, follow(ctx, d, srv, m, primary, stream)
}

func rewind(ctx context.Context, d Deps, srv Server, m, primary topology.Member) error {
	// pg_rewind reads the source's timeline from its control file, which a freshly promoted
	// server updates only at its first checkpoint: without one it sees "the same timeline"
	// and rewinds nothing.
	err := d.query(ctx, primary, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "CHECKPOINT")
		return err
	})
	if err != nil {
		return fmt.Errorf("checkpoint on %s before pg_rewind: %w", primary.Host, err)
	}
	if err := srv.Rewind(ctx, primary); err != nil {
		return fmt.Errorf("%w: pg_rewind of %s from %s failed; restore %s from the newest snapshot set (`instactl backup restore`): %w",
			ErrRebuildNeeded, m.Host, primary.Host, m.Host, err)
	}
	return nil
}

// needsRewind decides from m's control data and the primary's timeline history whether m's WAL
// forked from the primary's: it did unless m shut down cleanly before the primary's timeline
// branched off m's.
func needsRewind(ctx context.Context, d Deps, cd ControlData, primary topology.Member) (bool, string, error) {
	var need bool
	var why string
	err := d.query(ctx, primary, func(c *pgx.Conn) error {
		tl, err := timeline(ctx, c)
		if err != nil {
			return err
		}
		if tl == cd.Timeline {
			why = fmt.Sprintf("same timeline %d", tl)
			return nil
		}
		sp, ok, err := switchPoint(ctx, c, tl, cd.Timeline)
		if err != nil {
			return err
		}
		switch {
		case !ok:
			need, why = true, fmt.Sprintf("timeline %d is not in the history of the primary's timeline %d", cd.Timeline, tl)
		case !cd.CleanShutdown():
			need, why = true, fmt.Sprintf("it was not shut down cleanly (%s), so its WAL may go past the fork at %s", cd.State, sp)
		case cd.Checkpoint >= sp:
			need, why = true, fmt.Sprintf("its last checkpoint %s is past the fork of timeline %d at %s", cd.Checkpoint, tl, sp)
		default:
			why = fmt.Sprintf("it stopped at %s, before the fork at %s", cd.Checkpoint, sp)
		}
		return nil
	})
	return need, why, err
}

// follow configures m as a standby of primary, starts it and waits until it streams.
func follow(ctx context.Context, d Deps, srv Server, m, primary topology.Member, stream time.Duration) error {
	if err := srv.Follow(ctx, primary); err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	return waitStreaming(ctx, d, m, primary, stream)
}

// waitStreaming waits until the primary's pg_stat_replication shows m streaming.
func waitStreaming(ctx context.Context, d Deps, m, primary topology.Member, timeout time.Duration) error {
	return waitFor(ctx, timeout, pollSlow, fmt.Sprintf("%s to stream from %s", m.Host, primary.Host), func(ctx context.Context) (bool, string, error) {
		var state string
		err := d.query(ctx, primary, func(c *pgx.Conn) error {
			var err error
			state, _, err = streamingState(ctx, c, m.Host)
			return err
		})
		return err == nil && state == "streaming", fmt.Sprintf("replication state %q", state), err
	})
}
