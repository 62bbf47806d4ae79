package status

import (
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

func TestParseAndReplication(t *testing.T) {
	st, err := stack.Parse("s.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	replicas := map[string]replicaLine{}
	pg0 := &Host{Name: "pg-0", Role: "pg", Index: 0, Reachable: true}
	parse(pg0, "bootstrap=done\nservice.postgres=running\nreplica.pg-1=streaming,4096,0.250\n", replicas)
	redis0 := &Host{Name: "redis-0", Role: "redis", Index: 0}
	parse(redis0, "bootstrap=done\nservice.redis=running\nredis.offset=1000\nredis.replica=ip=127.0.10.8,port=6379,state=online,offset=900,lag=1\n", replicas)
	if !pg0.Healthy() || len(pg0.Services) != 1 {
		t.Fatalf("pg-0: %+v", pg0)
	}
	hosts := []Host{
		{Name: "pg-1", Role: "pg", Index: 1, Address: "127.0.10.4", Reachable: true, Bootstrap: "done"},
		{Name: "pg-3", Role: "pg", Index: 3, Address: "127.0.10.6", Reachable: true, Bootstrap: "done"},
		{Name: "redis-1", Role: "redis", Index: 1, Address: "127.0.10.8", Reachable: true, Bootstrap: "done"},
	}
	topo, err := topology.FromStack(st)
	if err != nil {
		t.Fatal(err)
	}
	attachReplication(topo, hosts, replicas)
	if r := hosts[0].Replication; r == nil || r.State != "streaming" || r.LagBytes != 4096 || r.LagSeconds != 0.25 || r.Primary != "pg-0" {
		t.Errorf("pg-1 replication: %+v", r)
	}
	if r := hosts[1].Replication; r == nil || r.State != "absent" || r.Primary != "pg-2" || hosts[1].Healthy() {
		t.Errorf("pg-3, not listed by its primary, must be absent and unhealthy: %+v", r)
	}
	if r := hosts[2].Replication; r == nil || r.State != "online" || r.LagBytes != 100 {
		t.Errorf("redis-1 replication: %+v", r)
	}
}

// TestReplicationAfterFailover: once the topology records pg-1 as the primary of pg-0, pg-0 is
// the standby status reports on, under pg-1, and pg-1 is asked for its standbys.
func TestReplicationAfterFailover(t *testing.T) {
	st, err := stack.Parse("s.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	topo, err := topology.FromStack(st)
	if err != nil {
		t.Fatal(err)
	}
	topo.Groups[0].Primary, topo.Groups[0].Epoch = "pg-1", 2
	replicas := map[string]replicaLine{}
	pg1 := &Host{Name: "pg-1", Role: "pg", Index: 1, Address: "127.0.10.4"}
	parse(pg1, "bootstrap=done\nreplica.pg-0=streaming,0,0.000\n", replicas)
	hosts := []Host{
		{Name: "pg-0", Role: "pg", Index: 0, Address: "127.0.10.3"},
		{Name: "pg-1", Role: "pg", Index: 1, Address: "127.0.10.4"},
	}
	attachReplication(topo, hosts, replicas)
	if r := hosts[0].Replication; r == nil || r.Primary != "pg-1" || r.State != "streaming" {
		t.Errorf("pg-0, standby of pg-1 now: %+v", r)
	}
	if r := hosts[1].Replication; r != nil {
		t.Errorf("pg-1, the primary now, has replication %+v", r)
	}
	cmd, err := hostCommand(st, topo, &Host{Name: "pg-1", Role: "pg", Index: 1, Address: "127.0.10.4"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cmd.String(), "pg_stat_replication") {
		t.Errorf("the primary now is not asked for its standbys:\n%s", cmd.String())
	}
	cmd, err = hostCommand(st, topo, &Host{Name: "pg-0", Role: "pg", Index: 0, Address: "127.0.10.3"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cmd.String(), "pg_stat_replication") {
		t.Errorf("the old primary, a standby now, is asked for standbys:\n%s", cmd.String())
	}
}
