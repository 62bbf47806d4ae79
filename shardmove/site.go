package shardmove

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/controldb"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/topology"
)

// Site is where the shards of a stack live: the physical nodes (the PostgreSQL groups of the
// topology, reached at their primary now), the database holding the shard schemas on each,
// and the control database on the first node. instactl connects as the superuser postgres;
// app servers as AppRole.
type Site struct {
	Topology        topology.Topology
	Database        string
	ControlDatabase string
	AppRole         string
}

// adminUser is the role instactl connects to the nodes as.
const adminUser = "postgres"

// Nodes returns the physical nodes, in stack order.
func (s Site) Nodes() []topology.Group { return s.Topology.OfKind(topology.KindPostgres) }

// NodeNames returns the names of the physical nodes, in stack order.
func (s Site) NodeNames() []string {
	var out []string
	for _, g := range s.Nodes() {
		out = append(out, g.Name)
	}
	return out
}

// ControlNode is the name of the node holding the control database.
func (s Site) ControlNode() string {
	g, _, _ := s.Topology.ControlNode()
	return g.Name
}

// ControlDSN reaches the control database as postgres, on the primary of the first node.
func (s Site) ControlDSN() (string, error) {
	_, m, err := s.Topology.ControlNode()
	if err != nil {
		return "", err
	}
	return m.DSN(adminUser, s.ControlDatabase), nil
}

// AdminDSN reaches database db on the primary of node as postgres.
func (s Site) AdminDSN(node, db string) (string, error) {
	m, err := s.Topology.Primary(node)
	if err != nil {
		return "", err
	}
	return m.DSN(adminUser, db), nil
}

// Config is the Mover configuration for the site: the control database and a direct admin
// connection to every node's primary. freeBytes may be nil (see Config.FreeBytes).
func (s Site) Config(freeBytes func(ctx context.Context, node string) (int64, error)) (Config, error) {
	ctl, err := s.ControlDSN()
	if err != nil {
		return Config{}, err
	}
	admin := map[string]string{}
	for _, g := range s.Nodes() {
		dsn, err := s.AdminDSN(g.Name, s.Database)
		if err != nil {
			return Config{}, err
		}
		admin[g.Name] = dsn
	}
	return Config{ControlDSN: ctl, AdminDSN: admin, FreeBytes: freeBytes}, nil
}

// SiteInit is what InitSite did.
type SiteInit struct {
	InitResult
	// Map is the shard map after the init.
	Map shardmap.Map
}

// InitSite makes a stack's shards exist, idempotently: the control database (owned by the
// app role) on the first node, default privileges for the app role on every node, the control
// schema with the topology seeded from s.Topology, the shard map, every shard schema on the
// node the map assigns it to (Mover.Init), and the app role's read access to the map and its
// use of shard schemas created before the default privileges were in place.
func InitSite(ctx context.Context, s Site, logicalShards, batch int) (SiteInit, error) {
	var res SiteInit
	nodes := s.Nodes()
	if len(nodes) == 0 {
		return res, errors.New("init shards: the topology has no PostgreSQL nodes")
	}
	if err := s.ensureControlDB(ctx); err != nil {
		return res, err
	}
	if err := forNodes(nodes, func(g topology.Group) error { return s.defaultPrivileges(ctx, g.Name) }); err != nil {
		return res, err
	}
	reg := make([]shardmap.Node, len(nodes))
	for i, g := range nodes {
		p, err := g.PrimaryMember()
		if err != nil {
			return res, err
		}
		reg[i] = shardmap.Node{Name: g.Name, DSN: p.AppDSN(s.AppRole, s.Database)}
	}
	cfg, err := s.Config(nil)
	if err != nil {
		return res, err
	}
	ctl, err := pgx.Connect(ctx, cfg.ControlDSN)
	if err != nil {
		return res, fmt.Errorf("connect to the control database on %s: %w", s.ControlNode(), err)
	}
	defer ctl.Close(context.WithoutCancel(ctx))
	if err := topology.Seed(ctx, ctl, s.Topology); err != nil {
		return res, err
	}
	res.InitResult, err = New(cfg).Init(ctx, InitSpec{LogicalShards: logicalShards, Nodes: reg, Batch: batch})
	if err != nil {
		return res, err
	}
	if res.Map, err = shardmap.Load(ctx, ctl); err != nil {
		return res, err
	}
	if err := controldb.GrantRead(ctx, ctl, s.AppRole); err != nil {
		return res, err
	}
	err = forNodes(nodes, func(g topology.Group) error { return s.grantExisting(ctx, g.Name, res.Map.ShardsOn(g.Name)) })
	return res, err
}

// forNodes runs fn for every node at once and returns every error.
func forNodes(nodes []topology.Group, fn func(topology.Group) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, g := range nodes {
		wg.Go(func() { errs[i] = fn(g) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ensureControlDB creates the control database on the first node, owned by the app role.
func (s Site) ensureControlDB(ctx context.Context) error {
	node := s.ControlNode()
	dsn, err := s.AdminDSN(node, "postgres")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect to %s as postgres (is it up? see `instactl sandbox status`): %w", node, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := controldb.EnsureDatabase(ctx, conn, s.ControlDatabase, s.AppRole); err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	return nil
}

func (s Site) exec(ctx context.Context, node, what, sql string) error {
	dsn, err := s.AdminDSN(node, s.Database)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// defaultPrivileges lets the app role use every schema, table and sequence postgres creates
// in the shard database of node: the schemas init creates and the copies moves create.
func (s Site) defaultPrivileges(ctx context.Context, node string) error {
	app := pgx.Identifier{s.AppRole}.Sanitize()
	sql := fmt.Sprintf(`ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON SCHEMAS TO %[1]s;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLES TO %[1]s;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %[1]s;`, app)
	return s.exec(ctx, node, fmt.Sprintf("grant %s default privileges in database %s on %s (has the host bootstrapped?)",
		s.AppRole, s.Database, node), sql)
}

// grantExisting grants the app role what it needs on the shard schemas of node that were
// created before the default privileges were in place.
func (s Site) grantExisting(ctx context.Context, node string, shards []int) error {
	var schemas []string
	for _, sh := range shards {
		schemas = append(schemas, shardmap.SchemaName(sh))
	}
	if len(schemas) == 0 {
		return nil
	}
	dsn, err := s.AdminDSN(node, s.Database)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("grant on %s: %w", node, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)
		AND NOT has_schema_privilege($2, oid, 'USAGE') ORDER BY nspname`, schemas, s.AppRole)
	if err != nil {
		return fmt.Errorf("grant on %s: %w", node, err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(missing) == 0 {
		return err
	}
	var b strings.Builder
	for _, sc := range missing {
		fmt.Fprintf(&b, "GRANT USAGE ON SCHEMA %[1]s TO %[2]s; GRANT ALL ON ALL TABLES IN SCHEMA %[1]s TO %[2]s; GRANT ALL ON ALL SEQUENCES IN SCHEMA %[1]s TO %[2]s;\n",
			sc, s.AppRole)
	}
	if _, err := conn.Exec(ctx, b.String(), pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("grant %s on %d shard schemas on %s: %w", s.AppRole, len(missing), node, err)
	}
	return nil
}

// SortedNodes returns the node names of mp in order.
func SortedNodes(mp shardmap.Map) []string {
	names := make([]string, 0, len(mp.Nodes))
	for n := range mp.Nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
