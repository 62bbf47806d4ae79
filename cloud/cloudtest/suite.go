package cloudtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/instactl/instactl/cloud"
)

// Config holds the provider-specific values the suite needs.
type Config struct {
	// Zones are two distinct availability zones (the second one for cross-zone refusals).
	Zones [2]string
	// Image and InstanceType are valid for the provider.
	Image        string
	InstanceType string
	// Timeout bounds each subtest.
	Timeout time.Duration
}

// DefaultConfig suits AWS and moto (us-east-1, moto's built-in Ubuntu AMI).
var DefaultConfig = Config{
	Zones:        [2]string{"us-east-1a", "us-east-1b"},
	Image:        "ami-785db401",
	InstanceType: "t2.micro",
	Timeout:      3 * time.Minute,
}

// Run runs the conformance suite with DefaultConfig.
func Run(t *testing.T, newProvider func(t *testing.T) cloud.Provider) {
	RunWith(t, DefaultConfig, newProvider)
}

// RunWith runs the conformance suite. newProvider is called once per subtest; the providers it
// returns may share one backend, because every subtest works in a stack of its own (and checks it
// never sees the others'). Subtests run in parallel.
func RunWith(t *testing.T, cfg Config, newProvider func(t *testing.T) cloud.Provider) {
	tests := []struct {
		name string
		fn   func(*env)
	}{
		{"Instances", testInstances},
		{"Volumes", testVolumes},
		{"SecurityGroups", testSecurityGroups},
		{"KeyPair", testKeyPair},
		{"LoadBalancer", testLoadBalancer},
		{"Snapshots", testSnapshots},
		{"SnapshotTags", testSnapshotTags},
		{"StackIsolation", testIsolation},
		{"StopStart", testStopStart},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := newProvider(t)
			ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
			t.Cleanup(cancel)
			e := &env{T: t, p: p, ctx: ctx, cfg: cfg, stack: uniqueStack(tc.name)}
			t.Cleanup(func() { e.cleanup(e.stack) })
			tc.fn(e)
		})
	}
}

// env is one subtest's provider, context and stack.
type env struct {
	*testing.T
	p     cloud.Provider
	ctx   context.Context
	cfg   Config
	stack string
	other []string // extra stacks made by the subtest, cleaned up too
}

func uniqueStack(name string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	short := strings.ToLower(name)
	if len(short) > 6 {
		short = short[:6]
	}
	return "ct-" + short + "-" + hex.EncodeToString(b)
}

func (e *env) newStack(suffix string) string {
	s := e.stack + suffix
	e.other = append(e.other, s)
	e.Cleanup(func() { e.cleanup(s) })
	return s
}

func (e *env) must(err error, what string) {
	e.Helper()
	if err != nil {
		e.Fatalf("%s: %v", what, err)
	}
}

func (e *env) describe(stack string) *cloud.Resources {
	e.Helper()
	r, err := e.p.Describe(e.ctx, stack)
	e.must(err, "describe "+stack)
	return r
}

func (e *env) instance(stack, role string, index int, zone string) cloud.Instance {
	e.Helper()
	name := fmt.Sprintf("%s-%s-%d", stack, role, index)
	in, err := e.p.CreateInstance(e.ctx, cloud.InstanceSpec{
		Name: name, Role: role, Index: index, Type: e.cfg.InstanceType, Image: e.cfg.Image,
		Zone: zone, ClientToken: name, Tags: map[string]string{cloud.TagStack: stack},
	})
	e.must(err, "create instance "+name)
	return in
}

func (e *env) volume(stack, zone string, size int) cloud.Volume {
	e.Helper()
	v, err := e.p.CreateVolume(e.ctx, cloud.VolumeSpec{Zone: zone, SizeGiB: size,
		Tags: map[string]string{cloud.TagStack: stack}})
	e.must(err, "create volume")
	return v
}

func findVolume(r *cloud.Resources, id string) *cloud.Volume {
	for i := range r.Volumes {
		if r.Volumes[i].ID == id {
			return &r.Volumes[i]
		}
	}
	return nil
}

func findInstance(r *cloud.Resources, id string) *cloud.Instance {
	for i := range r.Instances {
		if r.Instances[i].ID == id {
			return &r.Instances[i]
		}
	}
	return nil
}

