package cloudtest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/instactl/instactl/cloud"
)

// Fake is an in-memory cloud.Provider for unit tests of code that drives a provider. It keeps
// the rules the conformance suite checks (and passes it), and adds what moto cannot: latency on
// every mutating call, to exercise waits and cancellation, and injected failures.
type Fake struct {
	// Latency is slept (honouring the context) in every mutating call.
	Latency time.Duration
	// Fail, when set, is asked before every mutating call with the operation name (the method
	// name, "CreateInstance") and a key (the instance name, volume id, group name...); a
	// non-nil error fails the call before it changes anything.
	Fail func(op, key string) error

	mu        sync.Mutex
	seq       int
	calls     map[string]int
	instances map[string]*cloud.Instance
	tokens    map[string]string
	volumes   map[string]*cloud.Volume
	groups    map[string]*cloud.SecurityGroup
	lbs       map[string]*cloud.LoadBalancer
	keys      map[string]string // name -> stack
	snaps     map[string]*cloud.Snapshot
}

// NewFake returns an empty fake cloud.
func NewFake() *Fake {
	return &Fake{
		calls: map[string]int{}, instances: map[string]*cloud.Instance{}, tokens: map[string]string{},
		volumes: map[string]*cloud.Volume{}, groups: map[string]*cloud.SecurityGroup{},
		lbs: map[string]*cloud.LoadBalancer{}, keys: map[string]string{}, snaps: map[string]*cloud.Snapshot{},
	}
}

// Calls returns how many times op was called (successful or not).
func (f *Fake) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// Name implements cloud.Provider.
func (f *Fake) Name() string { return "fake" }

// begin counts the call, sleeps Latency and asks Fail; it returns with f.mu held on success.
func (f *Fake) begin(ctx context.Context, op, key string) error {
	f.mu.Lock()
	f.calls[op]++
	f.mu.Unlock()
	if f.Latency > 0 {
		select {
		case <-time.After(f.Latency):
		case <-ctx.Done():
			return fmt.Errorf("%s %s: %w", op, key, ctx.Err())
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s: %w", op, key, err)
	}
	if f.Fail != nil {
		if err := f.Fail(op, key); err != nil {
			return fmt.Errorf("%s %s: %w", op, key, err)
		}
	}
	f.mu.Lock()
	return nil
}

func (f *Fake) id(prefix string) string {
	f.seq++
	return fmt.Sprintf("%s-%08x", prefix, f.seq)
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errRefused, fmt.Sprintf(format, args...))
}

