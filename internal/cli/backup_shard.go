package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/shardmove"
)

const backupShardHelp = `
One shard (--shard N with --to-time or --to-lsn): NODE is restored to the target on HOST as
above, beside the live node, then only logical shard N is copied back into the live node: into a
temporary schema (shard_NNNN_recover_ID, fenced), compared table by table with the restored
copy, and swapped in by one short transaction that blocks the shard's writes (--window bounds
its lock waits) while every other shard of the node keeps taking writes. The damaged schema is kept as
shard_NNNN_before_recover_ID (fenced, never dropped: drop it with DROP SCHEMA ... CASCADE once
the recovered shard is checked). Writes the shard took between the target and the swap are in
that schema only. Each step is journaled with the shard moves: a recovery that stops is
finished by ` + "`instactl shard resume ID`" + ` and undone before its swap by ` + "`instactl shard abort ID`" + `.
The restored copy on HOST is left running; remove it with the scratch host.`

func (p *BackupPITRFlags) registerShard(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.IntVar(&p.Shard, "shard", -1, "recover only this logical shard of NODE from the restored copy into the live node (with --to-time/--to-lsn)")
	fl.DurationVar(&p.Window, "window", 2*time.Second, "with --shard: longest the swap waits for each of the shard's table locks before it gives up and retries")
}

func (p *BackupPITRFlags) checkShard() error {
	if p.Shard < -1 || p.Shard >= shardmap.MaxShards {
		return usageErrorf("--shard must be a logical shard number 0-%d (got %d)", shardmap.MaxShards-1, p.Shard)
	}
	if p.Shard >= 0 && p.Window <= 0 {
		return usageErrorf("--window must be positive (got %s)", p.Window)
	}
	return nil
}

// ShardRecoveryResult is what `backup restore --shard` reports: the restore, then the recovery.
type ShardRecoveryResult struct {
	Restore *backup.PITRResult      `json:"restore"`
	Recover shardmove.RecoverResult `json:"recover"`
}

// shardRecovery is a per-shard recovery checked before the restore starts.
type shardRecovery struct {
	e     *shardEnv
	shard int
	node  string
	win   time.Duration
}

// newShardRecovery checks, before anything is restored, that NODE owns the shard now.
func newShardRecovery(ctx context.Context, f *Factory, o *BackupRestoreOptions) (*shardRecovery, error) {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return nil, err
	}
	mp, err := shardLoadMap(ctx, e)
	if err != nil {
		e.close()
		return nil, err
	}
	n := o.PITR.Shard
	if n >= mp.LogicalShards() {
		e.close()
		return nil, usageErrorf("--shard %d: the map has shards 0-%d", n, mp.LogicalShards()-1)
	}
	owner := mp.Shards[n].Node
	node := o.Set
	if g, ok := e.site.Topology.GroupOf(node); ok {
		node = g.Name
	}
	if node != owner {
		e.close()
		return nil, usageErrorf("--shard %d is on %s now, not %s: restore %s", n, owner, o.Set, owner)
	}
	return &shardRecovery{e: e, shard: n, node: owner, win: o.PITR.Window}, nil
}

func (s *shardRecovery) close() { s.e.close() }

// run copies the shard from the restored copy r into the live node.
func (s *shardRecovery) run(ctx context.Context, f *Factory, out Output, r *backup.PITRResult) error {
	dsn := (&url.URL{Scheme: "postgres", User: url.User("postgres"), Host: r.Address + ":" + strconv.Itoa(r.Port),
		Path: "/" + s.e.st.Shards.Database, RawQuery: "sslmode=disable&connect_timeout=10"}).String()
	plan := shardmove.RecoverPlan{Shard: s.shard, Node: s.node, Source: r.Host, SourceDSN: dsn, Target: r.RecoveryTarget,
		ReachedLSN: r.ReachedLSN, ReachedCommit: r.ReachedCommit}
	f.IO.Statusf("shard %d: restored copy of %s on %s reached %s (last commit %s); copying it back into %s",
		s.shard, r.Group, r.Host, r.ReachedLSN, r.ReachedCommit.Format(time.RFC3339Nano), s.node)
	g := newShardGraceful(ctx, f.IO)
	defer g.close()
	rr, err := s.e.mover.Recover(g.ctx, plan, g.options(s.win))
	g.finished(rr.Move.ID)
	if err != nil {
		return shardMoveError(f, err)
	}
	res := ShardRecoveryResult{Restore: r, Recover: rr}
	return render(f.IO, out, res, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "Recovered shard %d of %s to %s (reached %s, last commit %s) from the copy on %s: "+
			"%d rows in %d tables, copied in %.1fs; the shard's writes were blocked %.1f ms by the swap (recovery %d).\n"+
			"The old schema is kept as %s on %s; once the shard is checked: %s\n"+
			"The restored copy still runs on %s:%d.\n",
			s.shard, s.node, r.RecoveryTarget, r.ReachedLSN, r.ReachedCommit.Format(time.RFC3339Nano), r.Host,
			rr.Rows, len(rr.Tables), rr.CopySeconds, rr.Swap.WindowMS, rr.Move.ID,
			rr.Aside, s.node, rr.DropAside, r.Address, r.Port)
		return err
	})
}
