package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/shardmove"
	"github.com/instactl/instactl/stack"
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

// shardNode is one physical node: a primary of the shards role.
type shardNode struct {
	Name string
	Host stack.HostRef
	Addr netip.Addr
	Port int
}

func (n shardNode) dsn(user, db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable&connect_timeout=10", user,
		netip.AddrPortFrom(n.Addr, uint16(n.Port)), db)
}

// appDSN is what the node registry records: how app servers reach the node (as templates.AppEnv
// does for the control database).
func (n shardNode) appDSN(db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", shardAppRole, netip.AddrPortFrom(n.Addr, uint16(n.Port)), db)
}

// shardEnv is what every shard command works with: the stack's nodes and a Mover that
// connects to them (and to the control database) as postgres.
type shardEnv struct {
	f        *Factory
	st       *stack.Stack
	nodes    []shardNode
	control  string // the control database, as postgres
	mover    *shardmove.Mover
	poolOnce sync.Once
	pool     *remote.Pool
	poolErr  error
}

// shardNodes lists the physical nodes: the primaries of the shards role, named by host.
func shardNodes(st *stack.Stack) ([]shardNode, error) {
	r := st.Role(st.Shards.Role)
	if r == nil {
		return nil, usageErrorf("%s: shards.role is %q but the stack has no such role", st.Path, st.Shards.Role)
	}
	var nodes []shardNode
	for i := 0; i < r.Count; i++ {
		if !r.IsPrimary(i) {
			continue
		}
		h := stack.HostRef{Role: r.Name, Index: i}
		addr, err := st.Address(h)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, shardNode{Name: h.Name(), Host: h, Addr: addr, Port: r.Port})
	}
	if len(nodes) == 0 {
		return nil, usageErrorf("%s: role %s has no primaries to hold shards", st.Path, r.Name)
	}
	return nodes, nil
}

func newShardEnv(f *Factory) (*shardEnv, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	nodes, err := shardNodes(st)
	if err != nil {
		return nil, err
	}
	e := &shardEnv{f: f, st: st, nodes: nodes, control: nodes[0].dsn("postgres", st.Shards.ControlDatabase)}
	admin := map[string]string{}
	for _, n := range nodes {
		admin[n.Name] = n.dsn("postgres", st.Shards.Database)
	}
	e.mover = shardmove.New(shardmove.Config{ControlDSN: e.control, AdminDSN: admin, FreeBytes: e.freeBytes})
	return e, nil
}

func (e *shardEnv) close() {
	if e.pool != nil {
		e.pool.Close()
	}
}

func (e *shardEnv) node(name string) (shardNode, bool) {
	for _, n := range e.nodes {
		if n.Name == name {
			return n, true
		}
	}
	return shardNode{}, false
}

// freeBytes reports the free space of the filesystem holding node's data directory, with df
// over SSH: the room pre-check of a move.
func (e *shardEnv) freeBytes(ctx context.Context, name string) (int64, error) {
	n, ok := e.node(name)
	if !ok {
		return 0, fmt.Errorf("node %s is not in the stack file", name)
	}
	conn, err := pgx.Connect(ctx, n.dsn("postgres", e.st.Shards.Database))
	if err != nil {
		return 0, err
	}
	var dir string
	err = conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dir)
	conn.Close(ctx)
	if err != nil {
		return 0, fmt.Errorf("read data_directory: %w", err)
	}
	e.poolOnce.Do(func() { e.pool, e.poolErr = e.f.SSH(false) })
	if e.poolErr != nil {
		return 0, e.poolErr
	}
	c, err := e.pool.Get(ctx, remote.Target{Name: n.Name, Address: n.Addr.String(), Port: e.st.SSH.Port, User: e.st.SSH.User})
	if err != nil {
		return 0, err
	}
	res, err := c.Run(ctx, shardDFCommand(dir), nil)
	if err != nil {
		return 0, err
	}
	if err := res.Err(); err != nil {
		return 0, err
	}
	return shardParseDF(res.Stdout)
}

// shardDFCommand asks for the bytes available on the filesystem holding dir.
func shardDFCommand(dir string) remote.Command {
	return remote.Cmd("df", "-P", "-B1", "--", dir)
}

