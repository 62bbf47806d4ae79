package monitor

import (
	"fmt"
	"net"
	"strconv"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// Target is one scrape target: an exporter (or the app server) on one host.
type Target struct {
	// Job is the scrape job (Job* constants).
	Job string `json:"job"`
	// Host is the host's canonical name ("pg-1"); Prometheus labels it instance.
	Host string `json:"host"`
	// Role is the host's stack role.
	Role string `json:"role"`
	// Group is the host's replication group ("pg-0", "redis-0") and, for a host in none, its
	// role ("app", "memcached", "monitor"): silencing a group silences all of its hosts.
	Group string `json:"group"`
	// Address is host:port, the host's stack address.
	Address string `json:"address"`
}

// Labels are the labels Prometheus attaches to every series of the target (besides job).
func (t Target) Labels() map[string]string {
	return map[string]string{"instance": t.Host, "role": t.Role, "group": t.Group}
}

// Probe is one blackbox probe run by the monitor host.
type Probe struct {
	// Module is the blackbox module: http_2xx or tcp_connect (both in Debian's blackbox.yml).
	Module string `json:"module"`
	Host   string `json:"host"`
	Role   string `json:"role"`
	Group  string `json:"group"`
	// URL is what is probed: http://addr:port/healthz, or addr:port for TCP.
	URL string `json:"url"`
}

// Targets lists every scrape target the stack's topology needs, in stack order within each
// job: node on every host; postgres on the shards role's hosts; redis on the Redis role's;
// pgbouncer and the app's own metrics on the app role's; prometheus, alertmanager and blackbox
// on the monitor role's.
func Targets(st *stack.Stack, topo topology.Topology) ([]Target, error) {
	var out []Target
	add := func(job string, h stack.HostRef, port int) error {
		a, err := st.Address(h)
		if err != nil {
			return err
		}
		out = append(out, Target{Job: job, Host: h.Name(), Role: h.Role, Group: groupOf(topo, h),
			Address: net.JoinHostPort(a.String(), strconv.Itoa(port))})
		return nil
	}
	hosts := st.Hosts()
	jobs := []struct {
		job  string
		role string
		port func(r *stack.Role) int
	}{
		{JobNode, "", func(*stack.Role) int { return PortNode }},
		{JobPostgres, st.Shards.Role, func(*stack.Role) int { return PortPostgres }},
		{JobRedis, topology.RedisRole, func(*stack.Role) int { return PortRedis }},
		{JobPgBouncer, AppRole, func(*stack.Role) int { return PortPgBouncer }},
		{JobApp, AppRole, func(r *stack.Role) int { return r.Port }},
		{JobPrometheus, Role, func(*stack.Role) int { return PortPrometheus }},
		{JobAlertmanager, Role, func(*stack.Role) int { return PortAlertmanager }},
		{JobBlackbox, Role, func(*stack.Role) int { return PortBlackbox }},
	}
	for _, j := range jobs {
		for _, h := range hosts {
			if j.role != "" && h.Role != j.role {
				continue
			}
			if err := add(j.job, h, j.port(st.Role(h.Role))); err != nil {
				return nil, fmt.Errorf("scrape targets: %w", err)
			}
		}
	}
	return out, nil
}

// Probes lists the blackbox probes: the load balancer's health check path on every app host,
// and a TCP connect to every memcached host (memcached has no exporter in Debian 12).
func Probes(st *stack.Stack, topo topology.Topology) ([]Probe, error) {
	var out []Probe
	for _, h := range st.Hosts() {
		r := st.Role(h.Role)
		var module, url string
		a, err := st.Address(h)
		if err != nil {
			return nil, fmt.Errorf("probes: %w", err)
		}
		hp := net.JoinHostPort(a.String(), strconv.Itoa(r.Port))
		switch h.Role {
		case AppRole:
			module, url = "http_2xx", "http://"+hp+st.LoadBalancer.HealthCheck
		case "memcached":
			module, url = "tcp_connect", hp
		default:
			continue
		}
		out = append(out, Probe{Module: module, Host: h.Name(), Role: h.Role, Group: groupOf(topo, h), URL: url})
	}
	return out, nil
}

// groupOf is the host's replication group, or its role when it is in none.
func groupOf(topo topology.Topology, h stack.HostRef) string {
	if g, ok := topo.GroupOf(h.Name()); ok {
		return g.Name
	}
	return h.Role
}
