package topology

import (
	"net/netip"
	"path/filepath"
	"testing"
)

func TestCacheRoundTrip(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state", "topology.json")
	if _, ok, err := loadCache(file); ok || err != nil {
		t.Fatalf("no copy yet: ok %v, err %v", ok, err)
	}
	in := Topology{Source: SourceControl, Groups: []Group{{Name: "pg-0", Kind: KindPostgres, Primary: "pg-1", Epoch: 4,
		Members: []Member{{Host: "pg-0", Addr: netip.MustParseAddrPort("127.0.0.2:5432")}, {Host: "pg-1", Addr: netip.MustParseAddrPort("127.0.0.3:5432")}}}}}
	if err := saveCache(file, in); err != nil {
		t.Fatal(err)
	}
	out, ok, err := loadCache(file)
	if err != nil || !ok {
		t.Fatalf("load: ok %v, err %v", ok, err)
	}
	g, _ := out.Group("pg-0")
	if out.Source != SourceCache || g.Primary != "pg-1" || g.Epoch != 4 || len(g.Members) != 2 || g.Members[1].Addr.String() != "127.0.0.3:5432" {
		t.Fatalf("copy: %+v", out)
	}
}