// shardParseDF reads the "Available" column of `df -P -B1` output.
func shardParseDF(out []byte) (int64, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		return 0, fmt.Errorf("unexpected df output %q", out)
	}
	fields := strings.Fields(lines[len(lines)-1])
	if len(fields) < 4 {
		return 0, fmt.Errorf("unexpected df output %q", out)
	}
	n, err := strconv.ParseInt(fields[3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected df output %q: %w", out, err)
	}
	return n, nil
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

// ---- shard init ----

// ShardInitOptions are the inputs of `instactl shard init`.
type ShardInitOptions struct {
	// Batch is how many shard schemas are created per statement batch.
	Batch int
}

// ShardInitResult is what `instactl shard init` reports.
type ShardInitResult struct {
	ControlDatabase string          `json:"control_database"`
	ControlNode     string          `json:"control_node"`
	LogicalShards   int             `json:"logical_shards"`
	Created         int             `json:"created"`
	Existing        int             `json:"existing"`
	Nodes           []ShardNodeInfo `json:"nodes"`
}

// ShardNodeInfo is one physical node as shard init and shard map report it.
type ShardNodeInfo struct {
	Name         string  `json:"name"`
	DSN          string  `json:"dsn"`
	Shards       int     `json:"shards"`
	Bytes        int64   `json:"bytes"`
	Writes       int64   `json:"writes"`
	WritesPerSec float64 `json:"writes_per_sec"`
	Error        string  `json:"error,omitempty"`
}

// NewCmdShardInit builds `instactl shard init`. runF replaces the run in tests.
func NewCmdShardInit(f *Factory, out func() Output, runF func(*ShardInitOptions) error) *cobra.Command {
	o := &ShardInitOptions{}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the control database, the shard map and every logical shard (idempotent)",
		Long: `Create the control database (shards.control_database, owned by the app role) on the first
node, install the shard map, the node registry and the move journal in it, and create every
logical shard's schema (tables, next_id(), sequence, disabled fence) on the node the map
assigns it to: shards.logical shards round robin over the primaries of shards.role.

Shard schemas are owned by postgres; default privileges give the app role read/write on them
and on every copy a later move creates. The registry records the DSNs app servers use
(postgres://app@NODE:PORT/DATABASE).

Running it again changes nothing: existing assignments are kept (a moved shard stays where
it is) and existing schemas are left alone. The number of logical shards cannot change.`,
		Example: `  instactl shard init
  instactl shard init -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Batch < 1 {
				return usageErrorf("--batch must be >= 1 (got %d)", o.Batch)
			}
			if runF != nil {
				return runF(o)
			}
			return shardInitRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().IntVar(&o.Batch, "batch", 64, "shard schemas created per statement batch")
	return cmd
}

func shardInitRun(ctx context.Context, f *Factory, out Output, o *ShardInitOptions) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	st := e.st
	if err := shardEnsureControlDB(ctx, e); err != nil {
		return err
	}
	if err := shardForNodes(e.nodes, func(n shardNode) error { return shardDefaultPrivileges(ctx, e, n) }); err != nil {
		return err
	}
	reg := make([]shardmap.Node, len(e.nodes))
	for i, n := range e.nodes {
		reg[i] = shardmap.Node{Name: n.Name, DSN: n.appDSN(st.Shards.Database)}
	}
	f.IO.Statusf("shard init: %d logical shards over %s", st.Shards.Logical, shardNodeNames(e.nodes))
	ir, err := e.mover.Init(ctx, shardmove.InitSpec{LogicalShards: st.Shards.Logical, Nodes: reg, Batch: o.Batch})
	if err != nil {
		return err
	}
	mp, err := shardLoadMap(ctx, e)
	if err != nil {
		return err
	}
	if err := shardGrantControl(ctx, e); err != nil {
		return err
	}
	if err := shardForNodes(e.nodes, func(n shardNode) error { return shardGrantExisting(ctx, e, n, mp) }); err != nil {
		return err
	}
	res := ShardInitResult{ControlDatabase: st.Shards.ControlDatabase, ControlNode: e.nodes[0].Name,
		LogicalShards: mp.LogicalShards(), Created: ir.Created, Existing: ir.Existing}
	for _, name := range shardSortedNodes(mp) {
		res.Nodes = append(res.Nodes, ShardNodeInfo{Name: name, DSN: mp.Nodes[name].DSN, Shards: len(mp.ShardsOn(name))})
	}
	return render(f.IO, out, res, func(w io.Writer) error {
		fmt.Fprintf(w, "Shard map: %d logical shards over %d nodes (control database %s on %s).\n",
			res.LogicalShards, len(res.Nodes), res.ControlDatabase, res.ControlNode)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tSHARDS\tDSN")
		for _, n := range res.Nodes {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", n.Name, n.Shards, n.DSN)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		_, err := fmt.Fprintf(w, "Created %d shard schemas, %d already existed.\n", res.Created, res.Existing)
		return err
	})
}

func shardNodeNames(nodes []shardNode) string {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	return strings.Join(names, ", ")
}

// shardForNodes runs fn for every node at once and returns the first error.
func shardForNodes(nodes []shardNode, fn func(shardNode) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = fn(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func shardExec(ctx context.Context, dsn, what string, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// shardEnsureControlDB creates the control database on the first node, owned by the app role.
func shardEnsureControlDB(ctx context.Context, e *shardEnv) error {
	n := e.nodes[0]
	conn, err := pgx.Connect(ctx, n.dsn("postgres", "postgres"))
	if err != nil {
		return fmt.Errorf("connect to %s as postgres (is it up? see `instactl sandbox status`): %w", n.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	db := e.st.Shards.ControlDatabase
	var exists, appExists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1),
		EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)`, db, shardAppRole).Scan(&exists, &appExists); err != nil {
		return fmt.Errorf("look for database %s on %s: %w", db, n.Name, err)
	}
	if !appExists {
		return fmt.Errorf("role %s does not exist on %s: the host has not finished its bootstrap", shardAppRole, n.Name)
	}
	if exists {
		return nil
	}
	sql := fmt.Sprintf("CREATE DATABASE %s OWNER %s", pgx.Identifier{db}.Sanitize(), pgx.Identifier{shardAppRole}.Sanitize())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create database %s on %s: %w", db, n.Name, err)
	}
	return nil
}

// shardDefaultPrivileges lets the app role use every schema, table and sequence postgres
// creates in the shard database of node: the schemas shard init creates and the copies moves
// create. Idempotent.
func shardDefaultPrivileges(ctx context.Context, e *shardEnv, n shardNode) error {
	app := pgx.Identifier{shardAppRole}.Sanitize()
	sql := fmt.Sprintf(`ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON SCHEMAS TO %[1]s;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLES TO %[1]s;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %[1]s;`, app)
	return shardExec(ctx, n.dsn("postgres", e.st.Shards.Database),
		fmt.Sprintf("grant %s default privileges in database %s on %s (has the host bootstrapped?)", shardAppRole, e.st.Shards.Database, n.Name), sql)
}

// shardGrantControl lets app servers read the shard map.
func shardGrantControl(ctx context.Context, e *shardEnv) error {
	return shardExec(ctx, e.control, "grant the app role read access to the shard map",
		fmt.Sprintf("GRANT SELECT ON shard_map, shard_nodes, shard_map_meta TO %s", pgx.Identifier{shardAppRole}.Sanitize()))
}

