package topology_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/topology"
)

func TestEvents(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	topo, err := topology.FromStack(testStack(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := topology.Seed(ctx, conn, topo); err != nil {
		t.Fatal(err)
	}
	if got, err := topology.LastEvents(ctx, conn, ""); err != nil || len(got) != 0 {
		t.Fatalf("no events yet: %v %v", got, err)
	}
	for _, e := range []topology.Event{
		{Group: "pg-0", Op: "switchover", OldPrimary: "pg-0", NewPrimary: "pg-1", Epoch: 2, WriteBlock: 312 * time.Millisecond, LossBytes: 0},
		{Group: "pg-0", Op: "failover", OldPrimary: "pg-1", NewPrimary: "pg-0", Epoch: 3, LossBytes: -1, Detail: "old primary unreachable"},
		{Group: "redis-0", Op: "switchover", OldPrimary: "redis-0", NewPrimary: "redis-1", Epoch: 2, WriteBlock: 80 * time.Millisecond},
	} {
		if err := topology.RecordEvent(ctx, conn, e); err != nil {
			t.Fatal(err)
		}
	}
	last, err := topology.LastEvents(ctx, conn, "")
	if err != nil {
		t.Fatal(err)
	}
	if e := last["pg-0"]; e.Op != "failover" || e.Epoch != 3 || e.LossBytes != -1 || e.Detail != "old primary unreachable" || e.At.IsZero() {
		t.Fatalf("last event of pg-0: %+v", e)
	}
	sw, err := topology.LastEvents(ctx, conn, "switchover")
	if err != nil {
		t.Fatal(err)
	}
	if e := sw["pg-0"]; e.NewPrimary != "pg-1" || e.WriteBlock != 312*time.Millisecond {
		t.Fatalf("last switchover of pg-0: %+v", e)
	}
	if e := sw["redis-0"]; e.Epoch != 2 || e.WriteBlock != 80*time.Millisecond {
		t.Fatalf("last switchover of redis-0: %+v", e)
	}
	if err := topology.RecordEvent(ctx, conn, topology.Event{Group: "pg-9", Op: "switchover"}); err == nil {
		t.Fatal("an event of an unknown group was recorded")
	}
}
