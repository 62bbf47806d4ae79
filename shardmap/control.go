package shardmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/controldb"
)

// NotifyChannel is the LISTEN/NOTIFY channel a map change is announced on; the payload is the
// new map version.
const NotifyChannel = "shard_map"

// Shard states recorded in shard_map.state. The app routes on node and epoch only; the state is
// for operators and the shard mover.
const (
	StateActive = "active"
	StateMoving = "moving"
)

// ErrConflict is returned by Flip and SetState when the shard is not where or at the epoch the
// caller expected: someone else changed it first.
var ErrConflict = errors.New("shard map changed concurrently")

// DB is what the functions of this package need from a connection: *pgx.Conn, *pgxpool.Pool
// and pgx.Tx all satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Node is a physical PostgreSQL node in the registry.
type Node struct {
	// Name is the stable name the shard map refers to ("pg1").
	Name string `json:"name"`
	// DSN is how app servers reach the node (often through PgBouncer).
	DSN string `json:"dsn"`
}

// Assignment is where one logical shard lives.
type Assignment struct {
	Shard int    `json:"shard"`
	Node  string `json:"node"`
	// Epoch increases on every flip; a mover compares-and-sets on it.
	Epoch int64  `json:"epoch"`
	State string `json:"state"`
}

// Map is a consistent snapshot of the control database.
type Map struct {
	// Version increases on every change of the map or the registry.
	Version int64           `json:"version"`
	Nodes   map[string]Node `json:"nodes"`
	// Shards is indexed by logical shard number.
	Shards []Assignment `json:"shards"`
}

// LogicalShards returns the number of logical shards.
func (m Map) LogicalShards() int { return len(m.Shards) }

// Route returns the assignment of shard and the node holding it.
func (m Map) Route(shard int) (Assignment, Node, error) {
	if shard < 0 || shard >= len(m.Shards) {
		return Assignment{}, Node{}, fmt.Errorf("shard %d out of range [0,%d)", shard, len(m.Shards))
	}
	a := m.Shards[shard]
	n, ok := m.Nodes[a.Node]
	if !ok {
		return a, Node{}, fmt.Errorf("shard %d: node %q not in registry", shard, a.Node)
	}
	return a, n, nil
}

// ShardsOn returns the shards assigned to node, in order.
func (m Map) ShardsOn(node string) []int {
	var out []int
	for _, a := range m.Shards {
		if a.Node == node {
			out = append(out, a.Shard)
		}
	}
	return out
}