func findGroup(r *cloud.Resources, name string) *cloud.SecurityGroup {
	for i := range r.SecurityGroups {
		if r.SecurityGroups[i].Name == name {
			return &r.SecurityGroups[i]
		}
	}
	return nil
}

// cleanup deletes, best effort, whatever the stack still holds, so a shared backend (the sandbox)
// is left clean.
func (e *env) cleanup(stack string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := e.p.Describe(ctx, stack)
	if err != nil {
		e.Logf("cleanup %s: %v", stack, err)
		return
	}
	for _, lb := range r.LoadBalancers {
		_ = e.p.DeleteLoadBalancer(ctx, lb.Name)
	}
	var ids []string
	for _, in := range r.Instances {
		ids = append(ids, in.ID)
	}
	_ = e.p.TerminateInstances(ctx, ids)
	for _, v := range r.Volumes {
		if v.InstanceID != "" {
			_ = e.p.DetachVolume(ctx, v.ID, v.InstanceID, v.Device)
		}
		_ = e.p.DeleteVolume(ctx, v.ID)
	}
	// Groups may reference each other: delete in rounds until nothing more goes.
	for round := 0; round < len(r.SecurityGroups); round++ {
		for _, g := range r.SecurityGroups {
			_ = e.p.UpdateSecurityGroupRules(ctx, stack, g.ID, nil)
		}
		for _, g := range r.SecurityGroups {
			_ = e.p.DeleteSecurityGroup(ctx, g.ID)
		}
	}
	for _, k := range r.KeyPairs {
		_ = e.p.DeleteKeyPair(ctx, k)
	}
	if snaps, err := e.p.DescribeSnapshots(ctx, stack); err == nil {
		for _, s := range snaps {
			_ = e.p.DeleteSnapshot(ctx, s.ID)
		}
	}
}

func testInstances(e *env) {
	zone := e.cfg.Zones[0]
	in := e.instance(e.stack, "app", 1, zone)
	if in.ID == "" || in.Role != "app" || in.Index != 1 || in.Zone != zone || in.Type != e.cfg.InstanceType {
		e.Fatalf("created instance = %+v; want role app, index 1, zone %s, type %s", in, zone, e.cfg.InstanceType)
	}
	if in.State != "running" {
		e.Errorf("CreateInstance returned state %q; it must wait for running", in.State)
	}
	for k, want := range map[string]string{cloud.TagStack: e.stack, cloud.TagRole: "app", cloud.TagIndex: "1"} {
		if in.Tags[k] != want {
			e.Errorf("tag %s = %q, want %q (tags %v)", k, in.Tags[k], want, in.Tags)
		}
	}
	if in.Tags[cloud.TagName] == "" || in.Name == "" {
		e.Errorf("instance has no name: %+v", in)
	}
	if in.PrivateAddress == "" || in.SSHPort == 0 {
		e.Errorf("instance has no address or ssh port: %+v", in)
	}

	again := e.instance(e.stack, "app", 1, zone)
	if again.ID != in.ID {
		e.Errorf("same client token made a second instance: %s and %s", in.ID, again.ID)
	}
	r := e.describe(e.stack)
	if len(r.Instances) != 1 || r.Instances[0].ID != in.ID {
		e.Fatalf("describe lists %d instances (%+v), want exactly %s", len(r.Instances), r.Instances, in.ID)
	}
	got := r.Instances[0]
	if got.Role != "app" || got.Index != 1 || got.State != "running" || got.Zone != zone {
		e.Errorf("described instance = %+v", got)
	}

	other := e.instance(e.stack, "app", 2, zone)
	e.must(e.p.TerminateInstances(e.ctx, []string{in.ID}), "terminate")
	e.must(e.p.TerminateInstances(e.ctx, []string{in.ID}), "terminate again (must be idempotent)")
	r = e.describe(e.stack)
	if len(r.Instances) != 1 || r.Instances[0].ID != other.ID {
		e.Errorf("after terminate, describe lists %+v; want only %s", r.Instances, other.ID)
	}
	e.must(e.p.TerminateInstances(e.ctx, nil), "terminate nothing")
}

