package provision

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/instactl/instactl/cloud"
)

// ErrStale is returned when the cloud no longer matches the state a saved plan was computed from.
var ErrStale = errors.New("the stack changed since the plan was computed")

// ErrRefused is returned for a plan that holds refused changes.
var ErrRefused = errors.New("the plan holds refused changes")

// Result is the outcome of one change.
type Result struct {
	Address string `json:"address"`
	Kind    Kind   `json:"kind"`
	Action  Action `json:"action"`
	// ID is the resource the change made or acted on.
	ID       string        `json:"id,omitempty"`
	Duration time.Duration `json:"duration"`
	// Err is the failure; Skipped marks a change not attempted because something it depends
	// on failed or the apply was cancelled.
	Err     string `json:"error,omitempty"`
	Skipped bool   `json:"skipped,omitempty"`
}

// ApplyOption tunes Apply.
type ApplyOption func(*applyConfig)

type applyConfig struct {
	parallelism int
	progress    func(Result)
}

// WithParallelism bounds how many provider calls run at once (default 16).
func WithParallelism(n int) ApplyOption { return func(c *applyConfig) { c.parallelism = max(1, n) } }

// WithProgress is called (from several goroutines, one call at a time) as each change ends.
func WithProgress(f func(Result)) ApplyOption { return func(c *applyConfig) { c.progress = f } }

// Apply executes plan against p: dependencies first (key pair, groups, instances and volumes,
// attachments, LB, registrations; deletions in reverse), independent changes in parallel. It
// refuses a plan with refused changes, and a plan whose fingerprint no longer matches the
// cloud. Every create is idempotent (client tokens, tags in the create calls), so computing and
// applying again after an interruption converges without duplicates. Results come in plan order.
func Apply(ctx context.Context, p cloud.Provider, plan Plan, opts ...ApplyOption) ([]Result, error) {
	cfg := applyConfig{parallelism: 16}
	for _, o := range opts {
		o(&cfg)
	}
	if refused := plan.Refused(); len(refused) > 0 {
		// Each refusal with its reason and way out: a bare list of addresses says nothing.
		var lines []string
		for _, c := range refused {
			lines = append(lines, "  "+c.Address+": "+c.Refuse)
		}
		return nil, fmt.Errorf("apply %s: %w, nothing was applied:\n%s", plan.Stack, ErrRefused, strings.Join(lines, "\n"))
	}
	actual, err := p.Describe(ctx, plan.Stack)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", plan.Stack, err)
	}
	if fp := Fingerprint(actual); fp != plan.Fingerprint {
		return nil, fmt.Errorf("apply %s: %w (plan made from %.12s, now %.12s): run plan again", plan.Stack, ErrStale, plan.Fingerprint, fp)
	}
	ex := newExecutor(p, plan, actual, cfg)
	ex.run(ctx)
	var failed []string
	for _, r := range ex.results {
		if r.Err != "" && !r.Skipped {
			failed = append(failed, r.Address+": "+r.Err)
		}
	}
	if len(failed) > 0 {
		return ex.results, fmt.Errorf("apply %s: %d of %d changes failed (re-run plan and apply to converge): %s",
			plan.Stack, len(failed), len(ex.nodes), strings.Join(failed, "; "))
	}
	if err := ctx.Err(); err != nil {
		return ex.results, fmt.Errorf("apply %s: %w", plan.Stack, err)
	}
	return ex.results, nil
}

// node is one unit of work: one change, or several executed by one call (registrations,
// terminations).
type node struct {
	changes []int
	deps    []*node
	// made are nodes whose resource must exist (have an id), not be ready: a volume waits for
	// its instance's id and zone, not for it to run.
	made []*node
	done chan struct{}
	err  error
	// exists is closed once the node's resource has an id (an instance still pending), or when
	// the node ends.
	exists     chan struct{}
	existsOnce sync.Once
}

// markExists closes n.exists (once).
func (n *node) markExists() { n.existsOnce.Do(func() { close(n.exists) }) }

type executor struct {
	p       cloud.Provider
	plan    Plan
	cfg     applyConfig
	sem     chan struct{}
	nodes   []*node
	results []Result

	mu        sync.Mutex
	groups    map[string]string // name -> id
	instances map[string]string // hostKey -> id
	zones     map[string]string // hostKey -> the instance's zone
	volumes   map[string]string // volume address -> id
	edge      *edgeState
}

