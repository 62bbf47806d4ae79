package provision

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
)

// actualIndex is the actual state keyed the way desired resources are addressed.
type actualIndex struct {
	groups    map[string]cloud.SecurityGroup // by name
	groupName map[string]string              // id -> name
	hosts     map[string]cloud.Instance      // by hostKey; the lowest id when there are duplicates
	dupHosts  []cloud.Instance               // second and later instances of one host, and untagged ones
	volumes   map[string]cloud.Volume        // by volume address
	strays    []cloud.Volume                 // volumes with no host/device tags
	lbs       map[string]cloud.LoadBalancer
	keys      []string
}

func indexActual(actual *cloud.Resources) actualIndex {
	ix := actualIndex{groups: map[string]cloud.SecurityGroup{}, groupName: map[string]string{},
		hosts: map[string]cloud.Instance{}, volumes: map[string]cloud.Volume{}, lbs: map[string]cloud.LoadBalancer{}}
	if actual == nil {
		return ix
	}
	for _, g := range actual.SecurityGroups {
		ix.groups[g.Name] = g
		ix.groupName[g.ID] = g.Name
	}
	ins := slices.Clone(actual.Instances)
	slices.SortFunc(ins, func(a, b cloud.Instance) int { return strings.Compare(a.ID, b.ID) })
	for _, in := range ins {
		_, err := strconv.Atoi(in.Tags[cloud.TagIndex])
		k := hostKey(in.Role, in.Index)
		if _, dup := ix.hosts[k]; dup || in.Role == "" || err != nil {
			ix.dupHosts = append(ix.dupHosts, in)
			continue
		}
		ix.hosts[k] = in
	}
	for _, v := range actual.Volumes {
		idx, err := strconv.Atoi(v.Tags[cloud.TagIndex])
		role, dev := v.Tags[cloud.TagRole], v.Tags[cloud.TagDevice]
		addr := VolumeSpec{Role: role, Index: idx, Device: dev}.Address()
		if _, dup := ix.volumes[addr]; dup || err != nil || role == "" || dev == "" {
			ix.strays = append(ix.strays, v)
			continue
		}
		ix.volumes[addr] = v
	}
	for _, lb := range actual.LoadBalancers {
		ix.lbs[lb.Name] = lb
	}
	ix.keys = actual.KeyPairs
	return ix
}

var deleteRank = map[Kind]int{KindRecord: 0, KindRegistration: 0, KindLoadBalancer: 1, KindCDN: 1, KindInstance: 2,
	KindAttachment: 3, KindVolume: 4, KindGroup: 5, KindKeyPair: 6, KindAppRole: 6, KindBucket: 6}

// computer builds one plan.
type computer struct {
	d        DesiredState
	ix       actualIndex
	changes  []Change
	deletes  []Change
	replaced map[string]bool // instance addresses being replaced or created anew
}

// Compute diffs desired with actual into a plan. Actual must be what the provider described
// for desired.Stack; the plan carries its fingerprint.
func Compute(d DesiredState, actual *cloud.Resources) Plan {
	d = withoutEdge(d, actual)
	c := &computer{d: d, ix: indexActual(actual), replaced: map[string]bool{}}
	c.keyPair()
	c.groups()
	c.instances()
	c.volumes()
	lbNew := c.loadBalancer()
	c.registrations(lbNew)
	c.edge(actual)
	c.extraGroupsAndKeys()
	// Deletes are listed in the order they run: out of the LB, LBs, hosts, their volumes,
	// groups, keys.
	slices.SortStableFunc(c.deletes, func(a, b Change) int { return deleteRank[a.Kind] - deleteRank[b.Kind] })
	return Plan{Stack: d.Stack, Fingerprint: Fingerprint(actual), CreatedAt: time.Now().UTC().Truncate(time.Second),
		Changes: append(c.changes, c.deletes...)}
}

func (c *computer) add(ch Change) { c.changes = append(c.changes, ch) }

func (c *computer) del(ch Change) {
	ch.Action = Delete
	c.deletes = append(c.deletes, ch)
}

func (c *computer) mayReplace(addr string) bool {
	return slices.Contains(c.d.Replace, addr) || slices.Contains(c.d.Replace, "*")
}

func (c *computer) keyPair() {
	if k := c.d.KeyPair; k != nil {
		addr := "key." + k.Name
		if slices.Contains(c.ix.keys, k.Name) {
			c.add(Change{Action: NoOp, Kind: KindKeyPair, Address: addr, ID: k.Name, KeyPair: k})
		} else {
			c.add(Change{Action: Create, Kind: KindKeyPair, Address: addr, KeyPair: k})
		}
	}
}