func testVolumes(e *env) {
	za, zb := e.cfg.Zones[0], e.cfg.Zones[1]
	in1 := e.instance(e.stack, "pg", 0, za)
	in2 := e.instance(e.stack, "pg", 1, za)
	v1 := e.volume(e.stack, za, 2)
	v2 := e.volume(e.stack, za, 2)
	v3 := e.volume(e.stack, zb, 2)
	if v1.ID == "" || v1.Zone != za || v1.SizeGiB != 2 || v1.State != "available" {
		e.Fatalf("created volume = %+v; want available, %s, 2 GiB", v1, za)
	}
	if v1.Tags[cloud.TagStack] != e.stack {
		e.Errorf("volume tags = %v, want %s=%s", v1.Tags, cloud.TagStack, e.stack)
	}

	e.must(e.p.AttachVolume(e.ctx, v1.ID, in1.ID, "/dev/sdf"), "attach")
	e.must(e.p.AttachVolume(e.ctx, v1.ID, in1.ID, "/dev/sdf"), "attach again at the same place (must be idempotent)")
	r := e.describe(e.stack)
	if got := findVolume(r, v1.ID); got == nil || got.InstanceID != in1.ID || got.Device != "/dev/sdf" || got.State != "in-use" {
		e.Fatalf("after attach, volume = %+v; want in-use on %s at /dev/sdf", got, in1.ID)
	}

	refusals := []struct {
		what           string
		vol, inst, dev string
	}{
		{"already attached to another instance", v1.ID, in2.ID, "/dev/sdg"},
		{"device in use", v2.ID, in1.ID, "/dev/sdf"},
		{"volume in another zone", v3.ID, in1.ID, "/dev/sdh"},
	}
	for _, rf := range refusals {
		if err := e.p.AttachVolume(e.ctx, rf.vol, rf.inst, rf.dev); err == nil {
			e.Errorf("attach %s: accepted, want refusal", rf.what)
		}
	}
	r = e.describe(e.stack)
	if got := findVolume(r, v1.ID); got == nil || got.InstanceID != in1.ID || got.Device != "/dev/sdf" {
		e.Errorf("a refused attach moved %s: %+v", v1.ID, got)
	}
	for _, id := range []string{v2.ID, v3.ID} {
		if got := findVolume(r, id); got == nil || got.InstanceID != "" || got.State != "available" {
			e.Errorf("a refused attach changed %s: %+v", id, got)
		}
	}

	if err := e.p.DeleteVolume(e.ctx, v1.ID); err == nil {
		e.Errorf("deleting an attached volume was accepted")
	}
	e.must(e.p.DetachVolume(e.ctx, v1.ID, in1.ID, "/dev/sdf"), "detach")
	e.must(e.p.DetachVolume(e.ctx, v1.ID, in1.ID, "/dev/sdf"), "detach again (must be idempotent)")
	r = e.describe(e.stack)
	if got := findVolume(r, v1.ID); got == nil || got.InstanceID != "" || got.State != "available" {
		e.Errorf("after detach, volume = %+v; want available", got)
	}
	e.must(e.p.AttachVolume(e.ctx, v2.ID, in1.ID, "/dev/sdf"), "attach another volume on the freed device")
	for _, v := range []cloud.Volume{v1, v3} {
		e.must(e.p.DeleteVolume(e.ctx, v.ID), "delete volume")
	}
	e.must(e.p.DeleteVolume(e.ctx, v1.ID), "delete a deleted volume (must be idempotent)")
	r = e.describe(e.stack)
	if len(r.Volumes) != 1 || r.Volumes[0].ID != v2.ID {
		e.Errorf("after deletes, volumes = %+v; want only %s", r.Volumes, v2.ID)
	}
}

func sortedRules(rs []cloud.Rule) []cloud.Rule {
	out := slices.Clone(rs)
	slices.SortFunc(out, func(a, b cloud.Rule) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	})
	return out
}

