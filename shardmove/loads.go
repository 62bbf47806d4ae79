package shardmove

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// NodeLoad is one physical node's share of the map: its shards, their size and writes.
type NodeLoad struct {
	Name         string  `json:"name"`
	DSN          string  `json:"dsn"`
	Shards       int     `json:"shards"`
	Bytes        int64   `json:"bytes"`
	Writes       int64   `json:"writes"`
	WritesPerSec float64 `json:"writes_per_sec"`
	// Error says why the node's statistics could not be read; it then contributes nothing.
	Error string `json:"error,omitempty"`
}

// LoadReport is the size and write rate of every shard on the node the map says holds it.
type LoadReport struct {
	Map   shardmap.Map
	Loads []ShardLoad
	// Writes is rows written per shard since the statistics were reset (sample 0) or during
	// the sample.
	Writes map[int]int64
	Nodes  map[string]*NodeLoad
}

// shardStat is one shard schema's size and rows written, as its node reports them.
type shardStat struct {
	Bytes  int64
	Writes int64
}

// nodeStats reads the size and rows written (n_tup_ins+upd+del) of every shard schema on one
// node, and the seconds its statistics cover.
func nodeStats(ctx context.Context, conn *pgx.Conn) (map[string]shardStat, float64, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname, coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint,
			coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0)::bigint
		FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'r'
		LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
		WHERE n.nspname LIKE 'shard\_%' GROUP BY n.nspname`)
	if err != nil {
		return nil, 0, err
	}
	out := map[string]shardStat{}
	var name string
	var s shardStat
	if _, err := pgx.ForEachRow(rows, []any{&name, &s.Bytes, &s.Writes}, func() error {
		out[name] = s
		return nil
	}); err != nil {
		return nil, 0, err
	}
	var secs float64
	err = conn.QueryRow(ctx, `SELECT extract(epoch FROM now() - coalesce(
		(SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()), pg_postmaster_start_time()))`).Scan(&secs)
	return out, secs, err
}

type reading struct {
	stats map[string]shardStat
	secs  float64
	err   error
}

func readAll(ctx context.Context, conns map[string]*pgx.Conn) map[string]reading {
	out := map[string]reading{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, c := range conns {
		wg.Go(func() {
			s, secs, err := nodeStats(ctx, c)
			mu.Lock()
			out[name] = reading{s, secs, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// CollectLoads reads every node's statistics, connecting with admin[node] (the registry DSN
// of mp when absent). With sample > 0 write rates are the difference of two readings sample
// apart; otherwise the totals over the statistics' age. A node that cannot be read is
// reported in its Error and contributes nothing.
func CollectLoads(ctx context.Context, mp shardmap.Map, admin map[string]string, sample time.Duration) (*LoadReport, error) {
	rep := &LoadReport{Map: mp, Writes: map[int]int64{}, Nodes: map[string]*NodeLoad{}}
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, name := range SortedNodes(mp) {
		info := &NodeLoad{Name: name, DSN: mp.Nodes[name].DSN, Shards: len(mp.ShardsOn(name))}
		rep.Nodes[name] = info
		dsn := mp.Nodes[name].DSN
		if d, ok := admin[name]; ok {
			dsn = d
		}
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			info.Error = err.Error()
			continue
		}
		conns[name] = c
	}
	first := readAll(ctx, conns)
	last, elapsed := first, 0.0
	if sample > 0 {
		start := time.Now()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(sample):
		}
		last, elapsed = readAll(ctx, conns), time.Since(start).Seconds()
	}
	for _, a := range mp.Shards {
		info := rep.Nodes[a.Node]
		r, ok := last[a.Node]
		if info == nil || !ok {
			continue
		}
		if r.err != nil {
			info.Error = r.err.Error()
			continue
		}
		schema := shardmap.SchemaName(a.Shard)
		s := r.stats[schema]
		writes, secs := s.Writes, r.secs
		if sample > 0 {
			writes, secs = max(0, s.Writes-first[a.Node].stats[schema].Writes), elapsed
		}
		rate := 0.0
		if secs > 0 {
			rate = float64(writes) / secs
		}
		rep.Writes[a.Shard] = writes
		rep.Loads = append(rep.Loads, ShardLoad{Shard: a.Shard, Node: a.Node, Bytes: s.Bytes, WritesPerSec: rate})
		info.Bytes += s.Bytes
		info.Writes += writes
		info.WritesPerSec += rate
	}
	return rep, nil
}