// Describe implements cloud.Provider.
func (f *Fake) Describe(ctx context.Context, stack string) (*cloud.Resources, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := &cloud.Resources{}
	for _, in := range f.instances {
		if in.Tags[cloud.TagStack] == stack && in.State != "terminated" {
			c := *in
			c.Tags = maps.Clone(in.Tags)
			c.SecurityGroups = slices.Clone(in.SecurityGroups)
			r.Instances = append(r.Instances, c)
		}
	}
	for _, v := range f.volumes {
		if v.Tags[cloud.TagStack] == stack {
			c := *v
			c.Tags = maps.Clone(v.Tags)
			r.Volumes = append(r.Volumes, c)
		}
	}
	for _, g := range f.groups {
		if g.Tags[cloud.TagStack] == stack {
			c := *g
			c.Tags = maps.Clone(g.Tags)
			c.Ingress = slices.Clone(g.Ingress)
			r.SecurityGroups = append(r.SecurityGroups, c)
		}
	}
	for _, lb := range f.lbs {
		if lb.Tags[cloud.TagStack] == stack {
			c := *lb
			c.Tags = maps.Clone(lb.Tags)
			c.Instances = slices.Clone(lb.Instances)
			c.Zones = slices.Clone(lb.Zones)
			c.SecurityGroupIDs = slices.Clone(lb.SecurityGroupIDs)
			r.LoadBalancers = append(r.LoadBalancers, c)
		}
	}
	for name, s := range f.keys {
		if s == stack {
			r.KeyPairs = append(r.KeyPairs, name)
		}
	}
	slices.SortFunc(r.Instances, func(a, b cloud.Instance) int { return cmpStr(a.ID, b.ID) })
	slices.SortFunc(r.Volumes, func(a, b cloud.Volume) int { return cmpStr(a.ID, b.ID) })
	slices.SortFunc(r.SecurityGroups, func(a, b cloud.SecurityGroup) int { return cmpStr(a.ID, b.ID) })
	slices.Sort(r.KeyPairs)
	return r, nil
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// EnsureKeyPair implements cloud.Provider.
func (f *Fake) EnsureKeyPair(ctx context.Context, stack, name, publicKey string) error {
	if err := f.begin(ctx, "EnsureKeyPair", name); err != nil {
		return err
	}
	defer f.mu.Unlock()
	if s, ok := f.keys[name]; ok && s != stack {
		return refuse("key pair %s belongs to stack %q", name, s)
	}
	f.keys[name] = stack
	return nil
}

// DeleteKeyPair implements cloud.Provider.
func (f *Fake) DeleteKeyPair(ctx context.Context, name string) error {
	if err := f.begin(ctx, "DeleteKeyPair", name); err != nil {
		return err
	}
	defer f.mu.Unlock()
	delete(f.keys, name)
	return nil
}

func (f *Fake) groupByName(stack, name string) *cloud.SecurityGroup {
	for _, g := range f.groups {
		if g.Tags[cloud.TagStack] == stack && g.Name == name {
			return g
		}
	}
	return nil
}

func (f *Fake) checkRules(stack, self string, rules []cloud.Rule) error {
	for _, r := range rules {
		if r.FromGroup != "" && r.FromGroup != self && f.groupByName(stack, r.FromGroup) == nil {
			return fmt.Errorf("rule refers to group %q, which stack %s does not have: %w", r.FromGroup, stack, cloud.ErrNotFound)
		}
	}
	return nil
}

// CreateSecurityGroup implements cloud.Provider.
func (f *Fake) CreateSecurityGroup(ctx context.Context, stack string, g cloud.SecurityGroup) (cloud.SecurityGroup, error) {
	if err := f.begin(ctx, "CreateSecurityGroup", g.Name); err != nil {
		return cloud.SecurityGroup{}, err
	}
	defer f.mu.Unlock()
	if f.groupByName(stack, g.Name) != nil {
		return cloud.SecurityGroup{}, refuse("group %s exists in stack %s", g.Name, stack)
	}
	if err := f.checkRules(stack, g.Name, g.Ingress); err != nil {
		return cloud.SecurityGroup{}, err
	}
	g.ID = f.id("sg")
	g.Tags = maps.Clone(g.Tags)
	if g.Tags == nil {
		g.Tags = map[string]string{}
	}
	g.Tags[cloud.TagStack] = stack
	g.Ingress = slices.Clone(g.Ingress)
	f.groups[g.ID] = &g
	return g, nil
}

// UpdateSecurityGroupRules implements cloud.Provider.
func (f *Fake) UpdateSecurityGroupRules(ctx context.Context, stack, groupID string, rules []cloud.Rule) error {
	if err := f.begin(ctx, "UpdateSecurityGroupRules", groupID); err != nil {
		return err
	}
	defer f.mu.Unlock()
	g, ok := f.groups[groupID]
	if !ok {
		return fmt.Errorf("group %s: %w", groupID, cloud.ErrNotFound)
	}
	if g.Tags[cloud.TagStack] != stack {
		return refuse("group %s is not in stack %s", groupID, stack)
	}
	if err := f.checkRules(stack, g.Name, rules); err != nil {
		return err
	}
	g.Ingress = slices.Clone(rules)
	return nil
}

// DeleteSecurityGroup implements cloud.Provider.
func (f *Fake) DeleteSecurityGroup(ctx context.Context, groupID string) error {
	if err := f.begin(ctx, "DeleteSecurityGroup", groupID); err != nil {
		return err
	}
	defer f.mu.Unlock()
	g, ok := f.groups[groupID]
	if !ok {
		return nil
	}
	stack := g.Tags[cloud.TagStack]
	for _, o := range f.groups {
		if o.ID == g.ID || o.Tags[cloud.TagStack] != stack {
			continue
		}
		for _, r := range o.Ingress {
			if r.FromGroup == g.Name {
				return refuse("group %s is referenced by group %s", g.Name, o.Name)
			}
		}
	}
	for _, in := range f.instances {
		if in.State != "terminated" && slices.Contains(in.SecurityGroups, groupID) {
			return refuse("group %s is used by instance %s", g.Name, in.ID)
		}
	}
	for _, lb := range f.lbs {
		if slices.Contains(lb.SecurityGroupIDs, groupID) {
			return refuse("group %s is used by load balancer %s", g.Name, lb.Name)
		}
	}
	delete(f.groups, groupID)
	return nil
}

// CreateInstance implements cloud.Provider.
func (f *Fake) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (cloud.Instance, error) {
	if err := f.begin(ctx, "CreateInstance", spec.Name); err != nil {
		return cloud.Instance{}, err
	}
	defer f.mu.Unlock()
	stack := spec.Tags[cloud.TagStack]
	if stack == "" {
		return cloud.Instance{}, refuse("instance %s has no %s tag", spec.Name, cloud.TagStack)
	}
	if id, ok := f.tokens[spec.ClientToken]; ok && spec.ClientToken != "" && f.instances[id].State != "terminated" {
		return *f.instances[id], nil
	}
	for _, g := range spec.SecurityGroupIDs {
		if _, ok := f.groups[g]; !ok {
			return cloud.Instance{}, fmt.Errorf("security group %s: %w", g, cloud.ErrNotFound)
		}
	}
	tags := maps.Clone(spec.Tags)
	tags[cloud.TagRole] = spec.Role
	tags[cloud.TagIndex] = strconv.Itoa(spec.Index)
	tags[cloud.TagName] = spec.Name
	f.seq++
	in := &cloud.Instance{
		ID: fmt.Sprintf("i-%08x", f.seq), Name: spec.Name, Role: spec.Role, Index: spec.Index, Type: spec.Type,
		Image: spec.Image, Zone: spec.Zone, PrivateAddress: fmt.Sprintf("127.1.%d.%d", f.seq/250, 1+f.seq%250),
		SSHPort: 22, State: "running", SecurityGroups: slices.Clone(spec.SecurityGroupIDs), Tags: tags,
	}
	in.PublicAddress = in.PrivateAddress
	f.instances[in.ID] = in
	if spec.ClientToken != "" {
		f.tokens[spec.ClientToken] = in.ID
	}
	return *in, nil
}

// TerminateInstances implements cloud.Provider.
func (f *Fake) TerminateInstances(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := f.begin(ctx, "TerminateInstances", ids[0]); err != nil {
		return err
	}
	defer f.mu.Unlock()
	for _, id := range ids {
		if _, ok := f.instances[id]; !ok {
			return fmt.Errorf("instance %s: %w", id, cloud.ErrNotFound)
		}
	}
	for _, id := range ids {
		f.instances[id].State = "terminated"
		for _, v := range f.volumes {
			if v.InstanceID == id {
				v.InstanceID, v.Device, v.State = "", "", "available"
			}
		}
	}
	return nil
}

// StopInstances implements cloud.Provider: instances become "stopped" at once and keep their
// volumes and load balancer registrations. A missing or terminated instance fails the call
// before anything changes.
func (f *Fake) StopInstances(ctx context.Context, ids []string, force bool) error {
	return f.setState(ctx, "StopInstances", ids, "stopped")
}

// StartInstances implements cloud.Provider: instances become "running" at once.
func (f *Fake) StartInstances(ctx context.Context, ids []string) error {
	return f.setState(ctx, "StartInstances", ids, "running")
}

func (f *Fake) setState(ctx context.Context, op string, ids []string, state string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := f.begin(ctx, op, ids[0]); err != nil {
		return err
	}
	defer f.mu.Unlock()
	for _, id := range ids {
		in, ok := f.instances[id]
		if !ok {
			return fmt.Errorf("instance %s: %w", id, cloud.ErrNotFound)
		}
		if in.State == "terminated" {
			return fmt.Errorf("%s: instance %s is terminated", op, id)
		}
	}
	for _, id := range ids {
		f.instances[id].State = state
	}
	return nil
}

// CreateVolume implements cloud.Provider.
func (f *Fake) CreateVolume(ctx context.Context, spec cloud.VolumeSpec) (cloud.Volume, error) {
	if err := f.begin(ctx, "CreateVolume", spec.Tags[cloud.TagName]); err != nil {
		return cloud.Volume{}, err
	}
	defer f.mu.Unlock()
	if spec.Tags[cloud.TagStack] == "" {
		return cloud.Volume{}, refuse("volume has no %s tag", cloud.TagStack)
	}
	v := &cloud.Volume{ID: f.id("vol"), Zone: spec.Zone, SizeGiB: spec.SizeGiB, Type: spec.Type,
		State: "available", SnapshotID: spec.SnapshotID, Tags: maps.Clone(spec.Tags)}
	f.volumes[v.ID] = v
	return *v, nil
}

// AttachVolume implements cloud.Provider.
func (f *Fake) AttachVolume(ctx context.Context, volumeID, instanceID, device string) error {
	if err := f.begin(ctx, "AttachVolume", volumeID); err != nil {
		return err
	}
	defer f.mu.Unlock()
	v, ok := f.volumes[volumeID]
	if !ok {
		return fmt.Errorf("volume %s: %w", volumeID, cloud.ErrNotFound)
	}
	in, ok := f.instances[instanceID]
	if !ok || in.State == "terminated" {
		return fmt.Errorf("instance %s: %w", instanceID, cloud.ErrNotFound)
	}
	switch {
	case v.InstanceID == instanceID && v.Device == device:
		return nil
	case v.Tags[cloud.TagStack] != in.Tags[cloud.TagStack]:
		return refuse("volume %s and instance %s belong to different stacks", volumeID, instanceID)
	case v.InstanceID != "":
		return refuse("volume %s is already attached to %s at %s", volumeID, v.InstanceID, v.Device)
	case v.Zone != in.Zone:
		return refuse("volume %s is in %s, instance %s in %s", volumeID, v.Zone, instanceID, in.Zone)
	}
	for _, o := range f.volumes {
		if o.InstanceID == instanceID && o.Device == device {
			return refuse("device %s on %s is in use by %s", device, instanceID, o.ID)
		}
	}
	v.InstanceID, v.Device, v.State = instanceID, device, "in-use"
	return nil
}

// DetachVolume implements cloud.Provider.
func (f *Fake) DetachVolume(ctx context.Context, volumeID, instanceID, device string) error {
	if err := f.begin(ctx, "DetachVolume", volumeID); err != nil {
		return err
	}
	defer f.mu.Unlock()
	v, ok := f.volumes[volumeID]
	if !ok {
		return fmt.Errorf("volume %s: %w", volumeID, cloud.ErrNotFound)
	}
	if v.InstanceID == "" {
		return nil
	}
	if v.InstanceID != instanceID || v.Device != device {
		return refuse("volume %s is attached to %s at %s, not %s at %s", volumeID, v.InstanceID, v.Device, instanceID, device)
	}
	v.InstanceID, v.Device, v.State = "", "", "available"
	return nil
}

// DeleteVolume implements cloud.Provider.
func (f *Fake) DeleteVolume(ctx context.Context, volumeID string) error {
	if err := f.begin(ctx, "DeleteVolume", volumeID); err != nil {
		return err
	}
	defer f.mu.Unlock()
	v, ok := f.volumes[volumeID]
	if !ok {
		return nil
	}
	if v.InstanceID != "" {
		return refuse("volume %s is attached to %s", volumeID, v.InstanceID)
	}
	delete(f.volumes, volumeID)
	return nil
}

// CreateLoadBalancer implements cloud.Provider.
func (f *Fake) CreateLoadBalancer(ctx context.Context, lb cloud.LoadBalancer) (cloud.LoadBalancer, error) {
	if err := f.begin(ctx, "CreateLoadBalancer", lb.Name); err != nil {
		return cloud.LoadBalancer{}, err
	}
	defer f.mu.Unlock()
	if lb.Tags[cloud.TagStack] == "" {
		return cloud.LoadBalancer{}, refuse("load balancer %s has no %s tag", lb.Name, cloud.TagStack)
	}
	if old, ok := f.lbs[lb.Name]; ok {
		if old.Tags[cloud.TagStack] != lb.Tags[cloud.TagStack] {
			return cloud.LoadBalancer{}, refuse("load balancer %s belongs to another stack", lb.Name)
		}
		return *old, nil
	}
	lb.DNSName = lb.Name + ".lb.fake"
	lb.Instances = nil
	lb.Tags = maps.Clone(lb.Tags)
	f.lbs[lb.Name] = &lb
	return lb, nil
}

// DeleteLoadBalancer implements cloud.Provider.
func (f *Fake) DeleteLoadBalancer(ctx context.Context, name string) error {
	if err := f.begin(ctx, "DeleteLoadBalancer", name); err != nil {
		return err
	}
	defer f.mu.Unlock()
	delete(f.lbs, name)
	return nil
}

// RegisterInstances implements cloud.Provider.
func (f *Fake) RegisterInstances(ctx context.Context, lbName string, ids []string) error {
	if err := f.begin(ctx, "RegisterInstances", lbName); err != nil {
		return err
	}
	defer f.mu.Unlock()
	lb, ok := f.lbs[lbName]
	if !ok {
		return fmt.Errorf("load balancer %s: %w", lbName, cloud.ErrNotFound)
	}
	for _, id := range ids {
		in, ok := f.instances[id]
		if !ok || in.State == "terminated" {
			return fmt.Errorf("instance %s: %w", id, cloud.ErrNotFound)
		}
		if in.Tags[cloud.TagStack] != lb.Tags[cloud.TagStack] {
			return refuse("instance %s is not in the load balancer's stack", id)
		}
	}
	for _, id := range ids {
		if !slices.Contains(lb.Instances, id) {
			lb.Instances = append(lb.Instances, id)
		}
	}
	return nil
}

// DeregisterInstances implements cloud.Provider.
func (f *Fake) DeregisterInstances(ctx context.Context, lbName string, ids []string) error {
	if err := f.begin(ctx, "DeregisterInstances", lbName); err != nil {
		return err
	}
	defer f.mu.Unlock()
	lb, ok := f.lbs[lbName]
	if !ok {
		return fmt.Errorf("load balancer %s: %w", lbName, cloud.ErrNotFound)
	}
	lb.Instances = slices.DeleteFunc(lb.Instances, func(id string) bool { return slices.Contains(ids, id) })
	return nil
}

// InstanceHealth implements cloud.Provider: every registered running instance is InService.
func (f *Fake) InstanceHealth(ctx context.Context, lbName string) ([]cloud.InstanceHealth, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lb, ok := f.lbs[lbName]
	if !ok {
		return nil, fmt.Errorf("load balancer %s: %w", lbName, cloud.ErrNotFound)
	}
	var out []cloud.InstanceHealth
	for _, id := range lb.Instances {
		st := "InService"
		if in := f.instances[id]; in == nil || in.State != "running" {
			st = "OutOfService"
		}
		out = append(out, cloud.InstanceHealth{InstanceID: id, State: st})
	}
	return out, nil
}

// CreateSnapshots implements cloud.Provider.
func (f *Fake) CreateSnapshots(ctx context.Context, instanceID string, volumeIDs []string, tags map[string]string) ([]cloud.Snapshot, error) {
	if err := f.begin(ctx, "CreateSnapshots", instanceID); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	in, ok := f.instances[instanceID]
	if !ok {
		return nil, fmt.Errorf("instance %s: %w", instanceID, cloud.ErrNotFound)
	}
	for _, id := range volumeIDs {
		if v, ok := f.volumes[id]; !ok || v.InstanceID != instanceID {
			return nil, refuse("volume %s is not attached to %s", id, instanceID)
		}
	}
	tags = maps.Clone(tags)
	if tags == nil {
		tags = map[string]string{}
	}
	tags[cloud.TagStack] = in.Tags[cloud.TagStack]
	var out []cloud.Snapshot
	now := time.Now().UTC()
	for _, id := range volumeIDs {
		s := &cloud.Snapshot{ID: f.id("snap"), VolumeID: id, SizeGiB: f.volumes[id].SizeGiB, State: "completed",
			StartTime: now, Tags: maps.Clone(tags)}
		f.snaps[s.ID] = s
		out = append(out, *s)
	}
	return out, nil
}

// DescribeSnapshots implements cloud.Provider.
func (f *Fake) DescribeSnapshots(ctx context.Context, stack string) ([]cloud.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []cloud.Snapshot
	for _, s := range f.snaps {
		if s.Tags[cloud.TagStack] == stack {
			c := *s
			c.Tags = maps.Clone(s.Tags)
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b cloud.Snapshot) int { return cmpStr(a.ID, b.ID) })
	return out, nil
}

// DeleteSnapshot implements cloud.Provider.
func (f *Fake) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	if err := f.begin(ctx, "DeleteSnapshot", snapshotID); err != nil {
		return err
	}
	defer f.mu.Unlock()
	delete(f.snaps, snapshotID)
	return nil
}

// TagSnapshots implements cloud.Provider.
func (f *Fake) TagSnapshots(ctx context.Context, snapshotIDs []string, tags map[string]string) error {
	if len(snapshotIDs) == 0 || len(tags) == 0 {
		return nil
	}
	if err := f.begin(ctx, "TagSnapshots", snapshotIDs[0]); err != nil {
		return err
	}
	defer f.mu.Unlock()
	for _, id := range snapshotIDs {
		s, ok := f.snaps[id]
		if !ok {
			return fmt.Errorf("snapshot %s: %w", id, cloud.ErrNotFound)
		}
		stack := s.Tags[cloud.TagStack]
		if stack == "" {
			return refuse("snapshot %s has no stack tag", id)
		}
		if v, ok := tags[cloud.TagStack]; ok && v != stack {
			return refuse("snapshot %s belongs to stack %q, not %q", id, stack, v)
		}
	}
	for _, id := range snapshotIDs {
		maps.Copy(f.snaps[id].Tags, tags)
	}
	return nil
}

var _ cloud.Provider = (*Fake)(nil)
