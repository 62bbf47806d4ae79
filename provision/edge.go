package provision

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

// The kinds of the edge: the photo bucket, the app hosts' IAM role, the CDN, DNS records.
const (
	KindBucket  Kind = "bucket"
	KindAppRole Kind = "role"
	KindCDN     Kind = "cdn"
	KindRecord  Kind = "record"
	// KindHostProfile gives a running app host the app role's instance profile (hosts made
	// before the role existed); new hosts are launched with it.
	KindHostProfile Kind = "instance_profile"
)

func edgeKind(k Kind) bool {
	return k == KindBucket || k == KindAppRole || k == KindCDN || k == KindRecord || k == KindHostProfile
}

// photoRole is the role whose hosts run the app server and get the photo role
// (templates.RoleApp).
const photoRole = "app"

// recordTTL is the TTL of the CNAMEs instactl writes: short, so a replaced load balancer is
// found within minutes.
const recordTTL = 300

// EdgeSpec is what an AWS stack asks for around its hosts.
type EdgeSpec struct {
	Bucket BucketSpec `json:"bucket"`
	Role   RoleSpec   `json:"role"`
	CDN    CDNSpec    `json:"cdn"`
	// Zone is the hosted zone holding Records ("": no DNS).
	Zone    string       `json:"zone,omitempty"`
	Records []RecordSpec `json:"records,omitempty"`
}

// BucketSpec is the private, encrypted, versioned photo bucket.
type BucketSpec struct {
	Name string `json:"name"`
	// DNSZone is the hosted zone of the stack's DNS records, kept in the bucket's
	// cloud.TagDNSZone ("": no DNS).
	DNSZone string `json:"dns_zone,omitempty"`
}

// RoleSpec is the app hosts' role and instance profile, allowed exactly Policy.
type RoleSpec struct {
	Name       string `json:"name"`
	PolicyName string `json:"policy_name"`
	Policy     string `json:"policy"`
}

// CDNSpec is the distribution in front of Bucket.
type CDNSpec struct {
	Name           string   `json:"name"`
	Bucket         string   `json:"bucket"`
	Aliases        []string `json:"aliases,omitempty"`
	CertificateARN string   `json:"certificate_arn,omitempty"`
}

// RecordSpec is a CNAME in Zone pointing at the load balancer or the CDN.
type RecordSpec struct {
	Zone string `json:"zone"`
	Name string `json:"name"`
	// Target is "lb" (the load balancer LoadBalancer) or "cdn".
	Target       string `json:"target,omitempty"`
	LoadBalancer string `json:"load_balancer,omitempty"`
	// Current is the record as it is, for deletes (Route 53 deletes by exact value).
	Current *cloud.Record `json:"current,omitempty"`
}

// desiredEdge adds the edge of an AWS stack to d, and the app role's instance profile to its
// hosts.
func desiredEdge(st *stack.Stack, d *DesiredState) {
	if st.Provider != "aws" {
		return
	}
	bucket := cloud.PhotoBucket(st.Name)
	e := &EdgeSpec{Bucket: BucketSpec{Name: bucket},
		Role: RoleSpec{Name: cloud.AppRole(st.Name), PolicyName: "photos", Policy: cloud.PhotoAccessPolicy(bucket)},
		CDN:  CDNSpec{Name: cloud.PhotoCDN(st.Name), Bucket: bucket}}
	if dns := st.DNS; dns.Zone != "" {
		e.Zone = dns.Zone
		e.Bucket.DNSZone = fqdnName(dns.Zone) + "."
		if dns.LB != "" && d.LoadBalancer != nil {
			e.Records = append(e.Records, RecordSpec{Zone: dns.Zone, Name: dns.Name(dns.LB), Target: "lb", LoadBalancer: d.LoadBalancer.Name})
		}
		if dns.CDN != "" {
			e.CDN.Aliases = []string{strings.TrimSuffix(dns.Name(dns.CDN), ".")}
			e.CDN.CertificateARN = dns.CDNCertificate
			e.Records = append(e.Records, RecordSpec{Zone: dns.Zone, Name: dns.Name(dns.CDN), Target: "cdn"})
		}
	}
	d.Edge = e
	for i := range d.Instances {
		if d.Instances[i].Role == photoRole {
			d.Instances[i].InstanceProfile = e.Role.Name
		}
	}
}