func (c *computer) groups() {
	for _, g := range c.d.Groups {
		g := g
		g.Rules = sortRules(g.Rules)
		addr := "sg." + g.Name
		have, ok := c.ix.groups[g.Name]
		if !ok {
			ch := Change{Action: Create, Kind: KindGroup, Address: addr, Group: &g}
			for _, r := range g.Rules {
				ch.Diffs = append(ch.Diffs, FieldDiff{Field: "ingress", New: ruleString(r)})
			}
			c.add(ch)
			continue
		}
		ch := Change{Action: NoOp, Kind: KindGroup, Address: addr, ID: have.ID, Group: &g}
		cur := sortRules(have.Ingress)
		for _, r := range cur {
			if !slices.Contains(g.Rules, r) {
				ch.Diffs = append(ch.Diffs, FieldDiff{Field: "ingress", Old: ruleString(r)})
			}
		}
		for _, r := range g.Rules {
			if !slices.Contains(cur, r) {
				ch.Diffs = append(ch.Diffs, FieldDiff{Field: "ingress", New: ruleString(r)})
			}
		}
		if len(ch.Diffs) > 0 {
			ch.Action = Update
		}
		c.add(ch)
	}
}

func userDataDigest(s string) string {
	if s == "" {
		return `""`
	}
	sum := sha256.Sum256([]byte(s))
	return fmt.Sprintf("sha256:%s (%d bytes)", hex.EncodeToString(sum[:6]), len(s))
}

func (c *computer) instances() {
	want := map[string]bool{}
	for _, spec := range c.d.Instances {
		spec := spec
		addr := spec.Address()
		want[hostKey(spec.Role, spec.Index)] = true
		have, ok := c.ix.hosts[hostKey(spec.Role, spec.Index)]
		if !ok {
			c.replaced[addr] = true
			c.add(Change{Action: Create, Kind: KindInstance, Address: addr, Instance: &spec, Diffs: []FieldDiff{
				{Field: "type", New: q(spec.Type)}, {Field: "image", New: q(spec.Image)}, {Field: "zone", New: q(spec.Zone)},
				{Field: "groups", New: strings.Join(spec.Groups, ",")}, {Field: "user_data", New: userDataDigest(spec.UserData)},
			}})
			continue
		}
		ch := Change{Action: NoOp, Kind: KindInstance, Address: addr, ID: have.ID, Instance: &spec}
		var groups []string
		for _, id := range have.SecurityGroups {
			groups = append(groups, c.groupNameOf(id))
		}
		slices.Sort(groups)
		for _, f := range []struct{ field, old, new string }{
			{"type", have.Type, allowed(have.Type, spec.Type, spec.Types)}, {"image", have.Image, spec.Image},
			{"zone", have.Zone, allowed(have.Zone, spec.Zone, spec.Zones)},
			{"groups", strings.Join(groups, ","), strings.Join(slices.Sorted(slices.Values(spec.Groups)), ",")},
		} {
			if f.old != f.new && f.new != "" {
				ch.Diffs = append(ch.Diffs, FieldDiff{Field: f.field, Old: q(f.old), New: q(f.new), ForcesReplacement: true})
			}
		}
		if len(ch.Diffs) > 0 {
			ch.Action = Update
			if c.mayReplace(addr) {
				ch.ForceReplace = true
				c.replaced[addr] = true
			} else {
				ch.Refuse = fmt.Sprintf("%s cannot change on a running instance; re-run with --replace %s to terminate %s and create it again (its data volumes are kept and re-attached)",
					diffFields(ch.Diffs), addr, have.ID)
			}
		}
		c.add(ch)
	}
	var extra []cloud.Instance
	for k, in := range c.ix.hosts {
		if !want[k] {
			extra = append(extra, in)
		}
	}
	// Highest index first, so a shrinking role keeps its lowest hosts if the apply stops halfway.
	slices.SortFunc(extra, func(a, b cloud.Instance) int {
		if a.Role != b.Role {
			return strings.Compare(a.Role, b.Role)
		}
		return b.Index - a.Index
	})
	for _, in := range append(extra, c.ix.dupHosts...) {
		addr := "instance." + hostKey(in.Role, in.Index)
		if c.ix.hosts[hostKey(in.Role, in.Index)].ID != in.ID {
			addr += "#" + in.ID // a duplicate of a host that stays
		}
		c.del(Change{Kind: KindInstance, Address: addr, ID: in.ID,
			Diffs: []FieldDiff{{Field: "type", Old: q(in.Type)}, {Field: "zone", Old: q(in.Zone)}}})
	}
}

