package status

import (
	"bufio"
	"context"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
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
	Error   string `json:"error,omitempty"`
}

// Healthy says the host is reachable, bootstrapped and runs every service it should.
func (h Host) Healthy() bool {
	if !h.Reachable || h.Bootstrap != "done" {
		return false
	}
	for _, s := range h.Services {
		if !s.Running && !(s.Name == "app" && h.Release == "") {
			return false
		}
	}
	return true
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
// parallel over pool.
func Collect(ctx context.Context, st *stack.Stack, p cloud.Provider, pool *remote.Pool) (*Report, error) {
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
	results := pool.FanOut(ctx, targets, 32, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		h := byTarget[t.Name]
		cmd, err := hostCommand(st, h)
		if err != nil {
			return err
		}
		res, err := c.Run(ctx, cmd, nil)
		if err != nil {
			return err
		}
		h.Reachable = true
		parse(h, string(res.Stdout))
		return nil
	})
	for _, r := range results {
		if r.Err != nil {
			byTarget[r.Target.Name].Error = firstLine(r.Err.Error())
		}
	}
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
func hostCommand(st *stack.Stack, h *Host) (remote.Command, error) {
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
	if h.Role == st.Deploy.Role {
		fmt.Fprintf(&b, "echo release=$(basename \"$(readlink %s)\" 2>/dev/null)\n", remote.Quote(path.Join(st.Deploy.Path, "current")))
	}
	return remote.Script(b.String()), nil
}

func parse(h *Host, out string) {
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
		case strings.HasPrefix(k, "service."):
			h.Services = append(h.Services, Service{Name: strings.TrimPrefix(k, "service."), Running: v == "running"})
		}
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

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