// shardGrantExisting grants the app role what it needs on shard schemas node owns that were
// created before the default privileges were in place.
func shardGrantExisting(ctx context.Context, e *shardEnv, n shardNode, mp shardmap.Map) error {
	var schemas []string
	for _, s := range mp.ShardsOn(n.Name) {
		schemas = append(schemas, shardmap.SchemaName(s))
	}
	if len(schemas) == 0 {
		return nil
	}
	conn, err := pgx.Connect(ctx, n.dsn("postgres", e.st.Shards.Database))
	if err != nil {
		return fmt.Errorf("grant on %s: %w", n.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)
		AND NOT has_schema_privilege($2, oid, 'USAGE') ORDER BY nspname`, schemas, shardAppRole)
	if err != nil {
		return fmt.Errorf("grant on %s: %w", n.Name, err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(missing) == 0 {
		return err
	}
	var b strings.Builder
	for _, s := range missing {
		fmt.Fprintf(&b, "GRANT USAGE ON SCHEMA %[1]s TO %[2]s; GRANT ALL ON ALL TABLES IN SCHEMA %[1]s TO %[2]s; GRANT ALL ON ALL SEQUENCES IN SCHEMA %[1]s TO %[2]s;\n",
			s, shardAppRole)
	}
	if _, err := conn.Exec(ctx, b.String(), pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("grant %s on %d shard schemas on %s: %w", shardAppRole, len(missing), n.Name, err)
	}
	return nil
}

func shardLoadMap(ctx context.Context, e *shardEnv) (shardmap.Map, error) {
	conn, err := pgx.Connect(ctx, e.control)
	if err != nil {
		return shardmap.Map{}, fmt.Errorf("connect to the control database on %s (run `%s` first): %w",
			e.nodes[0].Name, shardCmdLine(e.f, "shard", "init"), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	mp, err := shardmap.Load(ctx, conn)
	if err != nil {
		return mp, fmt.Errorf("%w (run `%s` first)", err, shardCmdLine(e.f, "shard", "init"))
	}
	return mp, nil
}

func shardSortedNodes(mp shardmap.Map) []string {
	names := make([]string, 0, len(mp.Nodes))
	for n := range mp.Nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ---- shard statistics (map, rebalance) ----

// shardStat is one shard schema's size and rows written, as its node reports them.
type shardStat struct {
	Bytes  int64
	Writes int64
}

// shardNodeStats reads the size and rows written (n_tup_ins+upd+del) of every shard schema
// on one node, and the seconds its statistics cover.
func shardNodeStats(ctx context.Context, conn *pgx.Conn) (map[string]shardStat, float64, error) {
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

// ShardLoadReport is the size and write rate of every shard on the node the map says holds it.
type ShardLoadReport struct {
	Map   shardmap.Map
	Loads []shardmove.ShardLoad
	// Writes is rows written per shard since the statistics were reset (sample 0) or during the sample.
	Writes map[int]int64
	Nodes  map[string]*ShardNodeInfo
}

// shardCollectLoads reads every node's statistics. With sample > 0 write rates are the
// difference of two readings sample apart; otherwise the totals over the statistics' age.
// A node that cannot be read is reported in its Error and contributes nothing.
func shardCollectLoads(ctx context.Context, e *shardEnv, mp shardmap.Map, sample time.Duration) (*ShardLoadReport, error) {
	rep := &ShardLoadReport{Map: mp, Writes: map[int]int64{}, Nodes: map[string]*ShardNodeInfo{}}
	type reading struct {
		stats map[string]shardStat
		secs  float64
		err   error
	}
	read := func(conns map[string]*pgx.Conn) map[string]reading {
		out := map[string]reading{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, c := range conns {
			wg.Go(func() {
				s, secs, err := shardNodeStats(ctx, c)
				mu.Lock()
				out[name] = reading{s, secs, err}
				mu.Unlock()
			})
		}
		wg.Wait()
		return out
	}
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, name := range shardSortedNodes(mp) {
		info := &ShardNodeInfo{Name: name, DSN: mp.Nodes[name].DSN, Shards: len(mp.ShardsOn(name))}
		rep.Nodes[name] = info
		dsn := mp.Nodes[name].DSN
		if n, ok := e.node(name); ok {
			dsn = n.dsn("postgres", e.st.Shards.Database)
		}
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			info.Error = err.Error()
			continue
		}
		conns[name] = c
	}
	first := read(conns)
	last, elapsed := first, 0.0
	if sample > 0 {
		start := time.Now()
		e.f.IO.Statusf("shard: sampling write rates for %s", sample)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(sample):
		}
		last, elapsed = read(conns), time.Since(start).Seconds()
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
		rep.Loads = append(rep.Loads, shardmove.ShardLoad{Shard: a.Shard, Node: a.Node, Bytes: s.Bytes, WritesPerSec: rate})
		info.Bytes += s.Bytes
		info.Writes += writes
		info.WritesPerSec += rate
	}
	return rep, nil
}

// ---- shard map ----

// ShardMapOptions are the flags of `instactl shard map`.
type ShardMapOptions struct {
	// Sample, when > 0, measures write rates over this long instead of reporting totals.
	Sample time.Duration
}

// ShardMapEntry is one logical shard in `instactl shard map`.
type ShardMapEntry struct {
	Shard  int    `json:"shard"`
	Schema string `json:"schema"`
	Node   string `json:"node"`
	Epoch  int64  `json:"epoch"`
	State  string `json:"state"`
	Bytes  int64  `json:"bytes"`
	Writes int64  `json:"writes"`
}

// ShardMapView is what `instactl shard map` reports.
type ShardMapView struct {
	Version       int64           `json:"version"`
	LogicalShards int             `json:"logical_shards"`
	Sample        string          `json:"sample,omitempty"`
	Nodes         []ShardNodeInfo `json:"nodes"`
	Shards        []ShardMapEntry `json:"shards"`
}

// NewCmdShardMap builds `instactl shard map`. runF replaces the run in tests.
func NewCmdShardMap(f *Factory, out func() Output, runF func(*ShardMapOptions) error) *cobra.Command {
	o := &ShardMapOptions{}
	cmd := &cobra.Command{
		Use:   "map",
		Short: "Show which node holds each logical shard, with epochs, sizes and writes",
		Long: `Print every logical shard with the node holding it, its epoch (bumped by every move) and
state (active, or moving while a move runs), its size and the rows written to it, then a
summary per node. Sizes are pg_total_relation_size of the shard's tables; writes are
n_tup_ins + n_tup_upd + n_tup_del since the node's statistics were reset, or with --sample
the rows written (and the rate) during the sample. A node that cannot be read is reported,
the map is still printed.`,
		Example: `  instactl shard map
  instactl shard map --sample 10s
  instactl shard map -o json | jq '.shards[] | select(.node == "pg-2") | .shard'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Sample < 0 {
				return usageErrorf("--sample must be >= 0 (got %s)", o.Sample)
			}
			if runF != nil {
				return runF(o)
			}
			return shardMapRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().DurationVar(&o.Sample, "sample", 0, "measure write rates over this long (0: totals since the statistics reset)")
	return cmd
}

func shardMapRun(ctx context.Context, f *Factory, out Output, o *ShardMapOptions) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	mp, err := shardLoadMap(ctx, e)
	if err != nil {
		return err
	}
	rep, err := shardCollectLoads(ctx, e, mp, o.Sample)
	if err != nil {
		return err
	}
	v := ShardMapView{Version: mp.Version, LogicalShards: mp.LogicalShards()}
	if o.Sample > 0 {
		v.Sample = o.Sample.String()
	}
	bytes := map[int]int64{}
	for _, l := range rep.Loads {
		bytes[l.Shard] = l.Bytes
	}
	for _, a := range mp.Shards {
		v.Shards = append(v.Shards, ShardMapEntry{Shard: a.Shard, Schema: shardmap.SchemaName(a.Shard), Node: a.Node,
			Epoch: a.Epoch, State: a.State, Bytes: bytes[a.Shard], Writes: rep.Writes[a.Shard]})
	}
	for _, name := range shardSortedNodes(mp) {
		v.Nodes = append(v.Nodes, *rep.Nodes[name])
		if msg := rep.Nodes[name].Error; msg != "" {
			f.IO.Statusf("shard map: cannot read statistics of %s: %s", name, msg)
		}
	}
	return render(f.IO, out, v, func(w io.Writer) error { return shardRenderMap(w, v) })
}