func testSecurityGroups(e *env) {
	web, err := e.p.CreateSecurityGroup(e.ctx, e.stack, cloud.SecurityGroup{
		Name: "web", Description: "web tier",
		Ingress: []cloud.Rule{{FromPort: 80, ToPort: 80, CIDR: "0.0.0.0/0"}},
	})
	e.must(err, "create group web")
	dbRules := []cloud.Rule{
		{FromPort: 5432, ToPort: 5432, FromGroup: "web"},
		{FromPort: 5432, ToPort: 5432, FromGroup: "db"},
		{FromPort: 22, ToPort: 22, CIDR: "203.0.113.0/24"},
	}
	db, err := e.p.CreateSecurityGroup(e.ctx, e.stack, cloud.SecurityGroup{Name: "db", Description: "db", Ingress: dbRules})
	e.must(err, "create group db (rules from another group and from itself)")
	if web.ID == "" || db.ID == "" || web.ID == db.ID {
		e.Fatalf("group ids %q, %q", web.ID, db.ID)
	}
	r := e.describe(e.stack)
	if len(r.SecurityGroups) != 2 {
		e.Fatalf("describe lists %d groups, want 2: %+v", len(r.SecurityGroups), r.SecurityGroups)
	}
	g := findGroup(r, "db")
	if g == nil || !slices.Equal(sortedRules(g.Ingress), sortedRules(dbRules)) {
		e.Fatalf("group db = %+v; want ingress %v", g, dbRules)
	}
	if g.Tags[cloud.TagStack] != e.stack {
		e.Errorf("group tags = %v", g.Tags)
	}

	newRules := []cloud.Rule{
		{FromPort: 5432, ToPort: 5432, FromGroup: "web"},
		{FromPort: 22, ToPort: 22, CIDR: "198.51.100.0/24"},
	}
	e.must(e.p.UpdateSecurityGroupRules(e.ctx, e.stack, db.ID, newRules), "update rules")
	e.must(e.p.UpdateSecurityGroupRules(e.ctx, e.stack, db.ID, newRules), "update rules again (no-op)")
	r = e.describe(e.stack)
	if g := findGroup(r, "db"); g == nil || !slices.Equal(sortedRules(g.Ingress), sortedRules(newRules)) {
		e.Fatalf("after update, group db = %+v; want ingress exactly %v", g, newRules)
	}

	if err := e.p.DeleteSecurityGroup(e.ctx, web.ID); err == nil {
		e.Fatalf("deleting group web while db references it was accepted")
	}
	if findGroup(e.describe(e.stack), "web") == nil {
		e.Fatalf("refused delete removed group web")
	}
	e.must(e.p.DeleteSecurityGroup(e.ctx, db.ID), "delete db")
	e.must(e.p.DeleteSecurityGroup(e.ctx, web.ID), "delete web once unreferenced")
	e.must(e.p.DeleteSecurityGroup(e.ctx, web.ID), "delete web again (must be idempotent)")
	if r := e.describe(e.stack); len(r.SecurityGroups) != 0 {
		e.Errorf("groups left: %+v", r.SecurityGroups)
	}
}

// PublicKey returns a fresh ed25519 public key in authorized_keys format.
func PublicKey(t testing.TB) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}

func testKeyPair(e *env) {
	name := e.stack + "-admin"
	pub := PublicKey(e)
	e.must(e.p.EnsureKeyPair(e.ctx, e.stack, name, pub), "ensure key pair")
	e.must(e.p.EnsureKeyPair(e.ctx, e.stack, name, pub), "ensure key pair again")
	if r := e.describe(e.stack); !slices.Equal(r.KeyPairs, []string{name}) {
		e.Fatalf("key pairs = %v, want [%s]", r.KeyPairs, name)
	}
	in, err := e.p.CreateInstance(e.ctx, cloud.InstanceSpec{Name: e.stack + "-k", Role: "k", Type: e.cfg.InstanceType,
		Image: e.cfg.Image, Zone: e.cfg.Zones[0], KeyName: name, ClientToken: e.stack + "-k",
		Tags: map[string]string{cloud.TagStack: e.stack}})
	e.must(err, "create instance with the key")
	e.must(e.p.TerminateInstances(e.ctx, []string{in.ID}), "terminate")
	e.must(e.p.DeleteKeyPair(e.ctx, name), "delete key pair")
	e.must(e.p.DeleteKeyPair(e.ctx, name), "delete key pair again (must be idempotent)")
	if r := e.describe(e.stack); len(r.KeyPairs) != 0 {
		e.Errorf("key pairs left: %v", r.KeyPairs)
	}
}