func newExecutor(p cloud.Provider, plan Plan, actual *cloud.Resources, cfg applyConfig) *executor {
	ex := &executor{p: p, plan: plan, cfg: cfg, sem: make(chan struct{}, cfg.parallelism),
		results: make([]Result, len(plan.Changes)), groups: map[string]string{}, instances: map[string]string{},
		volumes: map[string]string{}, zones: map[string]string{}}
	ix := indexActual(actual)
	for name, g := range ix.groups {
		ex.groups[name] = g.ID
	}
	for k, in := range ix.hosts {
		ex.instances[k] = in.ID
		ex.zones[k] = in.Zone
	}
	for addr, v := range ix.volumes {
		ex.volumes[addr] = v.ID
	}
	for i, c := range plan.Changes {
		ex.results[i] = Result{Address: c.Address, Kind: c.Kind, Action: c.Action, ID: c.ID}
	}
	ex.edge = newEdgeState(actual)
	ex.build()
	return ex
}

// build groups changes into nodes and wires their dependencies.
func (ex *executor) build() {
	byKey := map[string]*node{} // action+address
	var registers, deregisters, terminates *node
	newNode := func(i int) *node {
		n := &node{changes: []int{i}, done: make(chan struct{}), exists: make(chan struct{})}
		ex.nodes = append(ex.nodes, n)
		return n
	}
	for i, c := range ex.plan.Changes {
		if c.Action == NoOp {
			continue
		}
		var n *node
		switch {
		case c.Kind == KindRegistration && c.Action == Create:
			if registers == nil {
				registers = newNode(i)
			} else {
				registers.changes = append(registers.changes, i)
			}
			n = registers
		case c.Kind == KindRegistration && c.Action == Delete:
			if deregisters == nil {
				deregisters = newNode(i)
			} else {
				deregisters.changes = append(deregisters.changes, i)
			}
			n = deregisters
		case c.Kind == KindInstance && c.Action == Delete:
			if terminates == nil {
				terminates = newNode(i)
			} else {
				terminates.changes = append(terminates.changes, i)
			}
			n = terminates
		default:
			n = newNode(i)
		}
		byKey[string(c.Action)+" "+c.Address] = n
	}
	for _, n := range ex.nodes {
		for _, i := range n.changes {
			for _, dep := range ex.depsOf(ex.plan.Changes[i], byKey) {
				if dep != n && !slices.Contains(n.deps, dep) {
					n.deps = append(n.deps, dep)
				}
			}
		}
	}
	// A new volume needs its new instance's id and zone, not a running instance: it is made
	// while the instance is pending (on AWS instances take tens of seconds to run, volumes a
	// few). Only for a host with one zone: a host that may fall back to another zone (its
	// instance dies pending twice) could end up in another zone than its volume.
	for _, n := range ex.nodes {
		c := ex.plan.Changes[n.changes[0]]
		if c.Kind != KindVolume || c.Action != Create {
			continue
		}
		in, ok := byKey[string(Create)+" instance."+hostKey(c.Volume.Role, c.Volume.Index)]
		if !ok || len(ex.plan.Changes[in.changes[0]].Instance.Zones) > 1 {
			continue
		}
		n.deps = slices.DeleteFunc(n.deps, func(d *node) bool { return d == in })
		n.made = append(n.made, in)
	}
}