// DNSNames are the records a stack's DNS section names: what the AWS provider looks for in
// the zone (records carry no tags, so the stack file's names are the ownership).
func DNSNames(st *stack.Stack) []string {
	var out []string
	for _, l := range []string{st.DNS.LB, st.DNS.CDN} {
		if n := st.DNS.Name(l); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// withoutEdge drops the edge from d when the provider has none (actual.Edge nil: the sandbox).
func withoutEdge(d DesiredState, actual *cloud.Resources) DesiredState {
	if actual != nil && actual.Edge != nil {
		return d
	}
	d.Edge = nil
	d.Instances = slices.Clone(d.Instances)
	for i := range d.Instances {
		d.Instances[i].InstanceProfile = ""
	}
	return d
}

// fingerprintEdge is the edge as plans depend on it: a distribution's deploy status changes on
// its own and is left out.
func fingerprintEdge(e *cloud.Edge) *cloud.Edge {
	if e == nil {
		return nil
	}
	out := *e
	out.Distributions = slices.Clone(e.Distributions)
	for i := range out.Distributions {
		out.Distributions[i].Status = ""
	}
	return &out
}

func owned(stackName string, tags map[string]string) bool { return tags[cloud.TagStack] == stackName }

// edge plans the bucket, role, CDN and records; deletes are what actual holds beyond them.
func (c *computer) edge(actual *cloud.Resources) {
	if actual == nil || actual.Edge == nil {
		return
	}
	have, w := actual.Edge, c.d.Edge
	var bucket *cloud.Bucket
	if w != nil {
		bucket = c.bucket(w.Bucket, have)
		c.role(w.Role, have)
		c.hostProfiles()
		c.cdn(w.CDN, bucket, have)
		c.records(w, have)
	} else {
		c.records(&EdgeSpec{}, have)
	}
	for _, d := range have.Distributions {
		if w == nil || d.ID != have.Distributions[0].ID {
			c.del(Change{Kind: KindCDN, Address: "cdn." + cloud.PhotoCDN(c.d.Stack) + "#" + d.ID, ID: d.ID,
				Diffs: []FieldDiff{{Field: "domain", Old: d.DomainName}}})
		}
	}
	if w == nil && len(have.Distributions) == 0 && len(have.AccessControls) > 0 {
		// A create stopped between the origin access control and the distribution.
		c.del(Change{Kind: KindCDN, Address: "cdn." + cloud.PhotoCDN(c.d.Stack) + "#access-control",
			Diffs: []FieldDiff{{Field: "access_control", Old: strings.Join(have.AccessControls, ",")}}})
	}
	for _, b := range have.Buckets {
		if (w == nil || b.Name != w.Bucket.Name) && owned(c.d.Stack, b.Tags) {
			c.del(Change{Kind: KindBucket, Address: "bucket." + b.Name, ID: b.Name, Name: b.Name, Bucket: &BucketSpec{Name: b.Name},
				Refuse: "a photo bucket is deleted only by instactl destroy, which counts what it holds first"})
		}
	}
	for _, r := range have.Roles {
		if (w == nil || r.Name != w.Role.Name) && owned(c.d.Stack, r.Tags) {
			c.del(Change{Kind: KindAppRole, Address: "role." + r.Name, ID: r.Name, Name: r.Name,
				Diffs: []FieldDiff{{Field: "instance_profile", Old: r.Profile}}})
		}
	}
}

func (c *computer) bucket(w BucketSpec, have *cloud.Edge) *cloud.Bucket {
	addr := "bucket." + w.Name
	i := slices.IndexFunc(have.Buckets, func(b cloud.Bucket) bool { return b.Name == w.Name })
	wants := []struct{ field, new string }{{"encryption", "AES256"}, {"versioning", "Enabled"}, {"public_access", "blocked"}}
	if i < 0 {
		ch := Change{Action: Create, Kind: KindBucket, Address: addr, Bucket: &w}
		for _, f := range wants {
			ch.Diffs = append(ch.Diffs, FieldDiff{Field: f.field, New: f.new})
		}
		c.add(ch)
		return nil
	}
	b := have.Buckets[i]
	ch := Change{Action: NoOp, Kind: KindBucket, Address: addr, ID: b.Name, Bucket: &w}
	switch owner := b.Tags[cloud.TagStack]; {
	case owner == "":
		// Tags come after CreateBucket: an untagged bucket of this name in this account is
		// the one a crashed apply made.
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "tags", New: cloud.TagStack + "=" + c.d.Stack})
	case owner != c.d.Stack:
		ch.Action = Update
		ch.Refuse = fmt.Sprintf("bucket %s belongs to stack %q (tag %s); bucket names are global: rename this stack", b.Name, owner, cloud.TagStack)
		c.add(ch)
		return nil
	}
	access := "not blocked"
	if b.PublicAccessBlocked {
		access = "blocked"
	}
	for _, f := range []struct{ field, old, new string }{{"encryption", b.Encryption, wants[0].new},
		{"versioning", b.Versioning, wants[1].new}, {"public_access", access, wants[2].new},
		{"dns_zone", b.Tags[cloud.TagDNSZone], w.DNSZone}} {
		if f.old != f.new {
			ch.Diffs = append(ch.Diffs, FieldDiff{Field: f.field, Old: q(f.old), New: q(f.new)})
		}
	}
	if len(ch.Diffs) > 0 {
		ch.Action = Update
	}
	c.add(ch)
	return &b
}

