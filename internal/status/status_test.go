package status

import (
	"testing"

	"github.com/instactl/instactl/stack"
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
	attachReplication(st, hosts, replicas)
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