// depsOf lists the nodes a change must wait for.
func (ex *executor) depsOf(c Change, byKey map[string]*node) []*node {
	var out []*node
	want := func(action Action, addr string) {
		if n, ok := byKey[string(action)+" "+addr]; ok {
			out = append(out, n)
		}
		if action == Create { // a replacement is an update that creates
			if n, ok := byKey[string(Update)+" "+addr]; ok {
				out = append(out, n)
			}
		}
	}
	all := func(kind Kind, action Action) {
		for _, o := range ex.plan.Changes {
			if o.Kind == kind && (o.Action == action || (action == Update && o.ForceReplace)) {
				want(o.Action, o.Address)
			}
		}
	}
	ex.edgeDeps(c, want, all)
	switch {
	case c.Kind == KindGroup && c.Action != Delete:
		for _, r := range c.Group.Rules {
			if r.FromGroup != "" && r.FromGroup != c.Group.Name {
				want(Create, "sg."+r.FromGroup)
			}
		}
	case c.Kind == KindInstance && c.Action != Delete:
		if c.Instance.KeyName != "" {
			want(Create, "key."+c.Instance.KeyName)
		}
		for _, g := range c.Instance.Groups {
			want(Create, "sg."+g)
		}
		want(Delete, "registration."+hostKey(c.Instance.Role, c.Instance.Index))
	case c.Kind == KindVolume && c.Action == Create:
		// A volume is made in its host's zone (which may be a fallback zone), for its host's id.
		want(Create, "instance."+hostKey(c.Volume.Role, c.Volume.Index))
	case c.Kind == KindAttachment:
		want(Create, "instance."+hostKey(c.Attachment.Role, c.Attachment.Index))
		want(Create, c.Attachment.VolumeAddress)
	case c.Kind == KindLoadBalancer && c.Action != Delete:
		for _, g := range c.LoadBalancer.Groups {
			want(Create, "sg."+g)
		}
	case c.Kind == KindRegistration && c.Action == Create:
		want(Create, "lb."+c.Registration.LoadBalancer)
		want(Create, "instance."+hostKey(c.Registration.Role, c.Registration.Index))
	case c.Kind == KindLoadBalancer && c.Action == Delete:
		all(KindRegistration, Delete)
	case c.Kind == KindInstance && c.Action == Delete:
		all(KindRegistration, Delete)
	case c.Kind == KindVolume && c.Action == Delete:
		all(KindInstance, Delete)
	case c.Kind == KindGroup && c.Action == Delete:
		all(KindInstance, Delete)
		all(KindInstance, Update)
		all(KindLoadBalancer, Delete)
		all(KindLoadBalancer, Update)
		all(KindGroup, Update)
		for _, o := range ex.plan.Changes { // groups whose rules name this one go first
			if o.Kind == KindGroup && o.Action == Delete && o.Address != c.Address && o.Group != nil &&
				slices.ContainsFunc(o.Group.Rules, func(r cloud.Rule) bool { return r.FromGroup == c.Group.Name }) {
				want(Delete, o.Address)
			}
		}
	case c.Kind == KindKeyPair && c.Action == Delete:
		all(KindInstance, Delete)
		all(KindInstance, Update)
	}
	return out
}

func (ex *executor) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, n := range ex.nodes {
		wg.Go(func() { ex.runNode(ctx, n) })
	}
	wg.Wait()
}

func (ex *executor) runNode(ctx context.Context, n *node) {
	// done closes before exists: a node waiting for exists then sees whether it failed.
	defer n.markExists()
	defer close(n.done)
	for _, d := range n.deps {
		<-d.done
		if d.err != nil {
			n.err = fmt.Errorf("skipped: a dependency failed")
			ex.finish(n, 0, n.err, true)
			return
		}
	}
	for _, d := range n.made {
		<-d.exists
		select {
		case <-d.done:
			if d.err != nil {
				n.err = fmt.Errorf("skipped: a dependency failed")
				ex.finish(n, 0, n.err, true)
				return
			}
		default:
		}
	}
	select {
	case ex.sem <- struct{}{}:
	case <-ctx.Done():
		n.err = fmt.Errorf("skipped: %w", ctx.Err())
		ex.finish(n, 0, n.err, true)
		return
	}
	start := time.Now()
	// A call that only waits for a state gives its slot to another change meanwhile: the slots
	// bound concurrent calls, and waits are shared polls (cloud/aws poll.go).
	nctx := cloud.WithWaiting(ctx, func() func() {
		<-ex.sem
		return func() { ex.sem <- struct{}{} }
	})
	err := ex.exec(nctx, n)
	<-ex.sem
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	n.err = err
	ex.finish(n, time.Since(start), err, false)
}

func (ex *executor) finish(n *node, d time.Duration, err error, skipped bool) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	for _, i := range n.changes {
		r := &ex.results[i]
		r.Duration, r.Skipped = d, skipped
		if err != nil {
			r.Err = err.Error()
		}
		if ex.cfg.progress != nil {
			ex.cfg.progress(*r)
		}
	}
}

func (ex *executor) setID(i int, id string) {
	ex.mu.Lock()
	ex.results[i].ID = id
	ex.mu.Unlock()
}

func (ex *executor) lookup(m map[string]string, key string) (string, error) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	id, ok := m[key]
	if !ok {
		return "", fmt.Errorf("%s does not exist: %w", key, cloud.ErrNotFound)
	}
	return id, nil
}

func (ex *executor) store(m map[string]string, key, id string) {
	ex.mu.Lock()
	m[key] = id
	ex.mu.Unlock()
}

