package cli

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/controldb"
	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/internal/testenv"
)

// TestMovesHoldGroup: a shard move running (or stopped half way) to or from a node holds its
// switchover back with the command that finishes it; finished moves and other nodes' do not.
func TestMovesHoldGroup(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	dsn := pg.URL("postgres")
	if err := movesHoldGroup(ctx, dsn, "pg-0"); err != nil {
		t.Fatalf("no control schema yet: %v", err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := controldb.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	shard := 0
	insert := func(from, to, state string) {
		t.Helper()
		shard++ // one open move per shard
		if _, err := conn.Exec(ctx, `INSERT INTO shard_moves (shard, from_node, to_node, from_epoch, state, step, plan)
			VALUES ($4, $1, $2, 1, $3, 'copy', '{}')`, from, to, state, shard); err != nil {
			t.Fatal(err)
		}
	}
	insert("pg-0", "pg-2", "completed")
	insert("pg-4", "pg-2", "running")
	if err := movesHoldGroup(ctx, dsn, "pg-0"); err != nil {
		t.Fatalf("only finished moves and other nodes' moves: %v", err)
	}
	insert("pg-2", "pg-0", "failed")
	err = movesHoldGroup(ctx, dsn, "pg-0")
	if !errors.Is(err, failover.ErrBusy) || !strings.Contains(err.Error(), "instactl shard resume 3") {
		t.Fatalf("a move into pg-0 stopped half way: %v", err)
	}
}
