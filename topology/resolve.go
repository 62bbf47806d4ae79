package topology

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/stack"
)

// Resolve returns the topology now: the stack's seed, recorded in and read back from the
// control database (shards.control_database on whichever member of the first Postgres group
// is primary now, see ControlDSN),
// connecting as user. When the control database cannot be read (it does not exist before
// `shard init`, or its node is down) it returns the stack's topology with that error, so a
// caller that can work from the stack file alone decides knowingly.
func Resolve(ctx context.Context, st *stack.Stack, user string) (Topology, error) {
	seed, err := FromStack(st)
	if err != nil {
		return Topology{}, err
	}
	if len(seed.OfKind(KindPostgres)) == 0 {
		return seed, nil // no PostgreSQL, so no control database: the stack is all there is
	}
	dsn, err := ControlDSN(seed, user, st.Shards.ControlDatabase)
	if err != nil {
		return seed, err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return seed, fmt.Errorf("read the topology: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	cur, err := Current(ctx, conn, seed)
	if err != nil {
		return seed, err
	}
	return cur, nil
}

// ControlDSN is a libpq URL reaching database db as user on whichever member of the control
// group (the first Postgres group, see ControlNode) accepts writes now: every member is listed
// and target_session_attrs=read-write skips standbys and a fenced old primary, so the control
// database is found after a failover without knowing who was promoted. connect_timeout=2
// bounds each member's attempt.
func ControlDSN(t Topology, user, db string) (string, error) {
	g, _, err := t.ControlNode()
	if err != nil && len(g.Members) == 0 {
		return "", err
	}
	hosts := make([]string, len(g.Members))
	for i, m := range g.Members {
		hosts[i] = m.Addr.String()
	}
	u := url.URL{Scheme: "postgres", User: url.User(user), Host: strings.Join(hosts, ","), Path: "/" + db,
		RawQuery: "sslmode=disable&connect_timeout=2&target_session_attrs=read-write"}
	return u.String(), nil
}