func shardRenderMap(w io.Writer, v ShardMapView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tSCHEMA\tNODE\tEPOCH\tSTATE\tSIZE\tWRITES")
	for _, s := range v.Shards {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%d\n", s.Shard, s.Schema, s.Node, s.Epoch, s.State, humanBytes(s.Bytes), s.Writes)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSHARDS\tSIZE\tWRITES\tWRITES/S")
	for _, n := range v.Nodes {
		if n.Error != "" {
			fmt.Fprintf(tw, "%s\t%d\t-\t-\t-\n", n.Name, n.Shards)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.1f\n", n.Name, n.Shards, humanBytes(n.Bytes), n.Writes, n.WritesPerSec)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	over := "since the statistics were reset"
	if v.Sample != "" {
		over = "during a " + v.Sample + " sample"
	}
	_, err := fmt.Fprintf(w, "Map version %d: %d logical shards over %d nodes; writes are rows written %s.\n",
		v.Version, v.LogicalShards, len(v.Nodes), over)
	return err
}

// ---- running moves ----

// ShardMoveReport is what shard move, resume, rollback and rebalance --apply report.
type ShardMoveReport struct {
	DryRun bool                   `json:"dry_run,omitempty"`
	Plans  []shardmove.MovePlan   `json:"plans,omitempty"`
	Moves  []shardmove.MoveStatus `json:"moves,omitempty"`
	Errors []string               `json:"errors,omitempty"`
}

// shardInterruptible says a step may be cut short at once on SIGINT: it only waits or reads,
// and resume repeats it. Every other step is let finish.
func shardInterruptible(step string) bool {
	switch step {
	case "", shardmove.StepWaitSync, shardmove.StepVerify, shardmove.StepSyncCommit:
		return true
	}
	return false
}

// shardGraceful turns the command's context (cancelled by SIGINT/SIGTERM) into one for moves
// that is cancelled only between steps, or at once while every running move is in a step
// that only waits (shardInterruptible). It also prints progress events to stderr.
type shardGraceful struct {
	io          *IOStreams
	parent      context.Context
	ctx         context.Context
	cancel      context.CancelFunc
	mu          sync.Mutex
	running     map[int64]string
	interrupted bool
}

func newShardGraceful(parent context.Context, io *IOStreams) *shardGraceful {
	g := &shardGraceful{io: io, parent: parent, running: map[int64]string{}}
	g.ctx, g.cancel = context.WithCancel(context.WithoutCancel(parent))
	go func() {
		select {
		case <-parent.Done():
			g.mu.Lock()
			defer g.mu.Unlock()
			g.interrupted = true
			g.io.Statusf("shard: interrupted; stopping after the current step (the journal records where)")
			g.stopIfIdle()
		case <-g.ctx.Done():
		}
	}()
	return g
}

func (g *shardGraceful) stopIfIdle() {
	for _, s := range g.running {
		if !shardInterruptible(s) {
			return
		}
	}
	g.cancel()
}

func (g *shardGraceful) progress(ev shardmove.Event) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch ev.Message {
	case "started":
		g.running[ev.MoveID] = ev.Step
	case "done":
		g.running[ev.MoveID] = ""
	}
	g.io.Statusf("move %d: %s: %s", ev.MoveID, ev.Step, ev.Message)
	if g.interrupted {
		g.stopIfIdle()
	}
}

func (g *shardGraceful) finished(id int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.running, id)
}

// stopped reports whether the operator asked to stop.
func (g *shardGraceful) stopped() bool { return g.parent.Err() != nil }

func (g *shardGraceful) close() { g.cancel() }

func (g *shardGraceful) options(window time.Duration) shardmove.Options {
	return shardmove.Options{WindowBound: window, Progress: g.progress}
}

// shardLockedError maps a move held by another process to exit 4.
func shardLockedError(err error) error {
	var locked *shardmove.LockedError
	if errors.As(err, &locked) {
		return withCode(ExitLocked, err)
	}
	return err
}

// shardMoveError maps a move's error to an exit code and adds the exact next commands.
func shardMoveError(f *Factory, err error) error {
	var stuck *shardmove.StuckError
	var locked *shardmove.LockedError
	switch {
	case errors.As(err, &locked):
		return withCode(ExitLocked, err)
	case errors.As(err, &stuck):
		code := ExitError
		if errors.Is(err, shardmove.ErrWindowExceeded) {
			code = ExitUnsafe
		}
		return withCode(code, fmt.Errorf("%w\n  to continue: %s\n  to undo:     %s", err,
			shardCmdLine(f, "shard", "resume", strconv.FormatInt(stuck.MoveID, 10)),
			shardCmdLine(f, "shard", "abort", strconv.FormatInt(stuck.MoveID, 10))))
	case errors.Is(err, shardmove.ErrRefused):
		return withCode(ExitUsage, err)
	}
	return err
}

// shardRunMoves runs plans with at most parallel moves at a time and returns each one's
// status and error, in plan order. After an interrupt no further move starts.
func shardRunMoves(e *shardEnv, g *shardGraceful, plans []shardmove.MovePlan, parallel int, window time.Duration) ([]shardmove.MoveStatus, []error) {
	sts := make([]shardmove.MoveStatus, len(plans))
	errs := make([]error, len(plans))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, p := range plans {
		sem <- struct{}{}
		if g.stopped() {
			<-sem
			errs[i] = fmt.Errorf("move of shard %d not started: interrupted; nothing changed for it", p.Shard)
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			sts[i], errs[i] = e.mover.Move(g.ctx, p, g.options(window))
			g.finished(sts[i].ID)
		})
	}
	wg.Wait()
	return sts, errs
}