// Install migrates the control schema (controldb.Migrate), registers nodes (updating their DSNs) and assigns
// logicalShards shards round robin over nodes. It is idempotent: existing assignments are kept,
// and a different logicalShards than the installed one is an error (resharding is not a re-install).
func Install(ctx context.Context, conn DB, logicalShards int, nodes []Node) error {
	if logicalShards < 1 || logicalShards > MaxShards {
		return fmt.Errorf("install shard map: logical shards must be in [1,%d] (got %d)", MaxShards, logicalShards)
	}
	if len(nodes) == 0 {
		return errors.New("install shard map: no nodes")
	}
	if _, err := controldb.Migrate(ctx, conn); err != nil {
		return fmt.Errorf("install shard map: %w", err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("install shard map: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('shard_map_install'))"); err != nil {
		return fmt.Errorf("install shard map: lock: %w", err)
	}
	var installed int
	err = tx.QueryRow(ctx, "SELECT logical_shards FROM shard_map_meta").Scan(&installed)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := tx.Exec(ctx, "INSERT INTO shard_map_meta (version, logical_shards) VALUES (1, $1)", logicalShards); err != nil {
			return fmt.Errorf("install shard map: meta: %w", err)
		}
	case err != nil:
		return fmt.Errorf("install shard map: read meta: %w", err)
	case installed != logicalShards:
		return fmt.Errorf("install shard map: already installed with %d logical shards, asked for %d", installed, logicalShards)
	}
	changed := int64(0)
	for _, n := range nodes {
		tag, err := tx.Exec(ctx, `INSERT INTO shard_nodes (name, dsn) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET dsn = EXCLUDED.dsn WHERE shard_nodes.dsn <> EXCLUDED.dsn`, n.Name, n.DSN)
		if err != nil {
			return fmt.Errorf("install shard map: register node %s: %w", n.Name, err)
		}
		changed += tag.RowsAffected()
	}
	for s := 0; s < logicalShards; s++ {
		tag, err := tx.Exec(ctx, `INSERT INTO shard_map (shard, node) VALUES ($1, $2) ON CONFLICT (shard) DO NOTHING`,
			s, nodes[s%len(nodes)].Name)
		if err != nil {
			return fmt.Errorf("install shard map: assign shard %d: %w", s, err)
		}
		changed += tag.RowsAffected()
	}
	if changed > 0 && installed != 0 {
		if err := bumpVersion(ctx, tx); err != nil {
			return fmt.Errorf("install shard map: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("install shard map: commit: %w", err)
	}
	return nil
}

// Load reads a consistent snapshot of the map (one repeatable-read transaction, so it also works
// through PgBouncer in transaction mode).
func Load(ctx context.Context, conn DB) (Map, error) {
	var m Map
	err := controldb.Snapshot(ctx, conn, func(tx pgx.Tx) error {
		var err error
		m, err = readMap(ctx, tx)
		return err
	})
	if err != nil {
		return Map{}, fmt.Errorf("load shard map: %w", err)
	}
	return m, nil
}

func readMap(ctx context.Context, tx pgx.Tx) (Map, error) {
	m := Map{Nodes: map[string]Node{}}
	var n int
	if err := tx.QueryRow(ctx, "SELECT version, logical_shards FROM shard_map_meta").Scan(&m.Version, &n); err != nil {
		return Map{}, fmt.Errorf("read meta (is the shard map installed?): %w", err)
	}
	rows, err := tx.Query(ctx, "SELECT name, dsn FROM shard_nodes")
	if err != nil {
		return Map{}, fmt.Errorf("nodes: %w", err)
	}
	nodes, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Node])
	if err != nil {
		return Map{}, fmt.Errorf("nodes: %w", err)
	}
	for _, nd := range nodes {
		m.Nodes[nd.Name] = nd
	}
	rows, err = tx.Query(ctx, "SELECT shard, node, epoch, state FROM shard_map ORDER BY shard")
	if err != nil {
		return Map{}, fmt.Errorf("shards: %w", err)
	}
	m.Shards, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Assignment])
	if err != nil {
		return Map{}, fmt.Errorf("shards: %w", err)
	}
	if len(m.Shards) != n {
		return Map{}, fmt.Errorf("%d shard rows, meta says %d", len(m.Shards), n)
	}
	for i, a := range m.Shards {
		if a.Shard != i {
			return Map{}, fmt.Errorf("shard %d missing", i)
		}
	}
	return m, nil
}

// Flip moves shard from fromNode to toNode if it is still on fromNode at expectEpoch
// (compare-and-set), bumps its epoch and the map version, sets it active, and notifies
// NotifyChannel on commit. A lost race returns an error wrapping ErrConflict.
func Flip(ctx context.Context, conn DB, shard int, fromNode, toNode string, expectEpoch int64) error {
	return change(ctx, conn, fmt.Sprintf("flip shard %d %s->%s", shard, fromNode, toNode),
		`UPDATE shard_map SET node = $4, epoch = epoch + 1, state = 'active'
		 WHERE shard = $1 AND node = $2 AND epoch = $3`, shard, fromNode, expectEpoch, toNode)
}

