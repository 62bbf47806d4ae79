package cli

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/shardmove"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// addShardCommands adds shard init, map, move, status, resume, abort, complete, rollback and
// rebalance.
func addShardCommands(root *cobra.Command, f *Factory, out func() Output) {
	cmd := &cobra.Command{
		Use:   "shard",
		Short: "Create logical shards and move them between PostgreSQL nodes, online",
		Long: `A logical shard is one PostgreSQL schema (shard_0042) with Instagram's next_id(). The shard
map in the control database (shards.control_database on the first node of shards.role) says
which physical node holds each logical shard, at which epoch; app servers follow it.

A move copies a shard with logical replication while the app keeps writing, verifies the
copy, then cuts over in a short write-blocked window (default bound 2s) and flips the map.
Every step is journaled: a stopped or crashed move is continued with "shard resume MOVE" or
undone with "shard abort MOVE". The old copy stays until "shard complete MOVE" (after a
grace period), so "shard rollback MOVE" can move the shard back until then.

instactl connects to the nodes directly as the postgres superuser; app servers connect as
the app role with the DSNs in the node registry.`,
		Example: `  instactl shard init
  instactl shard map
  instactl shard move 42 --to pg-2 --dry-run
  instactl shard move 42 --to pg-2
  instactl shard status
  instactl shard complete 7
  instactl shard rebalance --plan`,
	}
	cmd.AddCommand(
		NewCmdShardInit(f, out, nil),
		NewCmdShardMap(f, out, nil),
		NewCmdShardMove(f, out, nil),
		NewCmdShardStatus(f, out, nil),
		NewCmdShardResume(f, out, nil),
		NewCmdShardAbort(f, out, nil),
		NewCmdShardComplete(f, out, nil),
		NewCmdShardRollback(f, out, nil),
		NewCmdShardRebalance(f, out, nil),
	)
	root.AddCommand(cmd)
}

// shardAppRole is the role app servers connect as (created by the pg bootstrap).
const shardAppRole = "app"

// shardEnv is what every shard command works with: the site (the topology's PostgreSQL
// groups at their primary now) and a Mover that connects to them and to the control database
// as postgres.
type shardEnv struct {
	f        *Factory
	st       *stack.Stack
	site     shardmove.Site
	mover    *shardmove.Mover
	poolOnce sync.Once
	pool     *remote.Pool
	poolErr  error
}

// newShardEnv asks the topology for the nodes and their primaries now. Before `shard init`
// the control database does not exist: the stack file's topology is the answer then.
func newShardEnv(ctx context.Context, f *Factory) (*shardEnv, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	topo, err := topology.Resolve(ctx, st, "postgres")
	if err != nil && len(topo.Groups) == 0 {
		return nil, err
	}
	return newShardEnvWith(f, st, topo)
}

// newShardEnvWith is newShardEnv with the topology already resolved.
func newShardEnvWith(f *Factory, st *stack.Stack, topo topology.Topology) (*shardEnv, error) {
	r := st.Role(st.Shards.Role)
	if r == nil {
		return nil, usageErrorf("%s: shards.role is %q but the stack has no such role", st.Path, st.Shards.Role)
	}
	site := shardmove.Site{Topology: topo, Database: st.Shards.Database, ControlDatabase: st.Shards.ControlDatabase, AppRole: shardAppRole}
	if len(site.Nodes()) == 0 {
		return nil, usageErrorf("%s: role %s has no primaries to hold shards", st.Path, r.Name)
	}
	e := &shardEnv{f: f, st: st, site: site}
	cfg, err := site.Config(e.freeBytes)
	if err != nil {
		return nil, err
	}
	e.mover = shardmove.New(cfg)
	return e, nil
}

func (e *shardEnv) close() {
	if e.pool != nil {
		e.pool.Close()
	}
}

// freeBytes measures the free disk of node's primary over SSH: the room pre-check of a move.
func (e *shardEnv) freeBytes(ctx context.Context, node string) (int64, error) {
	p, err := e.site.Topology.Primary(node)
	if err != nil {
		return 0, err
	}
	return shardmove.FreeBytes(ctx, p.DSN("postgres", e.st.Shards.Database), func(ctx context.Context, cmd remote.Command) ([]byte, error) {
		e.poolOnce.Do(func() { e.pool, e.poolErr = e.f.SSH(false) })
		if e.poolErr != nil {
			return nil, e.poolErr
		}
		c, err := e.pool.Get(ctx, remote.Target{Name: p.Host, Address: p.Addr.Addr().String(), Port: e.st.SSH.Port, User: e.st.SSH.User})
		if err != nil {
			return nil, err
		}
		res, err := c.Run(ctx, cmd, nil)
		if err != nil {
			return nil, err
		}
		return res.Stdout, res.Err()
	})
}

// shardLoadMap reads the shard map from the control database.
func shardLoadMap(ctx context.Context, e *shardEnv) (shardmap.Map, error) {
	dsn, err := e.site.ControlDSN()
	if err != nil {
		return shardmap.Map{}, err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return shardmap.Map{}, fmt.Errorf("connect to the control database on %s (run `%s` first): %w",
			e.site.ControlNode(), shardCmdLine(e.f, "shard", "init"), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	mp, err := shardmap.Load(ctx, conn)
	if err != nil {
		return mp, fmt.Errorf("%w (run `%s` first)", err, shardCmdLine(e.f, "shard", "init"))
	}
	return mp, nil
}

// shardCmdLine is the exact instactl command line to run next, with --stack when the stack
// file is not the default one.
func shardCmdLine(f *Factory, args ...string) string {
	parts := []string{"instactl"}
	if p := f.StackPath(); p != stack.DefaultFile {
		parts = append(parts, "--stack", remote.Quote(p))
	}
	return strings.Join(append(parts, args...), " ")
}