// shardFinish renders a report of moves and returns the command's error: the single error
// mapped to its exit code, or for several moves exit 5 when some succeeded.
func shardFinish(f *Factory, out Output, rep *ShardMoveReport, errs []error) error {
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, shardMoveError(f, err))
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	if err := render(f.IO, out, rep, func(w io.Writer) error {
		for _, st := range rep.Moves {
			if st.ID != 0 && st.State == shardmove.StateMoved {
				shardRenderMoved(w, f, st)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	switch {
	case len(failed) == 0:
		return nil
	case len(errs) == 1:
		return failed[0]
	case len(failed) < len(errs):
		for _, err := range failed {
			f.IO.Statusf("error: %v", err)
		}
		return withCode(ExitPartial, fmt.Errorf("%d of %d moves failed (above); the others succeeded", len(failed), len(errs)))
	}
	for _, err := range failed[1:] {
		f.IO.Statusf("error: %v", err)
	}
	return failed[0]
}

func shardRenderMoved(w io.Writer, f *Factory, st shardmove.MoveStatus) {
	what := "Moved"
	if st.Kind == shardmove.KindRollback {
		what = "Rolled back"
	}
	id := strconv.FormatInt(st.ID, 10)
	fmt.Fprintf(w, "%s shard %d %s -> %s (move %d, epoch %d -> %d): writes were blocked for %s (cutover attempts: %d).\n",
		what, st.Shard, st.From, st.To, st.ID, st.FromEpoch, st.FromEpoch+1, st.Window.Round(time.Microsecond*100), st.CutoverAttempts)
	fmt.Fprintf(w, "The old copy on %s is kept. Next: %s after the grace period, or %s to move it back.\n",
		st.From, shardCmdLine(f, "shard", "complete", id), shardCmdLine(f, "shard", "rollback", id))
}

// ---- shard move ----

// ShardMoveOptions are the arguments and flags of `instactl shard move`.
type ShardMoveOptions struct {
	Shards   []int
	To       string
	DryRun   bool
	Window   time.Duration
	Parallel int
}

// NewCmdShardMove builds `instactl shard move`. runF replaces the run in tests.
func NewCmdShardMove(f *Factory, out func() Output, runF func(*ShardMoveOptions) error) *cobra.Command {
	o := &ShardMoveOptions{}
	cmd := &cobra.Command{
		Use:   "move SHARD... --to NODE",
		Short: "Move logical shards to another node online, with a bounded write-blocked window",
		Long: `Plan first: for every shard print the pre-checks and the steps. A failed check (unknown shard
or node, the shard already on NODE, a table without a key, wal_level not logical, no free
replication slots or workers, not enough disk on NODE, another move of the shard open)
refuses the whole command with exit 2 before anything changes. --dry-run stops after the plan.

Then each shard is moved online: schema copy with the fence on, publication and
subscription, initial sync, chunked checksum verification, and the cutover: fence the source,
wait for the marker on the target, set the sequence past the source's, flip the map epoch,
lift the target's fence. If the cutover would block writes longer than --window, it is
abandoned with the source unfenced (retried up to 3 times, then exit 3: nothing changed,
resume or abort). Progress goes to stderr, one line per step.

Ctrl-C stops after the current step (waiting steps stop at once) and prints the exact resume
and abort commands; so does any failure (exit 1). Several shards move --parallel at a time;
if only some succeed the exit code is 5.

On success the write-blocked window is printed; the old copy stays on the source until
"shard complete MOVE", so "shard rollback MOVE" can undo the move until then.`,
		Example: `  # Show the checks and steps; change nothing
  instactl shard move 42 --to pg-2 --dry-run

  # Move it, blocking writes at most 500ms
  instactl shard move 42 --to pg-2 --window 500ms

  # Several shards, two at a time
  instactl shard move 3 5 7 11 --to pg-2 --parallel 2`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("shard move needs at least one SHARD (a logical shard number, see `instactl shard map`)")
			}
			o.Shards = o.Shards[:0]
			for _, a := range args {
				n, err := shardParseShard(a)
				if err != nil {
					return err
				}
				if slices.Contains(o.Shards, n) {
					return usageErrorf("shard %d is given twice", n)
				}
				o.Shards = append(o.Shards, n)
			}
			if o.To == "" {
				return usageErrorf("--to NODE is required: the node to move to (see `instactl shard map`)")
			}
			if err := shardCheckRunFlags(o.Window, o.Parallel); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardMoveRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.To, "to", "", "node to move the shards to (a host name such as pg-2)")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window a cutover may take")
	cmd.Flags().IntVar(&o.Parallel, "parallel", 2, "moves running at the same time")
	return cmd
}

func shardCheckRunFlags(window time.Duration, parallel int) error {
	if window <= 0 {
		return usageErrorf("--window must be > 0 (got %s)", window)
	}
	if parallel < 1 {
		return usageErrorf("--parallel must be >= 1 (got %d)", parallel)
	}
	return nil
}

// shardParseShard reads a logical shard number ("42" or "shard_0042").
func shardParseShard(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(s, "shard_"))
	if err != nil || n < 0 || n >= shardmap.MaxShards {
		return 0, usageErrorf("SHARD must be a logical shard number in [0,%d) such as 42 or shard_0042 (got %q)", shardmap.MaxShards, s)
	}
	return n, nil
}

func shardParseMoveID(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, usageErrorf("MOVE must be a move id as `instactl shard status` lists them (got %q)", s)
	}
	return n, nil
}

// shardPlanAll plans every move; text output prints each plan as it is made. Any refusal
// refuses the whole command (exit 2) before anything changes.
func shardPlanAll(ctx context.Context, f *Factory, out Output, e *shardEnv, wants []shardmove.PlannedMove) ([]shardmove.MovePlan, error) {
	var plans []shardmove.MovePlan
	var refusals []error
	for _, w := range wants {
		p, err := e.mover.PlanMove(ctx, w.Shard, w.To)
		if err != nil && !errors.Is(err, shardmove.ErrRefused) {
			return plans, err
		}
		if err != nil {
			refusals = append(refusals, err)
		}
		plans = append(plans, p)
		if out == OutputText {
			fmt.Fprintln(f.IO.Out, p.String())
		}
	}
	if len(refusals) > 0 {
		if out == OutputJSON {
			_ = render(f.IO, out, ShardMoveReport{DryRun: true, Plans: plans}, nil)
		}
		return plans, withCode(ExitUsage, fmt.Errorf("%w\nnothing was changed", errors.Join(refusals...)))
	}
	return plans, nil
}