func (c *computer) role(w RoleSpec, have *cloud.Edge) {
	addr := "role." + w.Name
	policy := policySummary(w.Policy)
	i := slices.IndexFunc(have.Roles, func(r cloud.HostRole) bool { return r.Name == w.Name })
	if i < 0 {
		c.add(Change{Action: Create, Kind: KindAppRole, Address: addr, AppRole: &w, Diffs: []FieldDiff{
			{Field: "policy", New: policy}, {Field: "instance_profile", New: w.Name}}})
		return
	}
	r := have.Roles[i]
	ch := Change{Action: NoOp, Kind: KindAppRole, Address: addr, ID: r.Name, AppRole: &w}
	if !owned(c.d.Stack, r.Tags) {
		ch.Action = Update
		ch.Refuse = fmt.Sprintf("IAM role %s exists and is not tagged %s=%s: instactl does not take over a role it did not make; delete or rename it", r.Name, cloud.TagStack, c.d.Stack)
		c.add(ch)
		return
	}
	if r.TrustPolicy != cloud.EC2TrustPolicy() {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "trust", Old: policySummary(r.TrustPolicy), New: "ec2.amazonaws.com"})
	}
	if cur, ok := r.Policies[w.PolicyName]; !ok || cur != w.Policy {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "policy", Old: policySummary(cur), New: policy})
	}
	for _, n := range slices.Sorted(maps.Keys(r.Policies)) {
		if n != w.PolicyName {
			ch.Diffs = append(ch.Diffs, FieldDiff{Field: "policy " + n, Old: policySummary(r.Policies[n])})
		}
	}
	for _, arn := range r.AttachedPolicies {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "managed_policy", Old: arn})
	}
	if r.Profile == "" {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "instance_profile", New: w.Name})
	} else if !slices.Equal(r.ProfileRoles, []string{w.Name}) {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "instance_profile_roles", Old: strings.Join(r.ProfileRoles, ","), New: w.Name})
	}
	if len(ch.Diffs) > 0 {
		ch.Action = Update
	}
	c.add(ch)
}

