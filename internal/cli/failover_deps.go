package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/pooler"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
)

// foEnv is what switchover, failover and rejoin are wired with: the stack, its topology now,
// the inventory, SSH, and (lazily) the app hosts' poolers.
type foEnv struct {
	st     *stack.Stack
	topo   topology.Topology
	prov   cloud.Provider
	inv    map[string]provision.Host // by host name
	ssh    *remote.Pool
	pools  *pooler.Set
	jdir   string
	status func(format string, args ...any)
}

// newFoEnv reads the topology (the control database's, or the stack's before `shard init`)
// and the inventory. Callers close it.
func newFoEnv(ctx context.Context, f *Factory) (*foEnv, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	prov, err := f.Provider(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := f.StateDir()
	if err != nil {
		return nil, err
	}
	topo, err := topology.ResolveCached(ctx, st, "postgres", topologyCacheFile(dir))
	switch {
	case err != nil && topo.Source == "":
		return nil, err
	case err != nil && topo.Source == topology.SourceCache:
		f.IO.Statusf("note: the control database does not answer (%v); using the topology instactl last read from it (%s)", err, topologyCacheFile(dir))
	}
	hosts, err := provision.Inventory(ctx, prov, st.Name)
	if err != nil {
		return nil, err
	}
	inv := map[string]provision.Host{}
	for _, h := range hosts {
		inv[stack.HostName(h.Role, h.Index)] = h
	}
	pool, err := f.SSH(false)
	if err != nil {
		return nil, err
	}
	return &foEnv{st: st, topo: topo, prov: prov, inv: inv, ssh: pool,
		jdir: filepath.Join(dir, "failover"), status: f.IO.Statusf}, nil
}

func (e *foEnv) Close() {
	if e.pools != nil {
		_ = e.pools.Close()
	}
	_ = e.ssh.Close()
}

// target is the SSH target of a host of the inventory.
func (e *foEnv) target(host string) (remote.Target, error) {
	h, ok := e.inv[host]
	if !ok {
		return remote.Target{}, fmt.Errorf("host %s is not in the inventory of stack %s", host, e.st.Name)
	}
	addr := h.PrivateAddress
	if h.PublicAddress != "" {
		addr = h.PublicAddress
	}
	port := h.SSHPort
	if port == 0 {
		port = e.st.SSH.Port
	}
	return remote.Target{Name: host, Address: addr, Port: port, User: e.st.SSH.User}, nil
}

// poolerSet opens one admin connection to the PgBouncer of every running app host.
func (e *foEnv) poolerSet(ctx context.Context) (*pooler.Set, error) {
	if e.pools != nil {
		return e.pools, nil
	}
	r := e.st.Role(templates.RoleApp)
	if r == nil || r.Count == 0 {
		return nil, fmt.Errorf("stack %s has no app hosts, so no PgBouncer to hold and repoint writes", e.st.Name)
	}
	var targets []pooler.Target
	for i := 0; i < r.Count; i++ {
		name := stack.HostName(r.Name, i)
		h, ok := e.inv[name]
		if !ok || h.State != "running" {
			continue
		}
		a, err := netip.ParseAddr(h.PrivateAddress)
		if err != nil {
			return nil, fmt.Errorf("app host %s: address %q: %w", name, h.PrivateAddress, err)
		}
		targets = append(targets, pooler.Target{Host: name, Addr: netip.AddrPortFrom(a, pooler.Port)})
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("no app host of stack %s is running, so no PgBouncer to hold and repoint writes", e.st.Name)
	}
	// The sandbox trusts loopback; the AWS flavour sets no pooler admin password yet either.
	s, err := pooler.Open(ctx, targets, pooler.AdminUser, "")
	if err != nil {
		return nil, err
	}
	e.pools = s
	return s, nil
}

// deps wires failover.Deps for this stack.
func (e *foEnv) deps(ctx context.Context) (failover.Deps, error) {
	dsn, err := topology.ControlDSN(e.topo, "postgres", e.st.Shards.ControlDatabase)
	if err != nil {
		return failover.Deps{}, err
	}
	set, err := e.poolerSet(ctx)
	if err != nil {
		return failover.Deps{}, err
	}
	if err := e.dialAhead(ctx, set); err != nil {
		return failover.Deps{}, err
	}
	return failover.Deps{
		ControlDSN: dsn,
		Pooler:     &poolerAdapter{set: set, env: e},
		Server:     e.server,
		Fencer:     fencer{e},
		JournalDir: e.jdir,
		Log:        e.status,
	}, nil
}

// server is the SSH-driven Server of a Postgres member.
func (e *foEnv) server(m topology.Member) (failover.Server, error) {
	h, ok := e.inv[m.Host]
	if !ok {
		return nil, fmt.Errorf("member %s is not in the inventory of stack %s", m.Host, e.st.Name)
	}
	d, err := templates.FromStack(e.st, h.Role, h.Index, h.PrivateAddress, h.PrivateAddress)
	if err != nil {
		return nil, err
	}
	t, err := e.target(m.Host)
	if err != nil {
		return nil, err
	}
	return failover.NewSSHServer(&lazyClient{pool: e.ssh, target: t}, m.Host, d), nil
}

// lazyClient dials a host on first use: a failover builds the Server of a lost primary it
// must not wait on.
type lazyClient struct {
	pool   *remote.Pool
	target remote.Target
}

func (l *lazyClient) Run(ctx context.Context, cmd remote.Command, stdin io.Reader) (remote.Result, error) {
	c, err := l.pool.Get(ctx, l.target)
	if err != nil {
		return remote.Result{}, err
	}
	return c.Run(ctx, cmd, stdin)
}

// poolerAdapter is failover.Pooler over the app hosts' PgBouncers.
type poolerAdapter struct {
	set *pooler.Set
	env *foEnv
}

func (p *poolerAdapter) Pause(ctx context.Context, db string) error  { return p.set.Pause(ctx, db) }
func (p *poolerAdapter) Resume(ctx context.Context, db string) error { return p.set.Resume(ctx, db) }
func (p *poolerAdapter) Kill(ctx context.Context, db string) error   { return p.set.Kill(ctx, db) }

func (p *poolerAdapter) Repoint(ctx context.Context, db string, to netip.AddrPort) error {
	targets := map[string]remote.Target{}
	for _, t := range p.set.Targets() {
		rt, err := p.env.target(t.Host)
		if err != nil {
			return err
		}
		targets[t.Host] = rt
	}
	write := pooler.RemoteWriter(p.env.ssh, targets, pooler.DatabasesFile)
	return p.set.Repoint(ctx, db, to, p.env.st.Shards.Database, write)
}

// fencer stops a lost primary's instance through the provider: a power cut on the sandbox,
// StopInstances with Force on AWS.
type fencer struct{ env *foEnv }

func (f fencer) Fence(ctx context.Context, host string) error {
	h, ok := f.env.inv[host]
	if !ok {
		return fmt.Errorf("fence %s: not in the inventory of stack %s", host, f.env.st.Name)
	}
	if err := f.env.prov.StopInstances(ctx, []string{h.ID}, true); err != nil {
		return fmt.Errorf("fence %s: stop instance %s: %w", host, h.ID, err)
	}
	return nil
}

// dialAhead opens the SSH connections an operation will use while writes are held: to every
// app host (the repoint writes there) and to every running member of a replication group (the
// old primary is stopped over SSH). An app host that cannot be reached fails the command
// before anything changed; a member that cannot be reached is left to the operation (a
// failover's old primary is gone).
func (e *foEnv) dialAhead(ctx context.Context, set *pooler.Set) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	dial := func(host string, required bool) {
		defer wg.Done()
		t, err := e.target(host)
		if err == nil {
			_, err = e.ssh.Get(ctx, t)
		}
		if err != nil && required {
			mu.Lock()
			errs = append(errs, fmt.Errorf("app host %s, whose PgBouncer must be repointed: %w", host, err))
			mu.Unlock()
		}
	}
	for _, t := range set.Targets() {
		wg.Add(1)
		go dial(t.Host, true)
	}
	for _, g := range e.topo.Groups {
		for _, m := range g.Members {
			if h, ok := e.inv[m.Host]; ok && h.State == "running" {
				wg.Add(1)
				go dial(m.Host, false)
			}
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

// topologyCacheFile is where instactl keeps the last topology the control database gave.
func topologyCacheFile(stateDir string) string { return filepath.Join(stateDir, "topology.json") }