// SetState records state for shard if it is still on node at expectEpoch; the epoch is kept.
func SetState(ctx context.Context, conn DB, shard int, node string, expectEpoch int64, state string) error {
	return change(ctx, conn, fmt.Sprintf("set shard %d state %s", shard, state),
		`UPDATE shard_map SET state = $4 WHERE shard = $1 AND node = $2 AND epoch = $3`,
		shard, node, expectEpoch, state)
}

func change(ctx context.Context, conn DB, what, sql string, args ...any) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", what, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	tag, err := tx.Exec(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if tag.RowsAffected() != 1 {
		var node string
		var epoch int64
		_ = tx.QueryRow(ctx, "SELECT node, epoch FROM shard_map WHERE shard = $1", args[0]).Scan(&node, &epoch)
		return fmt.Errorf("%s: expected node %v epoch %v, found node %q epoch %d: %w",
			what, args[1], args[2], node, epoch, ErrConflict)
	}
	if err := bumpVersion(ctx, tx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%s: commit: %w", what, err)
	}
	return nil
}

func bumpVersion(ctx context.Context, tx pgx.Tx) error {
	var v int64
	if err := tx.QueryRow(ctx, "UPDATE shard_map_meta SET version = version + 1 RETURNING version").Scan(&v); err != nil {
		return fmt.Errorf("bump map version: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, strconv.FormatInt(v, 10)); err != nil {
		return fmt.Errorf("notify %s: %w", NotifyChannel, err)
	}
	return nil
}

// Listen subscribes conn to NotifyChannel and calls fn with the announced version for every
// notification until ctx ends or the connection fails. conn must be a dedicated session (not a
// PgBouncer transaction-mode connection); callers reconnect and reload the map on error.
func Listen(ctx context.Context, conn *pgx.Conn, fn func(version int64)) error {
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return fmt.Errorf("listen %s: %w", NotifyChannel, err)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for %s notification: %w", NotifyChannel, err)
		}
		v, _ := strconv.ParseInt(n.Payload, 10, 64)
		fn(v)
	}
}

// InitShards creates the schema of every shard on the node the map assigns it to, connecting
// with each node's DSN. It is idempotent (see ShardSchemaSQL).
func InitShards(ctx context.Context, m Map) error {
	for name, node := range m.Nodes {
		shards := m.ShardsOn(name)
		if len(shards) == 0 {
			continue
		}
		conn, err := pgx.Connect(ctx, node.DSN)
		if err != nil {
			return fmt.Errorf("init shards on %s: %w", name, err)
		}
		for _, s := range shards {
			if _, err := conn.Exec(ctx, ShardSchemaSQL(s)); err != nil {
				conn.Close(ctx)
				return fmt.Errorf("init shard %d on %s: %w", s, name, err)
			}
		}
		conn.Close(ctx)
	}
	return nil
}

// SetNodeAddr points the registry entry of node at addr inside tx: the host and port of its
// DSN change, its user, database and parameters stay. When the entry changed it bumps the map
// version and notifies NotifyChannel on commit, as every map change does, so app servers
// reconnect to the new address. A node the registry does not hold (the map is not installed
// yet, or node is a Redis group) is no change. It reports whether the entry changed.
//
// It takes a transaction so a change of primary (package topology) records the new primary
// and the node's new address in one commit.
func SetNodeAddr(ctx context.Context, tx pgx.Tx, node string, addr netip.AddrPort) (bool, error) {
	what := fmt.Sprintf("point node %s of the shard map at %s", node, addr)
	var dsn string
	err := tx.QueryRow(ctx, "SELECT dsn FROM shard_nodes WHERE name = $1 FOR UPDATE", node).Scan(&dsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return false, fmt.Errorf("%s: the registry's DSN %q is not a postgres:// URL", what, dsn)
	}
	if u.Host == addr.String() {
		return false, nil
	}
	u.Host = addr.String()
	if _, err := tx.Exec(ctx, "UPDATE shard_nodes SET dsn = $2 WHERE name = $1", node, u.String()); err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	if err := bumpVersion(ctx, tx); err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	return true, nil
}