func shardMoveRun(ctx context.Context, f *Factory, out Output, o *ShardMoveOptions) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	wants := make([]shardmove.PlannedMove, len(o.Shards))
	for i, s := range o.Shards {
		wants[i] = shardmove.PlannedMove{Shard: s, To: o.To}
	}
	return shardPlanAndRun(ctx, f, out, e, wants, o.DryRun, o.Parallel, o.Window)
}

func shardPlanAndRun(ctx context.Context, f *Factory, out Output, e *shardEnv, wants []shardmove.PlannedMove, dryRun bool, parallel int, window time.Duration) error {
	plans, err := shardPlanAll(ctx, f, out, e, wants)
	if err != nil {
		return err
	}
	if dryRun {
		return render(f.IO, out, ShardMoveReport{DryRun: true, Plans: plans}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, "Dry run: nothing was changed. Run the same command without --dry-run to move.")
			return err
		})
	}
	g := newShardGraceful(ctx, f.IO)
	defer g.close()
	sts, errs := shardRunMoves(e, g, plans, parallel, window)
	return shardFinish(f, out, &ShardMoveReport{Plans: plans, Moves: sts}, errs)
}

// ---- shard status ----

// ShardStatusOptions are the arguments of `instactl shard status`.
type ShardStatusOptions struct {
	// Move, when not 0, shows that move with its steps.
	Move int64
}

// ShardMoveDetail is one move with its journaled steps.
type ShardMoveDetail struct {
	Move  shardmove.MoveStatus   `json:"move"`
	Steps []shardmove.StepRecord `json:"steps"`
	Next  []string               `json:"next,omitempty"`
}

