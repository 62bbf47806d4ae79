package status

import (
	"bufio"
	"context"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
)

// Service is one service on a host.
type Service struct {
	Name    string `json:"name"`
	Running bool   `json:"running"`
}

// Host is one host's health.
type Host struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Index     int       `json:"index"`
	ID        string    `json:"id"`
	Address   string    `json:"address"`
	State     string    `json:"state"`
	Reachable bool      `json:"reachable"`
	Bootstrap string    `json:"bootstrap"` // done, pending, failed: REASON
	Services  []Service `json:"services,omitempty"`
	// Release is the app release `current` points at ("" before the first deploy).
	Release string `json:"release,omitempty"`
	// Replication is, for a replica, how far it is behind its primary as the primary sees it.
	Replication *Replication `json:"replication,omitempty"`
	Error       string       `json:"error,omitempty"`
}

// Healthy says the host is reachable, bootstrapped and runs every service it should.
func (h Host) Healthy() bool {
	if !h.Reachable || h.Bootstrap != "done" {
		return false
	}
	if h.Replication != nil && h.Replication.State == "absent" {
		return false
	}
	for _, s := range h.Services {
		if !s.Running && !(s.Name == "app" && h.Release == "") {
			return false
		}
	}
	return true
}

// Replication is one replica's state seen from its primary.
type Replication struct {
	Primary    string  `json:"primary"`
	State      string  `json:"state"` // streaming, online, ... or "absent" when the primary does not list it
	LagBytes   int64   `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_seconds"`
}

// Report is the whole stack.
type Report struct {
	Stack    string `json:"stack"`
	Provider string `json:"provider"`
	Hosts    []Host `json:"hosts"`
	// Missing lists hosts the stack declares that the provider does not have.
	Missing []string `json:"missing,omitempty"`
	Healthy bool     `json:"healthy"`
}

// Collect builds the report: inventory from the provider, then one SSH command per host, in
// parallel over pool. topo says which host of each replication group is primary now (a
// failover changes it, the stack file does not).
func Collect(ctx context.Context, st *stack.Stack, topo topology.Topology, p cloud.Provider, pool *remote.Pool) (*Report, error) {
	inv, err := provision.Inventory(ctx, p, st.Name)
	if err != nil {
		return nil, err
	}
	rep := &Report{Stack: st.Name, Provider: p.Name()}
	byTarget := map[string]*Host{}
	var targets []remote.Target
	have := map[string]bool{}
	for _, h := range inv {
		name := stack.HostName(h.Role, h.Index)
		have[name] = true
		rep.Hosts = append(rep.Hosts, Host{Name: name, Role: h.Role, Index: h.Index, ID: h.ID,
			Address: h.PrivateAddress, State: h.State, Bootstrap: "unknown"})
	}
	for i := range rep.Hosts {
		h := &rep.Hosts[i]
		if h.State != "running" {
			continue
		}
		addr := h.Address
		for _, ih := range inv {
			if ih.ID == h.ID && ih.PublicAddress != "" {
				addr = ih.PublicAddress
			}
		}
		t := remote.Target{Name: h.Name, Address: addr, Port: st.SSH.Port, User: st.SSH.User}
		byTarget[t.Name] = h
		targets = append(targets, t)
	}
	for _, ref := range st.Hosts() {
		if !have[ref.Name()] {
			rep.Missing = append(rep.Missing, ref.Name())
		}
	}
	var mu sync.Mutex
	replicas := map[string]replicaLine{}
	results := pool.FanOut(ctx, targets, 32, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		h := byTarget[t.Name]
		cmd, err := hostCommand(st, topo, h)
		if err != nil {
			return err
		}
		res, err := c.Run(ctx, cmd, nil)
		if err != nil {
			return err
		}
		h.Reachable = true
		mu.Lock()
		defer mu.Unlock()
		parse(h, string(res.Stdout), replicas)
		return nil
	})
	for _, r := range results {
		if r.Err != nil {
			byTarget[r.Target.Name].Error = errtext.OneLine(r.Err.Error())
		}
	}
	attachReplication(topo, rep.Hosts, replicas)
	sort.Slice(rep.Hosts, func(i, j int) bool { return less(st, rep.Hosts[i], rep.Hosts[j]) })
	rep.Healthy = len(rep.Missing) == 0 && len(rep.Hosts) > 0
	for _, h := range rep.Hosts {
		if !h.Healthy() {
			rep.Healthy = false
		}
	}
	return rep, nil
}