// hostProfiles plans the instance profile of every live host that should run with one and
// does not; hosts this plan creates or replaces are launched with it.
func (c *computer) hostProfiles() {
	for _, spec := range c.d.Instances {
		addr := spec.Address()
		have, ok := c.ix.hosts[hostKey(spec.Role, spec.Index)]
		if spec.InstanceProfile == "" || !ok || c.replaced[addr] || have.InstanceProfile == spec.InstanceProfile {
			continue
		}
		c.add(Change{Action: Update, Kind: KindHostProfile, Address: "instance_profile." + strings.TrimPrefix(addr, "instance."),
			ID: have.ID, Name: spec.InstanceProfile,
			Diffs: []FieldDiff{{Field: "instance_profile", Old: q(have.InstanceProfile), New: q(spec.InstanceProfile)}}})
	}
}

// policySummary says what a policy document allows in one line: "s3:ListBucket on
// arn:aws:s3:::b; s3:GetObject,s3:PutObject on arn:aws:s3:::b/*".
func policySummary(doc string) string {
	if doc == "" {
		return `""`
	}
	var p struct {
		Statement []struct {
			Effect    string
			Action    any
			Resource  any
			Principal any
		}
	}
	if json.Unmarshal([]byte(doc), &p) != nil {
		return "(unreadable)"
	}
	list := func(v any) string {
		switch x := v.(type) {
		case string:
			return x
		case []any:
			var s []string
			for _, e := range x {
				s = append(s, fmt.Sprint(e))
			}
			return strings.Join(s, ",")
		case nil:
			return ""
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	var parts []string
	for _, s := range p.Statement {
		part := s.Effect + " " + list(s.Action)
		if r := list(s.Resource); r != "" {
			part += " on " + r
		}
		if s.Principal != nil {
			part += " for " + list(s.Principal)
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, "; ")
}

func (c *computer) cdn(w CDNSpec, bucket *cloud.Bucket, have *cloud.Edge) {
	addr := "cdn." + w.Name
	aliases := strings.Join(w.Aliases, ",")
	if len(have.Distributions) == 0 {
		ch := Change{Action: Create, Kind: KindCDN, Address: addr, CDN: &w, Diffs: []FieldDiff{
			{Field: "origin", New: "s3 bucket " + w.Bucket + " through origin access control " + w.Name},
			{Field: "bucket_policy", New: "cloudfront reads " + w.Bucket + "/*"}}}
		if aliases != "" {
			ch.Diffs = append(ch.Diffs, FieldDiff{Field: "aliases", New: aliases})
		}
		c.add(ch)
		return
	}
	d := have.Distributions[0]
	ch := Change{Action: NoOp, Kind: KindCDN, Address: addr, ID: d.ID, CDN: &w}
	if !strings.HasPrefix(d.Origin, w.Bucket+".s3.") {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "origin", Old: q(d.Origin), New: "s3 bucket " + w.Bucket})
	}
	if d.AccessControl == "" {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "access_control", New: w.Name})
	}
	if !d.Enabled {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "enabled", Old: "false", New: "true"})
	}
	if have := strings.Join(d.Aliases, ","); have != aliases {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "aliases", Old: have, New: aliases})
	}
	if d.Certificate != w.CertificateARN {
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "certificate", Old: q(d.Certificate), New: q(w.CertificateARN)})
	}
	if bucket == nil || bucket.Policy != cloud.CDNBucketPolicy(w.Bucket, d.ARN) {
		old := ""
		if bucket != nil {
			old = policySummary(bucket.Policy)
		}
		ch.Diffs = append(ch.Diffs, FieldDiff{Field: "bucket_policy", Old: old, New: "cloudfront reads " + w.Bucket + "/*"})
	}
	if len(ch.Diffs) > 0 {
		ch.Action = Update
	}
	c.add(ch)
}