// NewCmdShardStatus builds `instactl shard status`. runF replaces the run in tests.
func NewCmdShardStatus(f *Factory, out func() Output, runF func(*ShardStatusOptions) error) *cobra.Command {
	o := &ShardStatusOptions{}
	cmd := &cobra.Command{
		Use:   "status [MOVE]",
		Short: "List shard moves from the journal, or show one move step by step",
		Long: `Without MOVE, list every move in the journal, newest first, with its state, the step it is at
and what to run next. With MOVE, show that move and every journaled step with its timing,
error and details (the cutover's details hold the measured window).

States: running (a live process holds it; one marked "crashed" has no process and needs
resume or abort), failed (stopped before the cutover finished: resume or abort), moved (the
target serves the shard; complete after the grace period, or rollback), completed, aborted,
rolled_back.`,
		Example: `  instactl shard status
  instactl shard status 7
  instactl shard status 7 -o json | jq '.steps[] | select(.step == "cutover") | .details'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Move = 0
			if len(args) == 1 {
				id, err := shardParseMoveID(args[0])
				if err != nil {
					return err
				}
				o.Move = id
			}
			if runF != nil {
				return runF(o)
			}
			return shardStatusRun(cmd.Context(), f, out(), o)
		},
	}
	return cmd
}

// shardNext lists the commands that take a move further, for its state.
func shardNext(f *Factory, st shardmove.MoveStatus) []string {
	id := strconv.FormatInt(st.ID, 10)
	switch {
	case st.State == shardmove.StateRunning && st.Locked:
		return nil
	case st.State == shardmove.StateRunning || st.State == shardmove.StateFailed:
		return []string{shardCmdLine(f, "shard", "resume", id), shardCmdLine(f, "shard", "abort", id)}
	case st.State == shardmove.StateMoved:
		return []string{shardCmdLine(f, "shard", "complete", id), shardCmdLine(f, "shard", "rollback", id)}
	}
	return nil
}

func shardStateLabel(st shardmove.MoveStatus) string {
	if st.State == shardmove.StateRunning && !st.Locked {
		return "running (crashed: no process holds it)"
	}
	return st.State
}

func shardStatusRun(ctx context.Context, f *Factory, out Output, o *ShardStatusOptions) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	moves, err := e.mover.Status(ctx)
	if err != nil {
		return fmt.Errorf("%w (run `%s` first)", err, shardCmdLine(f, "shard", "init"))
	}
	if o.Move == 0 {
		if moves == nil {
			moves = []shardmove.MoveStatus{}
		}
		return render(f.IO, out, moves, func(w io.Writer) error { return shardRenderMoves(w, f, moves) })
	}
	i := slices.IndexFunc(moves, func(m shardmove.MoveStatus) bool { return m.ID == o.Move })
	if i < 0 {
		return usageErrorf("move %d not found in the journal (see `%s`)", o.Move, shardCmdLine(f, "shard", "status"))
	}
	steps, err := e.mover.Steps(ctx, o.Move)
	if err != nil {
		return err
	}
	d := ShardMoveDetail{Move: moves[i], Steps: steps, Next: shardNext(f, moves[i])}
	return render(f.IO, out, d, func(w io.Writer) error { return shardRenderDetail(w, d) })
}

func shardRenderMoves(w io.Writer, f *Factory, moves []shardmove.MoveStatus) error {
	if len(moves) == 0 {
		_, err := fmt.Fprintln(w, "No shard moves recorded.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MOVE\tSHARD\tFROM\tTO\tKIND\tSTATE\tSTEP\tWINDOW\tUPDATED\tNEXT")
	for _, m := range moves {
		window := "-"
		if m.Window > 0 {
			window = m.Window.Round(100 * time.Microsecond).String()
		}
		next := strings.Join(shardNext(f, m), " | ")
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Shard, m.From, m.To, m.Kind,
			shardStateLabel(m), m.Step, window, m.UpdatedAt.UTC().Format(time.DateTime), orDash(next))
	}
	return tw.Flush()
}

func shardRenderDetail(w io.Writer, d ShardMoveDetail) error {
	m := d.Move
	fmt.Fprintf(w, "Move %d (%s): shard %d %s -> %s from epoch %d, %s at step %s\n", m.ID, m.Kind, m.Shard, m.From, m.To,
		m.FromEpoch, shardStateLabel(m), m.Step)
	if m.Error != "" {
		fmt.Fprintf(w, "Error: %s\n", m.Error)
	}
	if m.Window > 0 {
		fmt.Fprintf(w, "Write-blocked window: %s (cutover attempts: %d)\n", m.Window.Round(100*time.Microsecond), m.CutoverAttempts)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSTATUS\tSTARTED\tTOOK\tERROR / DETAILS")
	for _, s := range d.Steps {
		took := "-"
		if s.FinishedAt != nil {
			took = s.FinishedAt.Sub(s.StartedAt).Round(time.Millisecond).String()
		}
		info := s.Error
		if info == "" && len(s.Details) > 0 && string(s.Details) != "null" {
			info = string(s.Details)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Step, s.Status, s.StartedAt.UTC().Format("15:04:05.000"), took, orDash(info))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range d.Next {
		fmt.Fprintf(w, "next: %s\n", n)
	}
	return nil
}

// ---- resume, abort, complete, rollback ----

// ShardMoveIDOptions are the arguments and flags of shard resume, abort, complete and rollback.
type ShardMoveIDOptions struct {
	Move int64
	// Window bounds the cutover of resume and rollback.
	Window time.Duration
	// Grace is how long after the cutover complete waits before dropping the old copy.
	Grace time.Duration
}

func shardMoveIDArgs(o *ShardMoveIDOptions) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usageErrorf("%s needs exactly one MOVE id (see `instactl shard status`), got %d arguments", cmd.CommandPath(), len(args))
		}
		id, err := shardParseMoveID(args[0])
		o.Move = id
		return err
	}
}

// NewCmdShardResume builds `instactl shard resume`. runF replaces the run in tests.
func NewCmdShardResume(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "resume MOVE",
		Short: "Continue a stopped, failed or crashed move from the step it stopped at",
		Long: `Continue move MOVE from the step the journal recorded. Every step is idempotent: a cutover
cut short before the map flip is undone and redone, one cut short after it is finished.
Ctrl-C stops after the current step again. Exit codes are those of shard move.`,
		Example: `  instactl shard resume 7
  instactl shard resume 7 --window 1s`,
		Args: shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := shardCheckRunFlags(o.Window, 1); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardResumeRun(cmd.Context(), f, out(), o, false)
		},
	}
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window the cutover may take")
	return cmd
}

// NewCmdShardRollback builds `instactl shard rollback`. runF replaces the run in tests.
func NewCmdShardRollback(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "rollback MOVE",
		Short: "Move a moved (not yet completed) shard back, online, with the same guarantees",
		Long: `Move the shard of MOVE back to where it came from while MOVE is moved but not completed. It is
a full online move in the other direction (journaled as a rollback with MOVE as its parent):
the old, fenced copy on the original node is dropped and copied afresh, so the copy serving
writes is never touched. Complete the rollback's own move id later to drop the copy it
leaves behind. Exit 2 when MOVE cannot be rolled back (not moved, or completed).`,
		Example: `  instactl shard rollback 7`,
		Args:    shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := shardCheckRunFlags(o.Window, 1); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardResumeRun(cmd.Context(), f, out(), o, true)
		},
	}
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window the cutover may take")
	return cmd
}

func shardResumeRun(ctx context.Context, f *Factory, out Output, o *ShardMoveIDOptions, rollback bool) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	g := newShardGraceful(ctx, f.IO)
	defer g.close()
	var st shardmove.MoveStatus
	if rollback {
		st, err = e.mover.Rollback(g.ctx, o.Move, g.options(o.Window))
	} else {
		st, err = e.mover.Resume(g.ctx, o.Move, g.options(o.Window))
	}
	g.finished(st.ID)
	rep := &ShardMoveReport{}
	if st.ID != 0 {
		rep.Moves = []shardmove.MoveStatus{st}
	}
	return shardFinish(f, out, rep, []error{err})
}

// NewCmdShardAbort builds `instactl shard abort`. runF replaces the run in tests.
func NewCmdShardAbort(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "abort MOVE",
		Short: "Undo a move that has not cut over: the source keeps the shard, nothing is left behind",
		Long: `Undo move MOVE from whatever step it stopped at: lift the source's fence, drop the
subscription, publication and replication slots, the target's copy and the marker table.
It converges from any journaled step and can be run again. A move whose target already
takes writes cannot be aborted (it says so): resume it, then roll it back.`,
		Example: `  instactl shard abort 7`,
		Args:    shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return shardAbortRun(cmd.Context(), f, out(), o)
		},
	}
	return cmd
}

func shardAbortRun(ctx context.Context, f *Factory, out Output, o *ShardMoveIDOptions) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	// An abort is short and must not be left half done by Ctrl-C; it converges when re-run anyway.
	st, err := e.mover.Abort(context.WithoutCancel(ctx), o.Move)
	if err != nil {
		return shardLockedError(err)
	}
	return render(f.IO, out, st, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "Aborted move %d: shard %d stays on %s, unfenced; nothing of the move is left on %s.\n",
			st.ID, st.Shard, st.From, st.To)
		return err
	})
}

// NewCmdShardComplete builds `instactl shard complete`. runF replaces the run in tests.
func NewCmdShardComplete(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "complete MOVE",
		Short: "Drop a moved shard's old copy and replication objects after the grace period",
		Long: `Finish move MOVE: drop the subscription, the publication, their slots and the old copy of
the shard on the source. After this the move cannot be rolled back. Before --grace has
passed since the cutover it refuses with exit 3 and changes nothing. Running it again on a
completed move changes nothing.`,
		Example: `  instactl shard complete 7
  instactl shard complete 7 --grace 0s   # right away: no rollback after this`,
		Args: shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Grace < 0 {
				return usageErrorf("--grace must be >= 0 (got %s)", o.Grace)
			}
			if runF != nil {
				return runF(o)
			}
			return shardCompleteRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().DurationVar(&o.Grace, "grace", 10*time.Minute, "how long after the cutover the old copy must be kept")
	return cmd
}

func shardCompleteRun(ctx context.Context, f *Factory, out Output, o *ShardMoveIDOptions) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	st, err := e.mover.Complete(context.WithoutCancel(ctx), o.Move, shardmove.CompleteOptions{Grace: o.Grace})
	if errors.Is(err, shardmove.ErrRefused) {
		return withCode(ExitUnsafe, err)
	}
	if err != nil {
		return shardLockedError(err)
	}
	return render(f.IO, out, st, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "Completed move %d: shard %d is on %s; the old copy and every replication object on %s are gone.\n",
			st.ID, st.Shard, st.To, st.From)
		return err
	})
}