// hostCommand is one shell script printing key=value lines: bootstrap state, each service's
// state through the host's service manager, and the app's current release.
func hostCommand(st *stack.Stack, topo topology.Topology, h *Host) (remote.Command, error) {
	d, err := templates.FromStack(st, h.Role, h.Index, h.Address, h.Address)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "if [ -f %s ]; then echo bootstrap=done; elif [ -f %s ]; then echo \"bootstrap=failed: $(head -c 200 %s | tr '\\n' ' ')\"; else echo bootstrap=pending; fi\n",
		templates.DoneFile, templates.FailedFile, templates.FailedFile)
	for _, s := range templates.Services(d) {
		fmt.Fprintf(&b, "if %s >/dev/null 2>&1; then echo service.%s=running; else echo service.%s=stopped; fi\n",
			remote.Quote(templates.StatusCommand(d.ServiceManager, s.Name)...), s.Name, s.Name)
	}
	if g, ok := topo.GroupOf(h.Name); ok && len(g.Members) > 1 && g.Primary == h.Name {
		r := st.Role(h.Role)
		switch h.Role {
		case templates.RolePostgres:
			// One line per standby, named by the application_name the bootstrap gives it (its
			// host name): state, bytes behind, seconds behind. Shard-move walsenders are listed
			// too, under their subscription names, and match no host.
			sql := "SELECT 'replica.' || application_name || '=' || state || ',' || coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint || ',' || coalesce(extract(epoch FROM replay_lag), 0)::numeric(12,3) FROM pg_stat_replication"
			fmt.Fprintf(&b, "runuser -u postgres -- psql -X -At -h /run/postgresql -p %d -c %s 2>/dev/null || true\n", r.Port, remote.Quote(sql))
		case templates.RoleRedis:
			// master_repl_offset, then slaveN:ip=...,state=...,offset=...,lag=...
			fmt.Fprintf(&b, "redis-cli -h %s -p %d info replication 2>/dev/null | tr -d '\\r' | sed -n 's/^master_repl_offset:/redis.offset=/p; s/^slave[0-9]*:/redis.replica=/p' || true\n", remote.Quote(h.Address), r.Port)
		}
	}
	if h.Role == st.Deploy.Role {
		fmt.Fprintf(&b, "echo release=$(basename \"$(readlink %s)\" 2>/dev/null)\n", remote.Quote(path.Join(st.Deploy.Path, "current")))
	}
	return remote.Script(b.String()), nil
}

// replicaLine is what a primary reported about one replica, keyed by the replica's address.
type replicaLine struct {
	primary string
	rep     Replication
}

func parse(h *Host, out string, replicas map[string]replicaLine) {
	var redisOffset int64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch {
		case k == "bootstrap":
			h.Bootstrap = v
		case k == "release":
			h.Release = v
		case strings.HasPrefix(k, "replica."):
			f := strings.Split(v, ",")
			if len(f) == 3 {
				lb, _ := strconv.ParseInt(f[1], 10, 64)
				ls, _ := strconv.ParseFloat(f[2], 64)
				replicas[strings.TrimPrefix(k, "replica.")] = replicaLine{h.Name, Replication{Primary: h.Name, State: f[0], LagBytes: lb, LagSeconds: ls}}
			}
		case k == "redis.offset":
			redisOffset, _ = strconv.ParseInt(v, 10, 64)
		case k == "redis.replica":
			kv := map[string]string{}
			for _, part := range strings.Split(v, ",") {
				if a, b, ok := strings.Cut(part, "="); ok {
					kv[a] = b
				}
			}
			off, _ := strconv.ParseInt(kv["offset"], 10, 64)
			lag, _ := strconv.ParseFloat(kv["lag"], 64)
			replicas[kv["ip"]] = replicaLine{h.Name, Replication{Primary: h.Name, State: kv["state"], LagBytes: max(redisOffset-off, 0), LagSeconds: lag}}
		case strings.HasPrefix(k, "service."):
			h.Services = append(h.Services, Service{Name: strings.TrimPrefix(k, "service."), Running: v == "running"})
		}
	}
}

// attachReplication gives every standby of a replication group what its primary now said
// about it; a standby its primary does not list is "absent", which the operator must see.
func attachReplication(topo topology.Topology, hosts []Host, replicas map[string]replicaLine) {
	for i := range hosts {
		h := &hosts[i]
		g, ok := topo.GroupOf(h.Name)
		if !ok || g.Primary == h.Name {
			continue
		}
		rl, ok := replicas[h.Name] // postgres: by application_name
		if !ok {
			rl, ok = replicas[h.Address] // redis: by announced address
		}
		if ok {
			rep := rl.rep
			h.Replication = &rep
			continue
		}
		h.Replication = &Replication{Primary: g.Primary, State: "absent"}
	}
}

func less(st *stack.Stack, a, b Host) bool {
	ra, rb := roleOrder(st, a.Role), roleOrder(st, b.Role)
	if ra != rb {
		return ra < rb
	}
	return a.Index < b.Index
}

func roleOrder(st *stack.Stack, role string) int {
	for i, r := range st.Roles {
		if r.Name == role {
			return i
		}
	}
	return len(st.Roles)
}