// records plans the CNAMEs w asks for; the other CNAMEs the stack owns (Record.Owner) are
// deleted, so a name dropped from the stack file goes too. A record at a wanted name that
// another stack or the zone's operator wrote is refused, never overwritten.
func (c *computer) records(w *EdgeSpec, have *cloud.Edge) {
	zone := have.Zone
	var wanted []string
	for _, r := range w.Records {
		r := r
		wanted = append(wanted, fqdnName(r.Name))
		addr := "record." + strings.TrimSuffix(r.Name, ".")
		value, known := c.recordValue(r, have)
		shown := value
		if !known {
			shown = "(known after apply)"
		}
		ch := Change{Action: Create, Kind: KindRecord, Address: addr, Record: &r,
			Diffs: []FieldDiff{{Field: "CNAME", New: shown}}}
		if zone == nil || zone.ID == "" {
			ch.Refuse = fmt.Sprintf("hosted zone %s does not exist in this AWS account: create it in Route 53, or remove dns from the stack file", r.Zone)
			c.add(ch)
			continue
		}
		var cur []cloud.Record
		for _, h := range zone.Records {
			if fqdnName(h.Name) == fqdnName(r.Name) {
				cur = append(cur, h)
			}
		}
		switch {
		case len(cur) == 0:
		case len(cur) > 1 || cur[0].Type != "CNAME" || cur[0].Owner == "":
			ch.Action = Update
			ch.Refuse = fmt.Sprintf("%s already has a %s record that instactl did not write; remove it or choose another name in dns", r.Name, cur[0].Type)
		case cur[0].Owner != c.d.Stack:
			ch.Action = Update
			ch.Refuse = fmt.Sprintf("%s belongs to stack %q (its _instactl marker says so); choose another name in dns", r.Name, cur[0].Owner)
		case known && strings.EqualFold(strings.TrimSuffix(cur[0].Value, "."), value):
			ch.Action, ch.Diffs, ch.ID = NoOp, nil, r.Name
		default:
			ch.Action, ch.ID = Update, r.Name
			ch.Diffs = []FieldDiff{{Field: "CNAME", Old: cur[0].Value, New: shown}}
		}
		c.add(ch)
	}
	if zone == nil {
		return
	}
	for _, h := range zone.Records {
		if h.Type == "CNAME" && h.Owner == c.d.Stack && !slices.Contains(wanted, fqdnName(h.Name)) {
			h := h
			c.del(Change{Kind: KindRecord, Address: "record." + strings.TrimSuffix(h.Name, "."), ID: h.Name,
				Record: &RecordSpec{Zone: zone.Name, Name: h.Name, Current: &h}, Diffs: []FieldDiff{{Field: "CNAME", Old: h.Value}}})
		}
	}
}

func fqdnName(n string) string { return strings.ToLower(strings.TrimSuffix(n, ".")) }

// recordValue is what r should point at, if that is known before apply: the load balancer's
// or the distribution's DNS name, unless this plan creates or replaces it.
func (c *computer) recordValue(r RecordSpec, have *cloud.Edge) (string, bool) {
	switch r.Target {
	case "lb":
		lb, ok := c.ix.lbs[r.LoadBalancer]
		if !ok || c.changing(KindLoadBalancer, "lb."+r.LoadBalancer) {
			return "", false
		}
		return lb.DNSName, true
	case "cdn":
		if len(have.Distributions) == 0 {
			return "", false
		}
		return have.Distributions[0].DomainName, true
	}
	return "", false
}

// changing reports whether the plan so far creates or replaces addr.
func (c *computer) changing(kind Kind, addr string) bool {
	return slices.ContainsFunc(c.changes, func(ch Change) bool {
		return ch.Kind == kind && ch.Address == addr && (ch.Action == Create || ch.ForceReplace)
	})
}