func (c *computer) groupNameOf(id string) string {
	if n, ok := c.ix.groupName[id]; ok {
		return n
	}
	return id
}

func diffFields(ds []FieldDiff) string {
	var fs []string
	for _, d := range ds {
		fs = append(fs, d.Field)
	}
	return strings.Join(fs, ", ")
}

func q(s string) string { return strconv.Quote(s) }

func (c *computer) volumes() {
	want := map[string]bool{}
	for _, spec := range c.d.Volumes {
		spec := spec
		addr := spec.Address()
		want[addr] = true
		host := hostKey(spec.Role, spec.Index)
		att := &AttachmentSpec{Role: spec.Role, Index: spec.Index, Device: spec.Device, VolumeAddress: addr}
		attAddr := "attachment." + strings.TrimPrefix(addr, "volume.")
		have, ok := c.ix.volumes[addr]
		if !ok {
			c.add(Change{Action: Create, Kind: KindVolume, Address: addr, Volume: &spec, Diffs: []FieldDiff{
				{Field: "size_gib", New: strconv.Itoa(spec.SizeGiB)}, {Field: "type", New: q(spec.Type)}, {Field: "zone", New: q(spec.Zone)}}})
			c.add(Change{Action: Create, Kind: KindAttachment, Address: attAddr, Attachment: att,
				Diffs: []FieldDiff{{Field: "device", New: spec.Device}}})
			continue
		}
		ch := Change{Action: NoOp, Kind: KindVolume, Address: addr, ID: have.ID, Volume: &spec}
		for _, f := range []struct{ field, old, new, why string }{
			{"zone", have.Zone, allowed(have.Zone, spec.Zone, spec.Zones), "an EBS volume lives in one zone: snapshot it and restore the snapshot into " + spec.Zone},
			{"size_gib", strconv.Itoa(have.SizeGiB), strconv.Itoa(spec.SizeGiB), "instactl does not resize volumes in place yet: snapshot, restore into a larger volume, grow the filesystem"},
			{"type", have.Type, spec.Type, "instactl does not change volume types in place yet"},
		} {
			if f.old != f.new && f.new != "" && f.new != "0" {
				ch.Action = Update
				ch.Diffs = append(ch.Diffs, FieldDiff{Field: f.field, Old: f.old, New: f.new, ForcesReplacement: true})
				ch.Refuse = strings.TrimPrefix(ch.Refuse+"; "+f.field+": "+f.why, "; ")
			}
		}
		c.add(ch)
		inst, hostOK := c.ix.hosts[host]
		switch {
		case hostOK && !c.replaced["instance."+host] && have.InstanceID == inst.ID && sameDevice(have.Device, spec.Device):
			c.add(Change{Action: NoOp, Kind: KindAttachment, Address: attAddr, ID: have.ID, Attachment: att})
		case have.InstanceID == "" || (hostOK && have.InstanceID == inst.ID && c.replaced["instance."+host]):
			c.add(Change{Action: Create, Kind: KindAttachment, Address: attAddr, Attachment: att,
				Diffs: []FieldDiff{{Field: "device", New: spec.Device}}})
		default:
			c.add(Change{Action: Update, Kind: KindAttachment, Address: attAddr, ID: have.ID, Attachment: att,
				Diffs:  []FieldDiff{{Field: "attached_to", Old: have.InstanceID + " " + have.Device, New: host + " " + spec.Device}},
				Refuse: fmt.Sprintf("volume %s is attached to %s at %s, not to %s at %s; instactl does not move data volumes between hosts", have.ID, have.InstanceID, have.Device, host, spec.Device)})
		}
	}
	var extra []cloud.Volume
	for addr, v := range c.ix.volumes {
		if !want[addr] {
			extra = append(extra, v)
		}
	}
	slices.SortFunc(extra, func(a, b cloud.Volume) int { return strings.Compare(a.ID, b.ID) })
	for _, v := range append(extra, c.ix.strays...) {
		idx, _ := strconv.Atoi(v.Tags[cloud.TagIndex])
		addr := VolumeSpec{Role: v.Tags[cloud.TagRole], Index: idx, Device: v.Tags[cloud.TagDevice]}.Address()
		switch {
		case v.Tags[cloud.TagRole] == "" || v.Tags[cloud.TagDevice] == "":
			addr = "volume#" + v.ID // not made by instactl's plan, but tagged with the stack
		case c.ix.volumes[addr].ID != v.ID:
			addr += "#" + v.ID
		}
		ch := Change{Kind: KindVolume, Address: addr, ID: v.ID,
			Diffs: []FieldDiff{{Field: "size_gib", Old: strconv.Itoa(v.SizeGiB)}, {Field: "zone", Old: q(v.Zone)}}}
		if v.InstanceID != "" {
			ch.Detach = &Detach{InstanceID: v.InstanceID, Device: v.Device}
		}
		c.del(ch)
	}
}

