package shardmove

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// InitSpec is what `instactl shard init` creates.
type InitSpec struct {
	// LogicalShards is the number of logical shards (at most shardmap.MaxShards).
	LogicalShards int
	// Nodes are the physical nodes; shards are assigned round robin over them in this order.
	Nodes []shardmap.Node
	// Batch is how many shard schemas are created per statement batch (default 64).
	Batch int
}

// InitResult says what Init did.
type InitResult struct {
	// Created counts shard schemas created now; Existing those that were already there.
	Created  int `json:"created"`
	Existing int `json:"existing"`
	// PerNode counts shards owned per node.
	PerNode map[string]int `json:"per_node"`
}

// Init installs the shard map and the move journal in the control database and creates every
// logical shard's schema on the node the map assigns it to. It is idempotent: existing
// assignments and schemas are kept (a shard already moved stays where it is).
func (m *Mover) Init(ctx context.Context, spec InitSpec) (InitResult, error) {
	res := InitResult{PerNode: map[string]int{}}
	if spec.Batch <= 0 {
		spec.Batch = 64
	}
	ctl, err := m.control(ctx)
	if err != nil {
		return res, err
	}
	defer closeAll(ctl)
	if err := shardmap.Install(ctx, ctl, spec.LogicalShards, spec.Nodes); err != nil {
		return res, fmt.Errorf("init: %w", err)
	}
	if err := InstallJournal(ctx, ctl); err != nil {
		return res, fmt.Errorf("init: %w", err)
	}
	mp, err := shardmap.Load(ctx, ctl)
	if err != nil {
		return res, fmt.Errorf("init: %w", err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, 0)
	for name := range mp.Nodes {
		shards := mp.ShardsOn(name)
		res.PerNode[name] = len(shards)
		if len(shards) == 0 {
			continue
		}
		wg.Go(func() {
			created, existing, err := m.initNode(ctx, mp, name, shards, spec.Batch)
			mu.Lock()
			defer mu.Unlock()
			res.Created += created
			res.Existing += existing
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return res, fmt.Errorf("init: %w", errs[0])
	}
	return res, nil
}

// initNode creates the missing shard schemas on one node. A schema is created by one implicit
// transaction together with its tables, so an existing schema is a complete one.
func (m *Mover) initNode(ctx context.Context, mp shardmap.Map, node string, shards []int, batch int) (created, existing int, err error) {
	conn, err := m.connectNode(ctx, mp, node)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(conn)
	rows, err := conn.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname LIKE 'shard\_%'`)
	if err != nil {
		return 0, 0, fmt.Errorf("list shard schemas on %s: %w", node, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, 0, fmt.Errorf("list shard schemas on %s: %w", node, err)
	}
	have := map[string]bool{}
	for _, n := range names {
		have[n] = true
	}
	var todo []int
	for _, s := range shards {
		if have[shardmap.SchemaName(s)] {
			existing++
		} else {
			todo = append(todo, s)
		}
	}
	for i := 0; i < len(todo); i += batch {
		var b strings.Builder
		for _, s := range todo[i:min(i+batch, len(todo))] {
			b.WriteString(shardmap.ShardSchemaSQL(s))
		}
		// One simple-protocol batch is one transaction: a batch is created whole or not at all.
		if _, err := conn.Exec(ctx, b.String(), pgx.QueryExecModeSimpleProtocol); err != nil {
			return created, existing, fmt.Errorf("create shard schemas %d.. on %s: %w", todo[i], node, err)
		}
		created += min(batch, len(todo)-i)
	}
	return created, existing, nil
}