// exec runs one node's provider calls.
func (ex *executor) exec(ctx context.Context, n *node) error {
	c := ex.plan.Changes[n.changes[0]]
	stack := ex.plan.Stack
	if edgeKind(c.Kind) {
		return ex.execEdge(ctx, n.changes[0], c)
	}
	switch {
	case c.Kind == KindRegistration:
		return ex.registrations(ctx, n)
	case c.Kind == KindInstance && c.Action == Delete:
		var ids []string
		for _, i := range n.changes {
			ids = append(ids, ex.plan.Changes[i].ID)
		}
		return ex.p.TerminateInstances(ctx, ids)
	case c.Kind == KindKeyPair && c.Action == Create:
		return ex.p.EnsureKeyPair(ctx, stack, c.KeyPair.Name, c.KeyPair.PublicKey)
	case c.Kind == KindKeyPair:
		return ex.p.DeleteKeyPair(ctx, c.Name)
	case c.Kind == KindGroup && c.Action == Create:
		g, err := ex.p.CreateSecurityGroup(ctx, stack, cloud.SecurityGroup{Name: c.Group.Name,
			Description: c.Group.Description, Ingress: c.Group.Rules, Tags: map[string]string{cloud.TagStack: stack}})
		if err == nil {
			ex.store(ex.groups, c.Group.Name, g.ID)
			ex.setID(n.changes[0], g.ID)
		}
		return err
	case c.Kind == KindGroup && c.Action == Update:
		return ex.p.UpdateSecurityGroupRules(ctx, stack, c.ID, c.Group.Rules)
	case c.Kind == KindGroup:
		return ex.p.DeleteSecurityGroup(ctx, c.ID)
	case c.Kind == KindInstance:
		key := hostKey(c.Instance.Role, c.Instance.Index)
		ctx = cloud.WithCreated(ctx, func(in cloud.Instance) {
			ex.store(ex.instances, key, in.ID)
			ex.store(ex.zones, key, in.Zone)
			n.markExists()
		})
		return ex.createInstance(ctx, n.changes[0], c)
	case c.Kind == KindVolume && c.Action == Create:
		return ex.createVolume(ctx, n.changes[0], c)
	case c.Kind == KindVolume:
		if c.Detach != nil {
			if err := ex.p.DetachVolume(ctx, c.ID, c.Detach.InstanceID, c.Detach.Device); err != nil && !errors.Is(err, cloud.ErrNotFound) {
				return err
			}
		}
		return ex.p.DeleteVolume(ctx, c.ID)
	case c.Kind == KindAttachment:
		a := c.Attachment
		inst, err := ex.lookup(ex.instances, hostKey(a.Role, a.Index))
		if err != nil {
			return err
		}
		vol, err := ex.lookup(ex.volumes, a.VolumeAddress)
		if err != nil {
			return err
		}
		return ex.p.AttachVolume(ctx, vol, inst, a.Device)
	case c.Kind == KindLoadBalancer && c.Action == Delete:
		return ex.p.DeleteLoadBalancer(ctx, c.Name)
	case c.Kind == KindLoadBalancer:
		return ex.createLoadBalancer(ctx, c)
	}
	return fmt.Errorf("%s: no way to %s a %s", c.Address, c.Action, c.Kind)
}

func (ex *executor) createInstance(ctx context.Context, i int, c Change) error {
	if c.ForceReplace {
		if err := ex.p.TerminateInstances(ctx, []string{c.ID}); err != nil {
			return fmt.Errorf("replace: %w", err)
		}
	}
	s := c.Instance
	spec := cloud.InstanceSpec{Name: s.Name, Role: s.Role, Index: s.Index, Type: s.Type, Image: s.Image,
		Zone: s.Zone, KeyName: s.KeyName, UserData: s.UserData, ClientToken: s.ClientToken, Address: s.PrivateAddress,
		Tags: map[string]string{cloud.TagStack: ex.plan.Stack}, InstanceProfile: s.InstanceProfile}
	for _, g := range s.Groups {
		id, err := ex.lookup(ex.groups, g)
		if err != nil {
			return fmt.Errorf("security group %w", err)
		}
		spec.SecurityGroupIDs = append(spec.SecurityGroupIDs, id)
	}
	if err := ex.edge.fillUserData(&spec); err != nil {
		return err
	}
	var tried []string
	for n, pool := range pools(*s) {
		spec.Zone, spec.Type = pool.zone, pool.typ
		if n > 0 {
			// Another pool is another request: EC2 refuses a token reused with other parameters.
			spec.ClientToken = fmt.Sprintf("%s-%d", s.ClientToken, n)
		}
		in, err := ex.p.CreateInstance(ctx, spec)
		switch {
		case errors.Is(err, cloud.ErrNoCapacity):
			tried = append(tried, pool.typ+" in "+pool.zone)
			continue
		case errors.Is(err, cloud.ErrLimit):
			return fmt.Errorf("%w; fix: ask AWS to raise the limit (Service Quotas, EC2 On-Demand instances) or lower roles.%s.count", err, s.Role)
		case err != nil:
			return err
		}
		ex.store(ex.instances, hostKey(s.Role, s.Index), in.ID)
		ex.store(ex.zones, hostKey(s.Role, s.Index), in.Zone)
		ex.setID(i, in.ID)
		return nil
	}
	return fmt.Errorf("%s: %w: AWS has no capacity for %s now; fix: list more zones under zones: or more types under roles.%s.instance_types in the stack file, or run apply again later",
		s.Address(), cloud.ErrNoCapacity, strings.Join(tried, ", "), s.Role)
}

