package app

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/topology"
)

// RefreshTopology loads the topology from the control database (concurrent callers share one
// load) and applies it (see applyTopology). Before `shard init` seeds the topology tables
// there is nothing to follow: the app keeps its configured addresses and it is no error.
func (r *Router) RefreshTopology(ctx context.Context) error {
	start := time.Now()
	r.topoMu.Lock()
	defer r.topoMu.Unlock()
	if r.lastTopo.After(start) {
		return nil // someone loaded after we asked
	}
	t, err := topology.Load(ctx, r.control)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: not seeded yet
		r.lastTopo = time.Now()
		if !r.noTopoLogged.Swap(true) {
			r.log.Info("no replication topology in the control database yet (shard init seeds it); keeping the configured addresses")
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("refresh topology: %w", err)
	}
	r.lastTopo = time.Now()
	r.applyTopology(t)
	return nil
}

// applyTopology takes every group of t whose epoch is newer than the one held: a Postgres
// group's node pool is reset (no connection made to the old primary is used again; new ones go
// through the pooler, which instactl repoints), and the Redis client is pointed at the Redis
// group's primary. A group at an older epoch than the one held is refused: t was read from a
// stale source (an old primary still answering), and following it would send writes there.
// Runs under topoMu.
func (r *Router) applyTopology(t topology.Topology) {
	changed := false
	// The app uses one Redis: the stack's first Redis group.
	var redisGroup string
	if rg := t.OfKind(topology.KindRedis); len(rg) > 0 {
		redisGroup = rg[0].Name
	}
	for _, g := range t.Groups {
		r.epochMu.Lock()
		held, seen := r.epochs[g.Name]
		if !seen || g.Epoch > held {
			r.epochs[g.Name] = g.Epoch
		}
		r.epochMu.Unlock()
		switch {
		case seen && g.Epoch < held:
			r.refuseStale(g.Name, g.Epoch, held, "topology")
			continue
		case seen && g.Epoch == held:
			continue
		}
		changed = true
		r.log.Info("topology epoch", "group", g.Name, "kind", g.Kind, "epoch", g.Epoch, "primary", g.Primary, "previous_epoch", held)
		switch g.Kind {
		case topology.KindPostgres:
			if seen {
				r.resetPool(g.Name)
			}
		case topology.KindRedis:
			if g.Name == redisGroup && r.redis != nil {
				r.followRedis(g)
			}
		}
	}
	if changed {
		r.mu.Lock()
		r.signalLocked()
		r.mu.Unlock()
	}
}

// refuseStale counts and logs a topology or notification older than the epoch held.
func (r *Router) refuseStale(group string, epoch, held int64, what string) {
	r.staleRefused.Add(1)
	r.log.Warn("refusing a stale epoch", "group", group, "epoch", epoch, "held", held, "from", what)
}

// resetPool closes every connection of node's pool (those in use are closed when released), so
// every statement after a change of primary runs on a connection made after it.
func (r *Router) resetPool(node string) {
	r.mu.Lock()
	np := r.pools[node]
	r.mu.Unlock()
	if np == nil {
		return
	}
	np.pool.Reset()
	r.log.Info("node pool reset after a change of primary", "node", node)
}

// followRedis points the Redis client at g's primary.
func (r *Router) followRedis(g topology.Group) {
	m, err := g.PrimaryMember()
	if err != nil {
		r.log.Warn("cannot follow the Redis primary", "err", err)
		return
	}
	old := r.redis.Addr()
	if r.redis.Switch(m.Addr.String()) {
		r.log.Info("redis master switched", "group", g.Name, "epoch", g.Epoch, "from", old, "to", m.Addr.String())
	}
}

// GroupEpoch returns the epoch held for replication group name (0: none seen).
func (r *Router) GroupEpoch(name string) int64 {
	r.epochMu.Lock()
	defer r.epochMu.Unlock()
	return r.epochs[name]
}

// Epochs returns the epoch held per replication group.
func (r *Router) Epochs() map[string]int64 {
	r.epochMu.Lock()
	defer r.epochMu.Unlock()
	return maps.Clone(r.epochs)
}

// StaleRefused returns how many topologies or notifications older than the held epoch were refused.
func (r *Router) StaleRefused() int64 { return r.staleRefused.Load() }

// FailoverRetries returns how many operations waited for a topology change after losing their
// primary (see primaryLost).
func (r *Router) FailoverRetries() int64 { return r.failoverRetries.Load() }

// errTopologyUnchanged means a statement lost its primary and no change of topology or map
// followed within the wait: nothing says where to retry.
var errTopologyUnchanged = errors.New("no topology change followed")

// awaitTopology returns once node's group is past epoch or the map past version, or an error
// after wait.
func (r *Router) awaitTopology(ctx context.Context, node string, epoch, version int64, wait time.Duration) error {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		ch := r.changedCh()
		if err := r.RefreshTopology(ctx); err != nil {
			r.log.Debug("refresh of topology while waiting for a new primary", "err", err)
		}
		if err := r.Refresh(ctx); err != nil {
			r.log.Debug("refresh of shard map while waiting for a new primary", "err", err)
		}
		if r.GroupEpoch(node) > epoch || r.cur.Load().Version != version {
			return nil
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline.C:
			return fmt.Errorf("node %s stayed at epoch %d for %s: %w", node, epoch, wait, errTopologyUnchanged)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// primaryLost reports whether err means the node's primary went away under a statement that
// did not take effect, so it is safe to run again once the topology moved on:
//   - 25006 read_only_sql_transaction: the old primary is a standby now; nothing was written.
//   - 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now: the server ended
//     the session, rolling back its transaction.
//   - a connection failure (class 08, or no reply at all) only when nothing was sent (a failed
//     connect, a request that never left). Each statement here commits on its own, so a
//     connection lost after it was sent is a COMMIT of unknown outcome: not retried.
func primaryLost(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "25006", "57P01", "57P02", "57P03":
			return true
		}
		if !strings.HasPrefix(pgErr.Code, "08") {
			return false
		}
	}
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr) || pgconn.SafeToRetry(err)
}