// sameDevice treats /dev/sdf and /dev/xvdf as one slot, as EC2 does.
func sameDevice(a, b string) bool {
	norm := func(d string) string {
		d = strings.TrimPrefix(d, "/dev/")
		d = strings.TrimPrefix(d, "xvd")
		return strings.TrimPrefix(d, "sd")
	}
	return norm(a) == norm(b)
}

// loadBalancer plans the LB and reports whether it starts empty (created or replaced).
// lbInPlace are the load balancer's fields an existing one takes without being made anew
// (ConfigureHealthCheck, ModifyLoadBalancerAttributes).
var lbInPlace = map[string]bool{"health_check": true, "drain_timeout": true}

func (c *computer) loadBalancer() bool {
	for _, name := range slices.Sorted(maps.Keys(c.ix.lbs)) {
		if c.d.LoadBalancer == nil || name != c.d.LoadBalancer.Name {
			c.del(Change{Kind: KindLoadBalancer, Address: "lb." + name, ID: name, Name: name})
		}
	}
	spec := c.d.LoadBalancer
	if spec == nil {
		return false
	}
	addr := "lb." + spec.Name
	have, ok := c.ix.lbs[spec.Name]
	if !ok {
		c.add(Change{Action: Create, Kind: KindLoadBalancer, Address: addr, LoadBalancer: spec, Diffs: lbFields(spec)})
		return true
	}
	var groups []string
	for _, id := range have.SecurityGroupIDs {
		groups = append(groups, c.groupNameOf(id))
	}
	ch := Change{Action: NoOp, Kind: KindLoadBalancer, Address: addr, ID: have.Name, LoadBalancer: spec}
	for _, f := range []struct{ field, old, new string }{
		{"listener", strconv.Itoa(have.ListenerPort), strconv.Itoa(spec.ListenerPort)},
		{"target_port", strconv.Itoa(have.TargetPort), strconv.Itoa(spec.TargetPort)},
		{"health_check", have.HealthCheck, spec.HealthCheck},
		{"drain_timeout", have.DrainTimeout.String(), spec.DrainTimeout.String()},
		{"zones", strings.Join(slices.Sorted(slices.Values(have.Zones)), ","), strings.Join(slices.Sorted(slices.Values(spec.Zones)), ",")},
		{"groups", strings.Join(slices.Sorted(slices.Values(groups)), ","), strings.Join(slices.Sorted(slices.Values(spec.Groups)), ",")},
	} {
		if f.old != f.new {
			ch.Diffs = append(ch.Diffs, FieldDiff{Field: f.field, Old: f.old, New: f.new, ForcesReplacement: !lbInPlace[f.field]})
		}
	}
	if len(ch.Diffs) == 0 {
		c.add(ch)
		return false
	}
	ch.Action = Update
	if !slices.ContainsFunc(ch.Diffs, func(d FieldDiff) bool { return d.ForcesReplacement }) {
		// Configured again in place (CreateLoadBalancer of an existing one of the stack); also
		// how a load balancer made by a run killed before it configured it converges.
		c.add(ch)
		return false
	}
	if c.mayReplace(addr) {
		ch.ForceReplace = true
		c.add(ch)
		return true
	}
	ch.Refuse = fmt.Sprintf("%s of a load balancer cannot change in place; re-run with --replace %s to delete and recreate it (traffic stops meanwhile)", diffFields(ch.Diffs), addr)
	c.add(ch)
	return false
}