// edgeState is what the edge's changes learn during an apply: the load balancers' and the
// distribution's DNS names, which records and app hosts' user data need.
type edgeState struct {
	mu        sync.Mutex
	lbDNS     map[string]string
	cdnDomain string
}

func newEdgeState(actual *cloud.Resources) *edgeState {
	s := &edgeState{lbDNS: map[string]string{}}
	if actual == nil {
		return s
	}
	for _, lb := range actual.LoadBalancers {
		s.lbDNS[lb.Name] = lb.DNSName
	}
	if actual.Edge != nil && len(actual.Edge.Distributions) > 0 {
		s.cdnDomain = actual.Edge.Distributions[0].DomainName
	}
	return s
}

func (s *edgeState) setLB(name, dns string) {
	s.mu.Lock()
	s.lbDNS[name] = dns
	s.mu.Unlock()
}

func (s *edgeState) setCDN(domain string) {
	s.mu.Lock()
	s.cdnDomain = domain
	s.mu.Unlock()
}

// fillUserData puts the CDN's domain into a host's user data where templates left
// cloud.CDNDomainPlaceholder.
func (s *edgeState) fillUserData(spec *cloud.InstanceSpec) error {
	if !strings.Contains(spec.UserData, cloud.CDNDomainPlaceholder) {
		return nil
	}
	s.mu.Lock()
	domain := s.cdnDomain
	s.mu.Unlock()
	if domain == "" {
		return fmt.Errorf("user data of %s needs the CDN's domain, and the stack has no CDN yet: plan and apply again", spec.Name)
	}
	spec.UserData = strings.ReplaceAll(spec.UserData, cloud.CDNDomainPlaceholder, domain)
	return nil
}

// edgeDeps adds the dependencies of and on the edge's changes.
func (ex *executor) edgeDeps(c Change, want func(Action, string), all func(Kind, Action)) {
	cdnAddr := "cdn." + cloud.PhotoCDN(ex.plan.Stack)
	switch {
	case c.Kind == KindInstance && c.Action != Delete && c.Instance != nil:
		if c.Instance.InstanceProfile != "" {
			want(Create, "role."+c.Instance.InstanceProfile)
		}
		if strings.Contains(c.Instance.UserData, cloud.CDNDomainPlaceholder) {
			want(Create, cdnAddr)
		}
	case c.Kind == KindHostProfile:
		want(Create, "role."+c.Name)
	case c.Kind == KindCDN && c.Action != Delete:
		want(Create, "bucket."+c.CDN.Bucket)
	case c.Kind == KindRecord && c.Action != Delete:
		if c.Record.Target == "lb" {
			want(Create, "lb."+c.Record.LoadBalancer)
		} else {
			want(Create, cdnAddr)
		}
	case (c.Kind == KindCDN || c.Kind == KindLoadBalancer) && c.Action == Delete:
		all(KindRecord, Delete)
	case c.Kind == KindBucket && c.Action == Delete:
		all(KindCDN, Delete)
		all(KindRecord, Delete)
	case c.Kind == KindBucket:
		// The bucket's TagDNSZone is how a later plan finds records: it goes after them.
		all(KindRecord, Delete)
	case c.Kind == KindAppRole && c.Action == Delete:
		all(KindInstance, Delete)
		all(KindInstance, Update)
	}
}