// ---- shard rebalance ----

// ShardRebalanceOptions are the flags of `instactl shard rebalance`.
type ShardRebalanceOptions struct {
	Apply      bool
	Target     float64
	SizeWeight float64
	Sample     time.Duration
	MaxMoves   int
	Window     time.Duration
	Parallel   int
}

// ShardRebalanceReport is what `instactl shard rebalance` reports.
type ShardRebalanceReport struct {
	Plan   shardmove.RebalancePlan `json:"plan"`
	Target float64                 `json:"target"`
	Sample string                  `json:"sample,omitempty"`
	Shards []shardmove.ShardLoad   `json:"shards"`
	Result *ShardMoveReport        `json:"result,omitempty"`
}

// NewCmdShardRebalance builds `instactl shard rebalance`. runF replaces the run in tests.
func NewCmdShardRebalance(f *Factory, out func() Output, runF func(*ShardRebalanceOptions) error) *cobra.Command {
	o := &ShardRebalanceOptions{}
	var plan bool
	cmd := &cobra.Command{
		Use:   "rebalance --plan|--apply",
		Short: "Propose (or carry out) moves that even out node load by size and write rate",
		Long: `Read every shard's size (pg_total_relation_size of its tables) and write rate (rows
inserted, updated and deleted during --sample, or since the statistics were reset with
--sample 0) from the nodes, and propose moves that bring the most loaded node to at most
--target times the mean. A shard's load is its share of the total size weighted by
--size-weight plus its share of the write rate weighted by the rest.

--plan (the default) prints the moves and changes nothing. --apply plans every move (any
refused check refuses all, exit 2) and carries them out like "shard move".`,
		Example: `  instactl shard rebalance --plan
  instactl shard rebalance --plan --sample 1m --target 1.1
  instactl shard rebalance --apply --parallel 2`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case plan && o.Apply:
				return usageErrorf("--plan and --apply exclude each other: --plan prints the moves, --apply carries them out")
			case o.Target < 1:
				return usageErrorf("--target must be >= 1 (max/mean node load; got %g)", o.Target)
			case o.SizeWeight < 0 || o.SizeWeight > 1:
				return usageErrorf("--size-weight must be in [0,1] (got %g)", o.SizeWeight)
			case o.Sample < 0:
				return usageErrorf("--sample must be >= 0 (got %s)", o.Sample)
			case o.MaxMoves < 1:
				return usageErrorf("--max-moves must be >= 1 (got %d)", o.MaxMoves)
			}
			if err := shardCheckRunFlags(o.Window, o.Parallel); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardRebalanceRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().BoolVar(&plan, "plan", false, "print the proposed moves and change nothing (the default)")
	cmd.Flags().BoolVar(&o.Apply, "apply", false, "carry the proposed moves out")
	cmd.Flags().Float64Var(&o.Target, "target", 1.15, "wanted max/mean node load")
	cmd.Flags().Float64Var(&o.SizeWeight, "size-weight", 0.5, "weight of size in a shard's load (write rate gets the rest)")
	cmd.Flags().DurationVar(&o.Sample, "sample", 10*time.Second, "measure write rates over this long (0: totals since the statistics reset)")
	cmd.Flags().IntVar(&o.MaxMoves, "max-moves", 64, "most moves to propose")
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window a cutover may take (--apply)")
	cmd.Flags().IntVar(&o.Parallel, "parallel", 2, "moves running at the same time (--apply)")
	return cmd
}

func shardRebalanceRun(ctx context.Context, f *Factory, out Output, o *ShardRebalanceOptions) error {
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	mp, err := shardLoadMap(ctx, e)
	if err != nil {
		return err
	}
	loads, err := shardCollectLoads(ctx, e, mp, o.Sample)
	if err != nil {
		return err
	}
	for _, name := range shardSortedNodes(mp) {
		if msg := loads.Nodes[name].Error; msg != "" {
			return fmt.Errorf("cannot read the statistics of node %s, so no plan can be trusted: %s", name, msg)
		}
	}
	rp, err := shardmove.Rebalance(shardSortedNodes(mp), loads.Loads,
		shardmove.RebalanceOptions{Target: o.Target, SizeWeight: o.SizeWeight, MaxMoves: o.MaxMoves})
	if err != nil {
		return err
	}
	rep := ShardRebalanceReport{Plan: rp, Target: o.Target, Shards: loads.Loads}
	if o.Sample > 0 {
		rep.Sample = o.Sample.String()
	}
	if !o.Apply || len(rp.Moves) == 0 {
		return render(f.IO, out, rep, func(w io.Writer) error { return shardRenderRebalance(w, f, rep, o.Apply) })
	}
	if out == OutputText {
		if err := shardRenderRebalance(f.IO.Out, f, rep, true); err != nil {
			return err
		}
	}
	// The moves' own plans and results follow; in JSON the report is the moves' report.
	return shardPlanAndRun(ctx, f, out, e, rp.Moves, false, o.Parallel, o.Window)
}

func shardRenderRebalance(w io.Writer, f *Factory, rep ShardRebalanceReport, apply bool) error {
	p := rep.Plan
	fmt.Fprintf(w, "Node load max/mean: %.3f now, %.3f after %d moves (target %.2f).\n", p.Before, p.After, len(p.Moves), rep.Target)
	if len(p.Moves) == 0 {
		if p.Reached {
			_, err := fmt.Fprintln(w, "No changes.")
			return err
		}
		_, err := fmt.Fprintln(w, "No move helps (a single shard may be above the target on its own).")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tFROM\tTO\tSIZE\tLOAD")
	for _, m := range p.Moves {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.4f\n", m.Shard, m.From, m.To, humanBytes(m.Bytes), m.Load)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	nodes := make([]string, 0, len(p.Loads))
	for n := range p.Loads {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	for _, n := range nodes {
		fmt.Fprintf(w, "  %s: load %.3f after the moves\n", n, p.Loads[n])
	}
	if !p.Reached {
		fmt.Fprintln(w, "The target is not reached with these moves (no further single move helps).")
	}
	if !apply {
		_, err := fmt.Fprintf(w, "Nothing was changed. Carry it out with: %s\n", shardCmdLine(f, "shard", "rebalance", "--apply"))
		return err
	}
	return nil
}