func testLoadBalancer(e *env) {
	zone := e.cfg.Zones[0]
	sg, err := e.p.CreateSecurityGroup(e.ctx, e.stack, cloud.SecurityGroup{Name: "lb", Description: "lb",
		Ingress: []cloud.Rule{{FromPort: 80, ToPort: 80, CIDR: "0.0.0.0/0"}}})
	e.must(err, "create lb group")
	a := e.instance(e.stack, "app", 0, zone)
	b := e.instance(e.stack, "app", 1, zone)
	want := cloud.LoadBalancer{Name: e.stack, ListenerPort: 80, TargetPort: 8000, HealthCheck: "/healthz",
		DrainTimeout: 30 * time.Second, Zones: []string{zone}, SecurityGroupIDs: []string{sg.ID},
		Tags: map[string]string{cloud.TagStack: e.stack}}
	lb, err := e.p.CreateLoadBalancer(e.ctx, want)
	e.must(err, "create load balancer")
	if lb.Name != want.Name || lb.DNSName == "" {
		e.Errorf("created lb = %+v", lb)
	}
	e.must(e.p.RegisterInstances(e.ctx, lb.Name, []string{a.ID, b.ID}), "register")
	r := e.describe(e.stack)
	if len(r.LoadBalancers) != 1 {
		e.Fatalf("describe lists %d load balancers, want 1", len(r.LoadBalancers))
	}
	got := r.LoadBalancers[0]
	if got.ListenerPort != 80 || got.TargetPort != 8000 || got.HealthCheck != "/healthz" ||
		got.DrainTimeout != 30*time.Second || !slices.Equal(got.SecurityGroupIDs, []string{sg.ID}) {
		e.Errorf("described lb = %+v; want listener 80 -> 8000, /healthz, drain 30s, group %s", got, sg.ID)
	}
	if !sameSet(got.Instances, []string{a.ID, b.ID}) {
		e.Errorf("registered = %v, want %s and %s", got.Instances, a.ID, b.ID)
	}
	health, err := e.p.InstanceHealth(e.ctx, lb.Name)
	e.must(err, "instance health")
	if len(health) != 2 {
		e.Errorf("health = %+v, want 2 entries", health)
	}
	if err := e.p.RegisterInstances(e.ctx, lb.Name, []string{"i-00000000000000000"}); err == nil {
		e.Errorf("registering a non-existent instance was accepted")
	}
	e.must(e.p.DeregisterInstances(e.ctx, lb.Name, []string{a.ID}), "deregister")
	e.must(e.p.DeregisterInstances(e.ctx, lb.Name, []string{a.ID}), "deregister again (must be idempotent)")
	r = e.describe(e.stack)
	if got := r.LoadBalancers[0].Instances; !sameSet(got, []string{b.ID}) {
		e.Errorf("after deregister, registered = %v, want [%s]", got, b.ID)
	}
	e.must(e.p.DeleteLoadBalancer(e.ctx, lb.Name), "delete load balancer")
	e.must(e.p.DeleteLoadBalancer(e.ctx, lb.Name), "delete load balancer again (must be idempotent)")
	if r := e.describe(e.stack); len(r.LoadBalancers) != 0 {
		e.Errorf("load balancers left: %+v", r.LoadBalancers)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func testSnapshots(e *env) {
	zone := e.cfg.Zones[0]
	in := e.instance(e.stack, "pg", 0, zone)
	var vols []cloud.Volume
	for i, dev := range []string{"/dev/sdf", "/dev/sdg", "/dev/sdh"} {
		v := e.volume(e.stack, zone, 1+i)
		e.must(e.p.AttachVolume(e.ctx, v.ID, in.ID, dev), "attach "+dev)
		vols = append(vols, v)
	}
	set := []string{vols[0].ID, vols[1].ID} // the third volume is attached but not in the set
	tags := map[string]string{cloud.TagStack: e.stack, cloud.TagSet: "set-1", "purpose": "conformance"}
	snaps, err := e.p.CreateSnapshots(e.ctx, in.ID, set, tags)
	e.must(err, "create snapshots")
	var got []string
	for _, s := range snaps {
		got = append(got, s.VolumeID)
		if s.ID == "" || s.Tags[cloud.TagSet] != "set-1" || s.Tags["purpose"] != "conformance" {
			e.Errorf("snapshot %+v lacks the set's tags %v", s, tags)
		}
	}
	if !sameSet(got, set) {
		e.Fatalf("snapshots cover volumes %v, want exactly %v", got, set)
	}
	listed, err := e.p.DescribeSnapshots(e.ctx, e.stack)
	e.must(err, "describe snapshots")
	var ids []string
	for _, s := range listed {
		ids = append(ids, s.ID)
		if s.Tags[cloud.TagSet] != "set-1" {
			e.Errorf("listed snapshot %+v lacks tag %s", s, cloud.TagSet)
		}
	}
	if !sameSet(ids, []string{snaps[0].ID, snaps[1].ID}) {
		e.Errorf("listed snapshots %v, want %s and %s", ids, snaps[0].ID, snaps[1].ID)
	}
	if _, err := e.p.CreateSnapshots(e.ctx, in.ID, []string{"vol-notattached0000"}, tags); err == nil {
		e.Errorf("snapshotting a volume not attached to the instance was accepted")
	}
	for _, s := range snaps {
		e.must(e.p.DeleteSnapshot(e.ctx, s.ID), "delete snapshot")
	}
	e.must(e.p.DeleteSnapshot(e.ctx, snaps[0].ID), "delete snapshot again (must be idempotent)")
	listed, err = e.p.DescribeSnapshots(e.ctx, e.stack)
	e.must(err, "describe snapshots")
	if len(listed) != 0 {
		e.Errorf("snapshots left: %+v", listed)
	}
}

func testSnapshotTags(e *env) {
	zone := e.cfg.Zones[0]
	in := e.instance(e.stack, "pg", 0, zone)
	var set []string
	for _, dev := range []string{"/dev/sdf", "/dev/sdg"} {
		v := e.volume(e.stack, zone, 1)
		e.must(e.p.AttachVolume(e.ctx, v.ID, in.ID, dev), "attach "+dev)
		set = append(set, v.ID)
	}
	snaps, err := e.p.CreateSnapshots(e.ctx, in.ID, set, map[string]string{cloud.TagStack: e.stack, cloud.TagSet: "set-t", "state": "complete"})
	e.must(err, "create snapshots")
	ids := []string{snaps[0].ID, snaps[1].ID}
	e.must(e.p.TagSnapshots(e.ctx, ids, map[string]string{"state": "verified", "verified-at": "2026-01-02T03:04:05Z"}), "tag snapshots")
	e.must(e.p.TagSnapshots(e.ctx, nil, map[string]string{"state": "x"}), "tag no snapshots")
	tagsOf := func() map[string]map[string]string {
		listed, err := e.p.DescribeSnapshots(e.ctx, e.stack)
		e.must(err, "describe snapshots")
		out := map[string]map[string]string{}
		for _, s := range listed {
			out[s.ID] = s.Tags
		}
		return out
	}
	for id, tags := range tagsOf() {
		if tags["state"] != "verified" || tags["verified-at"] != "2026-01-02T03:04:05Z" || tags[cloud.TagSet] != "set-t" || tags[cloud.TagStack] != e.stack {
			e.Errorf("snapshot %s after tagging: tags %v, want state overwritten, verified-at added, set and stack kept", id, tags)
		}
	}
	missing := "snap-0123456789abcdef0"
	err = e.p.TagSnapshots(e.ctx, []string{ids[0], missing}, map[string]string{"state": "partial"})
	if !errors.Is(err, cloud.ErrNotFound) {
		e.Errorf("tagging a missing snapshot: %v, want ErrNotFound", err)
	}
	other := e.newStack("-b")
	if err := e.p.TagSnapshots(e.ctx, ids[:1], map[string]string{cloud.TagStack: other}); err == nil {
		e.Errorf("moving a snapshot to another stack by tagging was accepted")
	}
	for id, tags := range tagsOf() {
		if tags["state"] != "verified" || tags[cloud.TagStack] != e.stack {
			e.Errorf("snapshot %s changed by a refused tagging: %v", id, tags)
		}
	}
	for _, id := range ids {
		e.must(e.p.DeleteSnapshot(e.ctx, id), "delete snapshot")
	}
}

func testIsolation(e *env) {
	zone := e.cfg.Zones[0]
	other := e.newStack("-b")
	mine := e.instance(e.stack, "app", 0, zone)
	theirs := e.instance(other, "app", 0, zone)
	if mine.ID == theirs.ID {
		e.Fatalf("two stacks got the same instance %s (client tokens must not collide across stacks)", mine.ID)
	}
	myVol := e.volume(e.stack, zone, 1)
	theirVol := e.volume(other, zone, 1)
	_, err := e.p.CreateSecurityGroup(e.ctx, other, cloud.SecurityGroup{Name: "app", Description: "b"})
	e.must(err, "create group in the other stack")
	_, err = e.p.CreateSecurityGroup(e.ctx, e.stack, cloud.SecurityGroup{Name: "app", Description: "a"})
	e.must(err, "create a group of the same name in this stack")
	lb, err := e.p.CreateLoadBalancer(e.ctx, cloud.LoadBalancer{Name: e.stack, ListenerPort: 80, TargetPort: 8000,
		HealthCheck: "/", Zones: []string{zone}, Tags: map[string]string{cloud.TagStack: e.stack}})
	e.must(err, "create load balancer")
	e.must(e.p.EnsureKeyPair(e.ctx, other, other+"-admin", PublicKey(e)), "key pair in other stack")

	r := e.describe(e.stack)
	if len(r.Instances) != 1 || r.Instances[0].ID != mine.ID || len(r.Volumes) != 1 || r.Volumes[0].ID != myVol.ID ||
		len(r.SecurityGroups) != 1 || len(r.KeyPairs) != 0 || len(r.LoadBalancers) != 1 {
		e.Fatalf("describe %s lists another stack's resources: %+v", e.stack, r)
	}
	ro := e.describe(other)
	if len(ro.Instances) != 1 || ro.Instances[0].ID != theirs.ID || len(ro.LoadBalancers) != 0 {
		e.Fatalf("describe %s = %+v", other, ro)
	}

	if err := e.p.AttachVolume(e.ctx, theirVol.ID, mine.ID, "/dev/sdf"); err == nil {
		e.Errorf("attaching another stack's volume was accepted")
	}
	if err := e.p.RegisterInstances(e.ctx, lb.Name, []string{theirs.ID}); err == nil {
		e.Errorf("registering another stack's instance was accepted")
	}
	e.must(e.p.TerminateInstances(e.ctx, []string{mine.ID}), "terminate mine")
	e.must(e.p.DeleteVolume(e.ctx, myVol.ID), "delete my volume")
	ro = e.describe(other)
	if len(ro.Instances) != 1 || ro.Instances[0].State != "running" || findVolume(ro, theirVol.ID) == nil ||
		findVolume(ro, theirVol.ID).InstanceID != "" || len(ro.KeyPairs) != 1 {
		e.Errorf("the other stack was touched: %+v", ro)
	}
	if len(e.describe(e.stack).LoadBalancers[0].Instances) != 0 {
		e.Errorf("a refused registration registered something")
	}
	if findInstance(ro, mine.ID) != nil {
		e.Errorf("my instance is listed in the other stack")
	}
}

// errRefused marks a refusal in Fake.
var errRefused = errors.New("refused")

// testStopStart: a stopped instance is still the stack's (same id, address, tags, volume and
// load balancer registration), so a plan sees no change for it and destroy finds it; stop and
// start are idempotent; only the instances named change.
func testStopStart(e *env) {
	zone := e.cfg.Zones[0]
	in := e.instance(e.stack, "pg", 0, zone)
	other := e.instance(e.stack, "pg", 1, zone)
	v := e.volume(e.stack, zone, 1)
	e.must(e.p.AttachVolume(e.ctx, v.ID, in.ID, "/dev/sdf"), "attach")
	lb, err := e.p.CreateLoadBalancer(e.ctx, cloud.LoadBalancer{Name: e.stack, ListenerPort: 80, TargetPort: 8000,
		HealthCheck: "/healthz", DrainTimeout: time.Second, Zones: []string{zone},
		Tags: map[string]string{cloud.TagStack: e.stack}})
	e.must(err, "create load balancer")
	e.must(e.p.RegisterInstances(e.ctx, lb.Name, []string{in.ID}), "register")

	// check describes the stack and compares in's state and everything a stop must keep.
	check := func(when, wantState string) {
		e.Helper()
		r := e.describe(e.stack)
		got := findInstance(r, in.ID)
		if got == nil {
			e.Fatalf("%s: describe does not list %s (a stopped instance is still the stack's): %+v", when, in.ID, r.Instances)
		}
		if got.State != wantState {
			e.Errorf("%s: state %q, want %q", when, got.State, wantState)
		}
		if got.Role != in.Role || got.Index != in.Index || got.Type != in.Type || got.Zone != in.Zone ||
			got.PrivateAddress != in.PrivateAddress || got.Tags[cloud.TagStack] != e.stack {
			e.Errorf("%s: instance = %+v; want it as created: %+v", when, *got, in)
		}
		if o := findInstance(r, other.ID); o == nil || o.State != "running" {
			e.Errorf("%s: the other instance = %+v; want it running, untouched", when, o)
		}
		if vol := findVolume(r, v.ID); vol == nil || vol.InstanceID != in.ID || vol.Device != "/dev/sdf" || vol.State != "in-use" {
			e.Errorf("%s: volume = %+v; want in-use on %s at /dev/sdf", when, vol, in.ID)
		}
		if len(r.LoadBalancers) != 1 || !slices.Contains(r.LoadBalancers[0].Instances, in.ID) {
			e.Errorf("%s: load balancers = %+v; want %s still registered", when, r.LoadBalancers, in.ID)
		}
	}

	e.must(e.p.StopInstances(e.ctx, []string{in.ID}, true), "stop (force)")
	check("after stop", "stopped")
	// The same client token finds the stopped instance, as it is: a fenced host stays stopped.
	if again := e.instance(e.stack, "pg", 0, zone); again.ID != in.ID || again.State != "stopped" {
		e.Errorf("create with the stopped instance's client token = %s %s; want %s stopped", again.ID, again.State, in.ID)
	}
	e.must(e.p.StopInstances(e.ctx, []string{in.ID}, false), "stop a stopped instance (must succeed)")
	e.must(e.p.StopInstances(e.ctx, []string{in.ID}, true), "force-stop a stopped instance (must succeed)")
	check("after stopping again", "stopped")

	e.must(e.p.StartInstances(e.ctx, []string{in.ID}), "start")
	check("after start", "running")
	e.must(e.p.StartInstances(e.ctx, []string{in.ID, other.ID}), "start running instances (must succeed)")
	check("after starting again", "running")

	e.must(e.p.StopInstances(e.ctx, []string{in.ID}, false), "stop (clean)")
	check("after a clean stop", "stopped")
	e.must(e.p.StopInstances(e.ctx, nil, true), "stop nothing")
	e.must(e.p.StartInstances(e.ctx, nil), "start nothing")
	missing := "i-0123456789abcdef0"
	if err := e.p.StopInstances(e.ctx, []string{missing}, true); !errors.Is(err, cloud.ErrNotFound) {
		e.Errorf("stop of a missing instance: %v, want ErrNotFound", err)
	}
	if err := e.p.StartInstances(e.ctx, []string{missing}); !errors.Is(err, cloud.ErrNotFound) {
		e.Errorf("start of a missing instance: %v, want ErrNotFound", err)
	}

	// Destroy terminates stopped instances too: terminate it while stopped.
	e.must(e.p.DeregisterInstances(e.ctx, lb.Name, []string{in.ID}), "deregister the stopped instance")
	e.must(e.p.TerminateInstances(e.ctx, []string{in.ID}), "terminate the stopped instance")
	r := e.describe(e.stack)
	if got := findInstance(r, in.ID); got != nil {
		e.Errorf("after terminate, describe still lists the stopped instance: %+v", *got)
	}
	if vol := findVolume(r, v.ID); vol == nil || vol.InstanceID != "" || vol.State != "available" {
		e.Errorf("after terminating the stopped instance, volume = %+v; want available", vol)
	}
	if err := e.p.StartInstances(e.ctx, []string{in.ID}); err == nil {
		e.Errorf("starting a terminated instance was accepted")
	}
	if err := e.p.StopInstances(e.ctx, []string{in.ID}, true); err == nil {
		e.Errorf("stopping a terminated instance was accepted")
	}
	e.must(e.p.DeleteLoadBalancer(e.ctx, lb.Name), "delete load balancer")
}
