package topology

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/stack"
)

// Resolve returns the topology now: the stack's seed, recorded in and read back from the
// control database (shards.control_database on the primary of the first Postgres group),
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
	_, ctl, err := seed.ControlNode()
	if err != nil {
		return seed, err
	}
	conn, err := pgx.Connect(ctx, ctl.DSN(user, st.Shards.ControlDatabase))
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
