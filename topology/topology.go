package topology

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/instactl/instactl/stack"
)

// Kinds of replication groups.
const (
	KindPostgres = "postgres"
	KindRedis    = "redis"
)

// RedisRole is the stack role whose hosts form the Redis groups.
const RedisRole = "redis"

// Member is one host of a replication group.
type Member struct {
	// Host is the host's canonical name ("pg-1").
	Host string         `json:"host"`
	Addr netip.AddrPort `json:"addr"`
}

// DSN is a libpq URL reaching database db on the member as user, directly (not through a
// pooler): what instactl itself uses for DDL, replication and statistics.
func (m Member) DSN(user, db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable&connect_timeout=10", user, m.Addr, db)
}

// AppDSN is how app servers reach database db on the member as role app, as the shard map's
// node registry records it.
func (m Member) AppDSN(app, db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", app, m.Addr, db)
}

// Group is one replication group: a primary and its standbys.
type Group struct {
	// Name is the group's stable name: its first host's at seed time. The shard map names
	// physical nodes by it.
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Members are the group's hosts in stack order.
	Members []Member `json:"members"`
	// Primary is the host name of the member that is primary now.
	Primary string `json:"primary"`
	// Epoch is bumped at every change of primary.
	Epoch int64 `json:"epoch"`
}

// PrimaryMember returns the member that is primary now.
func (g Group) PrimaryMember() (Member, error) {
	for _, m := range g.Members {
		if m.Host == g.Primary {
			return m, nil
		}
	}
	return Member{}, fmt.Errorf("group %s: primary %s is not one of its members", g.Name, g.Primary)
}

// Standbys returns the members that are not primary, in stack order.
func (g Group) Standbys() []Member {
	var out []Member
	for _, m := range g.Members {
		if m.Host != g.Primary {
			out = append(out, m)
		}
	}
	return out
}

// Member returns the member named host.
func (g Group) Member(host string) (Member, bool) {
	i := slices.IndexFunc(g.Members, func(m Member) bool { return m.Host == host })
	if i < 0 {
		return Member{}, false
	}
	return g.Members[i], true
}

// Topology is every replication group of the stack.
type Topology struct {
	// Groups are in stack order: Postgres groups, then Redis groups.
	Groups []Group `json:"groups"`
	// Source says where it was read: "stack" (derived, not yet seeded or the control database
	// is unreachable) or "control" (the control database, the truth after a failover).
	Source string `json:"source"`
}

// Sources of a Topology.
const (
	SourceStack   = "stack"
	SourceControl = "control"
)

// Group returns the group named name.
func (t Topology) Group(name string) (Group, bool) {
	i := slices.IndexFunc(t.Groups, func(g Group) bool { return g.Name == name })
	if i < 0 {
		return Group{}, false
	}
	return t.Groups[i], true
}

// OfKind returns the groups of kind, in order.
func (t Topology) OfKind(kind string) []Group {
	var out []Group
	for _, g := range t.Groups {
		if g.Kind == kind {
			out = append(out, g)
		}
	}
	return out
}

// GroupOf returns the group host belongs to.
func (t Topology) GroupOf(host string) (Group, bool) {
	for _, g := range t.Groups {
		if _, ok := g.Member(host); ok {
			return g, true
		}
	}
	return Group{}, false
}

// IsPrimary reports whether host is the primary of its group now. A host in no group (an app
// or memcached host) is not.
func (t Topology) IsPrimary(host string) bool {
	g, ok := t.GroupOf(host)
	return ok && g.Primary == host
}

// Primary returns the member that is primary of group name now: "the primary of pg-0 now".
func (t Topology) Primary(name string) (Member, error) {
	g, ok := t.Group(name)
	if !ok {
		return Member{}, fmt.Errorf("no replication group %q (known: %v)", name, t.names())
	}
	return g.PrimaryMember()
}

func (t Topology) names() []string {
	out := make([]string, len(t.Groups))
	for i, g := range t.Groups {
		out[i] = g.Name
	}
	return out
}

// FromStack derives the topology the stack file declares: for the shards role and the Redis
// role, one group per primary with its replicas (hosts are grouped primary first), the first
// host primary, epoch 1. It is the seed of the control database, not the truth after a
// failover. A stack without those roles has no groups of that kind.
func FromStack(st *stack.Stack) (Topology, error) {
	t := Topology{Source: SourceStack}
	add := func(kind string, r *stack.Role) error {
		if r == nil {
			return nil
		}
		for first := 0; first < r.Count; first += r.Replicas + 1 {
			g := Group{Name: stack.HostName(r.Name, first), Kind: kind, Primary: stack.HostName(r.Name, first), Epoch: 1}
			for i := first; i < min(first+r.Replicas+1, r.Count); i++ {
				h := stack.HostRef{Role: r.Name, Index: i}
				addr, err := st.Address(h)
				if err != nil {
					return err
				}
				g.Members = append(g.Members, Member{Host: h.Name(), Addr: netip.AddrPortFrom(addr, uint16(r.Port))})
			}
			t.Groups = append(t.Groups, g)
		}
		return nil
	}
	if err := add(KindPostgres, st.Role(st.Shards.Role)); err != nil {
		return Topology{}, err
	}
	if st.Shards.Role != RedisRole {
		if err := add(KindRedis, st.Role(RedisRole)); err != nil {
			return Topology{}, err
		}
	}
	return t, nil
}

// ControlNode returns the group holding the control database (the first Postgres group: the
// stack's first physical node) and its primary now.
func (t Topology) ControlNode() (Group, Member, error) {
	pg := t.OfKind(KindPostgres)
	if len(pg) == 0 {
		return Group{}, Member{}, fmt.Errorf("the topology has no PostgreSQL group to hold the control database")
	}
	m, err := pg[0].PrimaryMember()
	return pg[0], m, err
}