// pool is one (zone, instance type) a host may be created in.
type pool struct{ zone, typ string }

// pools lists the pools a host may get, in order: its type in every allowed zone, then the
// next type in every zone (a host keeps its size before it keeps its zone).
func pools(s InstanceSpec) []pool {
	zones, types := s.Zones, s.Types
	if len(zones) == 0 {
		zones = []string{s.Zone}
	}
	if len(types) == 0 {
		types = []string{s.Type}
	}
	var out []pool
	for _, t := range types {
		for _, z := range zones {
			out = append(out, pool{zone: z, typ: t})
		}
	}
	return out
}

func (ex *executor) createVolume(ctx context.Context, i int, c Change) error {
	s := c.Volume
	host := hostKey(s.Role, s.Index)
	inst, err := ex.lookup(ex.instances, host)
	if err != nil {
		return fmt.Errorf("volume for instance %w", err)
	}
	zone := s.Zone
	if z, _ := ex.lookup(ex.zones, host); z != "" {
		zone = z
	}
	v, err := ex.p.CreateVolume(ctx, cloud.VolumeSpec{Zone: zone, SizeGiB: s.SizeGiB, Type: s.Type,
		ClientToken: VolumeToken(ex.plan.Stack, s.Device, inst),
		Tags: map[string]string{cloud.TagStack: ex.plan.Stack, cloud.TagRole: s.Role,
			cloud.TagIndex: fmt.Sprint(s.Index), cloud.TagDevice: s.Device,
			cloud.TagName: fmt.Sprintf("%s-%s-%d-%s", ex.plan.Stack, s.Role, s.Index, strings.TrimPrefix(s.Device, "/dev/"))}})
	if errors.Is(err, cloud.ErrNoCapacity) {
		return fmt.Errorf("%w; fix: run apply again later, or move the host to another zone (--replace instance.%s with zones: listing it first)", err, host)
	}
	if err != nil {
		return err
	}
	ex.store(ex.volumes, s.Address(), v.ID)
	ex.setID(i, v.ID)
	return nil
}

func (ex *executor) createLoadBalancer(ctx context.Context, c Change) error {
	s := c.LoadBalancer
	if c.ForceReplace {
		if err := ex.p.DeleteLoadBalancer(ctx, s.Name); err != nil {
			return fmt.Errorf("replace: %w", err)
		}
	}
	lb := cloud.LoadBalancer{Name: s.Name, ListenerPort: s.ListenerPort, TargetPort: s.TargetPort,
		HealthCheck: s.HealthCheck, DrainTimeout: s.DrainTimeout, Zones: s.Zones,
		Tags: map[string]string{cloud.TagStack: ex.plan.Stack}}
	for _, g := range s.Groups {
		id, err := ex.lookup(ex.groups, g)
		if err != nil {
			return fmt.Errorf("security group %w", err)
		}
		lb.SecurityGroupIDs = append(lb.SecurityGroupIDs, id)
	}
	made, err := ex.p.CreateLoadBalancer(ctx, lb)
	if err == nil {
		ex.edge.setLB(s.Name, made.DNSName)
	}
	return err
}

// registrations registers (or deregisters) all of a node's hosts in one call per LB.
func (ex *executor) registrations(ctx context.Context, n *node) error {
	byLB := map[string][]string{}
	var order []string
	for _, i := range n.changes {
		c := ex.plan.Changes[i]
		id := c.ID
		if c.Action == Create {
			var err error
			if id, err = ex.lookup(ex.instances, hostKey(c.Registration.Role, c.Registration.Index)); err != nil {
				return err
			}
			ex.setID(i, id)
		}
		lb := c.Registration.LoadBalancer
		if _, ok := byLB[lb]; !ok {
			order = append(order, lb)
		}
		byLB[lb] = append(byLB[lb], id)
	}
	deregister := ex.plan.Changes[n.changes[0]].Action == Delete
	for _, lb := range order {
		var err error
		if deregister {
			err = ex.p.DeregisterInstances(ctx, lb, byLB[lb])
			if errors.Is(err, cloud.ErrNotFound) {
				err = nil // the LB is gone, and its registrations with it
			}
		} else {
			err = ex.p.RegisterInstances(ctx, lb, byLB[lb])
		}
		if err != nil {
			return err
		}
	}
	return nil
}