func lbFields(s *LoadBalancerSpec) []FieldDiff {
	return []FieldDiff{
		{Field: "listener", New: fmt.Sprintf("HTTP:%d -> HTTP:%d", s.ListenerPort, s.TargetPort)},
		{Field: "health_check", New: q(s.HealthCheck)},
		{Field: "drain_timeout", New: s.DrainTimeout.String()},
		{Field: "zones", New: strings.Join(s.Zones, ",")},
		{Field: "groups", New: strings.Join(s.Groups, ",")},
	}
}

// registrations: every host of the target role behind the LB, nothing else.
func (c *computer) registrations(lbEmpty bool) {
	registered := map[string]bool{}
	var lbName string
	if spec := c.d.LoadBalancer; spec != nil {
		lbName = spec.Name
		if have, ok := c.ix.lbs[spec.Name]; ok && !lbEmpty {
			for _, id := range have.Instances {
				registered[id] = true
			}
		}
	}
	kept := map[string]bool{}
	if lbName != "" {
		for _, spec := range c.d.Instances {
			if spec.Role != c.d.LoadBalancer.TargetRole {
				continue
			}
			host := hostKey(spec.Role, spec.Index)
			addr := "registration." + host
			reg := &RegistrationSpec{LoadBalancer: lbName, Role: spec.Role, Index: spec.Index}
			in, ok := c.ix.hosts[host]
			if ok && !c.replaced[spec.Address()] && registered[in.ID] {
				kept[in.ID] = true
				c.add(Change{Action: NoOp, Kind: KindRegistration, Address: addr, ID: in.ID, Registration: reg})
				continue
			}
			c.add(Change{Action: Create, Kind: KindRegistration, Address: addr, Registration: reg,
				Diffs: []FieldDiff{{Field: "load_balancer", New: q(lbName)}}})
		}
	}
	// Deregister whatever else is behind the stack's LBs; a replaced LB goes with its
	// registrations, and one being deleted is emptied first.
	for _, name := range slices.Sorted(maps.Keys(c.ix.lbs)) {
		if name == lbName && lbEmpty {
			continue
		}
		for _, id := range c.highestFirst(c.ix.lbs[name].Instances) {
			if name == lbName && kept[id] {
				continue
			}
			c.del(Change{Kind: KindRegistration, Address: "registration." + c.hostOf(id), ID: id,
				Registration: &RegistrationSpec{LoadBalancer: name, InstanceID: id},
				Diffs:        []FieldDiff{{Field: "load_balancer", Old: q(name)}}})
		}
	}
}

// highestFirst orders instance ids by role, then index from the highest, then id.
func (c *computer) highestFirst(ids []string) []string {
	out := slices.Clone(ids)
	byID := map[string]cloud.Instance{}
	for _, in := range c.ix.hosts {
		byID[in.ID] = in
	}
	slices.SortFunc(out, func(a, b string) int {
		ia, ib := byID[a], byID[b]
		if ia.Role != ib.Role {
			return strings.Compare(ia.Role, ib.Role)
		}
		if ia.Index != ib.Index {
			return ib.Index - ia.Index
		}
		return strings.Compare(a, b)
	})
	return out
}

// hostOf names the host of an instance id for addresses ("app[2]"), or the id itself.
func (c *computer) hostOf(id string) string {
	for k, in := range c.ix.hosts {
		if in.ID == id {
			return k
		}
	}
	for _, in := range c.ix.dupHosts {
		if in.ID == id {
			return hostKey(in.Role, in.Index) + "#" + id
		}
	}
	return id
}

func (c *computer) extraGroupsAndKeys() {
	want := map[string]bool{}
	for _, g := range c.d.Groups {
		want[g.Name] = true
	}
	var extra []cloud.SecurityGroup
	for name, g := range c.ix.groups {
		if !want[name] {
			extra = append(extra, g)
		}
	}
	slices.SortFunc(extra, func(a, b cloud.SecurityGroup) int { return strings.Compare(a.Name, b.Name) })
	for _, g := range extra {
		c.del(Change{Kind: KindGroup, Address: "sg." + g.Name, ID: g.ID,
			Group: &GroupSpec{Name: g.Name, Description: g.Description, Rules: g.Ingress}})
	}
	for _, k := range c.ix.keys {
		if c.d.KeyPair == nil || c.d.KeyPair.Name != k {
			c.del(Change{Kind: KindKeyPair, Address: "key." + k, ID: k, Name: k})
		}
	}
}

// allowed is what a field should be: have itself when the stack allows it (a fallback zone or
// instance type apply chose), else the first choice.
func allowed(have, first string, all []string) string {
	if slices.Contains(all, have) {
		return have
	}
	return first
}
