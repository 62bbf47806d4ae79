package backup

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/cloudtest"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// TestReplicasFollowTopology proves that the hosts a backup freezes are the standbys the
// control database records now, not the stack file's: once pg-1 (and redis-1) are recorded
// primary, pg-0 (and redis-0) are backed up, against the new primary. Without the control
// database (before `shard init`) the stack file's standbys are backed up, and the run says so.
func TestReplicasFollowTopology(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	// pg-0, the first host of the stack, is the test cluster's address and port: the control
	// database is where topology.Resolve looks for it.
	st := &stack.Stack{
		Name: "bktopo", Provider: "sandbox", Network: stack.Network{AddressBase: netip.MustParseAddr(pg.Host)},
		Roles: []stack.Role{
			{Name: "pg", Count: 2, Replicas: 1, Port: pg.Port, Volumes: stack.VolumeSet{Count: 1, SizeGiB: 1, Mount: "/var/lib/postgresql"}},
			{Name: "redis", Count: 2, Replicas: 1, Port: 6379, Volumes: stack.VolumeSet{Count: 1, SizeGiB: 1, Mount: "/var/lib/redis"}},
		},
		Shards: stack.Shards{Role: "pg", Database: "instagram", ControlDatabase: "bktopo_control"},
	}
	fake := cloudtest.NewFake()
	for _, h := range st.Hosts() {
		in, err := fake.CreateInstance(ctx, cloud.InstanceSpec{Name: st.Name + "-" + h.Name(), Role: h.Role, Index: h.Index,
			Tags: map[string]string{cloud.TagStack: st.Name}})
		if err != nil {
			t.Fatal(err)
		}
		v, err := fake.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: 1, Tags: map[string]string{cloud.TagStack: st.Name}})
		if err != nil {
			t.Fatal(err)
		}
		if err := fake.AttachVolume(ctx, v.ID, in.ID, "/dev/sdf"); err != nil {
			t.Fatal(err)
		}
	}
	var events []string
	env := Env{Stack: st, Provider: fake, StateDir: t.TempDir(), Progress: func(e Event) { events = append(events, e.Step+": "+e.Message) }}
	// picks renders what replicas chooses: "host (primary P)" per host, or the error.
	picks := func(target string) string {
		t.Helper()
		topo, err := env.topology(ctx)
		if err != nil {
			return "error: " + err.Error()
		}
		hosts, err := env.replicas(ctx, target, topo)
		if err != nil {
			return "error: " + err.Error()
		}
		var out []string
		for _, h := range hosts {
			p := "none"
			if h.primary != nil {
				p = h.primary.Name
			}
			if len(h.volumes) != 1 {
				t.Errorf("%s: %d volumes, want 1", h.name(), len(h.volumes))
			}
			out = append(out, h.name()+" (primary "+p+")")
		}
		return strings.Join(out, ", ")
	}
	want := func(target, got, want string) {
		t.Helper()
		if got != want {
			t.Fatalf("backup %s picks %s, want %s", target, got, want)
		}
	}

	// Before `shard init`: no control database; the stack file's standbys, knowingly.
	want("pg", picks("pg"), "bktopo-pg-1 (primary bktopo-pg-0)")
	want("redis", picks("redis"), "bktopo-redis-1 (primary bktopo-redis-0)")
	if len(events) == 0 || !strings.Contains(events[0], "topology: ") || !strings.Contains(events[0], "stack file") {
		t.Fatalf("no event says the stack file's topology was used: %q", events)
	}

	// With the control database, seeded from the stack: the same hosts.
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE bktopo_control"); err != nil {
		t.Fatal(err)
	}
	events = nil
	want("pg", picks("pg"), "bktopo-pg-1 (primary bktopo-pg-0)")
	want("redis", picks("redis"), "bktopo-redis-1 (primary bktopo-redis-0)")
	if len(events) != 0 {
		t.Fatalf("events with a readable control database: %q", events)
	}

	// A failover recorded: pg-1 and redis-1 are primary now. The backup follows.
	ctl, err := pgx.Connect(ctx, pg.URL("bktopo_control"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close(context.Background())
	for group, host := range map[string]string{"pg-0": "pg-1", "redis-0": "redis-1"} {
		if _, err := topology.RecordPrimary(ctx, ctl, group, host, 1); err != nil {
			t.Fatal(err)
		}
	}
	want("pg", picks("pg"), "bktopo-pg-0 (primary bktopo-pg-1)")
	want("redis", picks("redis"), "bktopo-redis-0 (primary bktopo-redis-1)")
}