// execEdge runs one change of the edge.
func (ex *executor) execEdge(ctx context.Context, i int, c Change) error {
	ep, ok := ex.p.(cloud.EdgeProvider)
	if !ok {
		return fmt.Errorf("%s: the %s provider has no buckets, roles, CDN or DNS", c.Address, ex.p.Name())
	}
	stack := ex.plan.Stack
	tags := func(name string) map[string]string {
		return map[string]string{cloud.TagStack: stack, cloud.TagName: name}
	}
	switch {
	case c.Kind == KindBucket && c.Action == Delete:
		return ep.DeleteBucket(ctx, stack, c.Name, c.ForceDeleteData)
	case c.Kind == KindBucket:
		t := tags(c.Bucket.Name)
		if c.Bucket.DNSZone != "" {
			t[cloud.TagDNSZone] = c.Bucket.DNSZone
		}
		return ep.EnsureBucket(ctx, stack, cloud.BucketSpec{Name: c.Bucket.Name, Tags: t})
	case c.Kind == KindAppRole && c.Action == Delete:
		return ep.DeleteRole(ctx, stack, c.Name)
	case c.Kind == KindAppRole:
		r := c.AppRole
		return ep.EnsureRole(ctx, stack, cloud.RoleSpec{Name: r.Name, PolicyName: r.PolicyName, Policy: r.Policy, Tags: tags(r.Name)})
	case c.Kind == KindCDN && c.Action == Delete:
		return ep.DeleteDistribution(ctx, stack, c.ID)
	case c.Kind == KindCDN:
		s := c.CDN
		d, err := ep.EnsureDistribution(ctx, stack, cloud.DistributionSpec{Name: s.Name, Bucket: s.Bucket, Aliases: s.Aliases,
			CertificateARN: s.CertificateARN, Tags: tags(s.Name)})
		if err == nil {
			ex.edge.setCDN(d.DomainName)
			ex.setID(i, d.ID)
		}
		return err
	case c.Kind == KindHostProfile:
		return ep.SetInstanceProfile(ctx, c.ID, c.Name)
	case c.Kind == KindRecord && c.Action == Delete:
		return ep.DeleteRecord(ctx, c.Record.Zone, *c.Record.Current)
	case c.Kind == KindRecord:
		r := c.Record
		ex.edge.mu.Lock()
		value := ex.edge.lbDNS[r.LoadBalancer]
		if r.Target == "cdn" {
			value = ex.edge.cdnDomain
		}
		ex.edge.mu.Unlock()
		if value == "" {
			return fmt.Errorf("%s: the %s it points at has no DNS name yet: plan and apply again", c.Address, r.Target)
		}
		return ep.UpsertRecord(ctx, r.Zone, cloud.Record{Name: r.Name, Type: "CNAME", Value: value, TTL: recordTTL, Owner: stack})
	}
	return fmt.Errorf("%s: no way to %s a %s", c.Address, c.Action, c.Kind)
}

// DestroyOption tunes Destroy.
type DestroyOption func(*destroyConfig)

type destroyConfig struct{ forceDeleteData bool }

// ForceDeleteData lets Destroy delete a photo bucket that holds objects, every version of them
// included (destroy --force-delete-data).
func ForceDeleteData() DestroyOption { return func(c *destroyConfig) { c.forceDeleteData = true } }

// checkBuckets counts what each bucket the plan deletes holds: an empty one is deleted, one
// with data only when force, and otherwise the change is refused with the count.
func checkBuckets(ctx context.Context, p cloud.Provider, plan *Plan, force bool) error {
	for i := range plan.Changes {
		c := &plan.Changes[i]
		if c.Kind != KindBucket || c.Action != Delete {
			continue
		}
		ep, ok := p.(cloud.EdgeProvider)
		if !ok {
			return fmt.Errorf("%s: the %s provider has no buckets", c.Address, p.Name())
		}
		n, err := ep.BucketContents(ctx, c.Name)
		if err != nil {
			return err
		}
		held := fmt.Sprintf("%d objects (%d versions, %d delete markers)", n.Objects, n.Versions, n.DeleteMarkers)
		c.Diffs = []FieldDiff{{Field: "holds", Old: held}}
		switch {
		case n.Empty():
			c.Refuse = ""
		case force:
			c.Refuse, c.ForceDeleteData = "", true
		default:
			c.Refuse = fmt.Sprintf("bucket %s holds %s; destroy deletes photos only with --force-delete-data (every version goes, there is no undo)", c.Name, held)
		}
	}
	return nil
}
