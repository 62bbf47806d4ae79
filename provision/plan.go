package provision

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
)

// Action is what a change does.
type Action string

// The actions; Symbol gives the one-character form used in plan text.
const (
	Create Action = "create"
	Update Action = "update"
	Delete Action = "delete"
	NoOp   Action = "no-op"
)

// Symbol is "+", "~", "-" or "=".
func (a Action) Symbol() string {
	switch a {
	case Create:
		return "+"
	case Update:
		return "~"
	case Delete:
		return "-"
	}
	return "="
}

// Kind is the type of resource a change touches.
type Kind string

// The kinds of resources a plan manages.
const (
	KindKeyPair      Kind = "key"
	KindGroup        Kind = "sg"
	KindInstance     Kind = "instance"
	KindVolume       Kind = "volume"
	KindAttachment   Kind = "attachment"
	KindLoadBalancer Kind = "lb"
	KindRegistration Kind = "registration"
)

// FieldDiff is one field of a change: Old is empty for a create, New for a delete.
type FieldDiff struct {
	Field string `json:"field"`
	Old   string `json:"old,omitempty"`
	New   string `json:"new,omitempty"`
	// ForcesReplacement marks a field that cannot change in place.
	ForcesReplacement bool `json:"forces_replacement,omitempty"`
}

// Change is one step of a plan.
type Change struct {
	Action  Action `json:"action"`
	Kind    Kind   `json:"kind"`
	Address string `json:"address"`
	// ID is the existing resource an update or delete acts on.
	ID    string      `json:"id,omitempty"`
	Diffs []FieldDiff `json:"diffs,omitempty"`
	// ForceReplace: the update is done by deleting ID and creating the resource again
	// (the operator allowed it with --replace).
	ForceReplace bool `json:"force_replace,omitempty"`
	// Refuse says why the change cannot be applied; a plan with refusals is not applied.
	Refuse string `json:"refuse,omitempty"`

	KeyPair      *KeyPairSpec      `json:"key_pair,omitempty"`
	Group        *GroupSpec        `json:"group,omitempty"`
	Instance     *InstanceSpec     `json:"instance,omitempty"`
	Volume       *VolumeSpec       `json:"volume,omitempty"`
	Attachment   *AttachmentSpec   `json:"attachment,omitempty"`
	LoadBalancer *LoadBalancerSpec `json:"load_balancer,omitempty"`
	Registration *RegistrationSpec `json:"registration,omitempty"`
	// Detach, on a volume delete, is the attachment to undo first.
	Detach *Detach `json:"detach,omitempty"`
	// Name is the key pair or load balancer name on deletes.
	Name string `json:"name,omitempty"`

	// The edge (edge.go).
	Bucket  *BucketSpec `json:"bucket,omitempty"`
	AppRole *RoleSpec   `json:"app_role,omitempty"`
	CDN     *CDNSpec    `json:"cdn,omitempty"`
	Record  *RecordSpec `json:"record,omitempty"`
	// ForceDeleteData, on a bucket delete, deletes every object version first (destroy
	// --force-delete-data).
	ForceDeleteData bool `json:"force_delete_data,omitempty"`
}

// AttachmentSpec puts a host's volume at its device.
type AttachmentSpec struct {
	Role          string `json:"role"`
	Index         int    `json:"index"`
	Device        string `json:"device"`
	VolumeAddress string `json:"volume"`
}

// RegistrationSpec puts a host behind (or takes it out of) the load balancer.
type RegistrationSpec struct {
	LoadBalancer string `json:"load_balancer"`
	Role         string `json:"role,omitempty"`
	Index        int    `json:"index"`
	// InstanceID is set for deregistrations.
	InstanceID string `json:"instance_id,omitempty"`
}

// Detach names the attachment of a volume to remove before deleting it.
type Detach struct {
	InstanceID string `json:"instance_id"`
	Device     string `json:"device"`
}

// Plan is the difference between a stack file and a cloud, as a value: printable, JSON-encodable
// and appliable later, as long as the cloud still matches Fingerprint.
type Plan struct {
	Stack string `json:"stack"`
	// Fingerprint identifies the actual state the plan was computed from.
	Fingerprint string    `json:"fingerprint"`
	CreatedAt   time.Time `json:"created_at"`
	Changes     []Change  `json:"changes"`
}

// Summary counts a plan's changes the way Terraform does: a replacement is one add and one
// destroy; refused changes are counted apart.
type Summary struct {
	Add, Change, Destroy, Unchanged, Refused int
}

// Summary counts the plan's changes.
func (p Plan) Summary() Summary {
	var s Summary
	for _, c := range p.Changes {
		switch {
		case c.Refuse != "":
			s.Refused++
		case c.ForceReplace:
			s.Add++
			s.Destroy++
		case c.Action == Create:
			s.Add++
		case c.Action == Update:
			s.Change++
		case c.Action == Delete:
			s.Destroy++
		default:
			s.Unchanged++
		}
	}
	return s
}

// HasChanges reports whether applying the plan would do anything (--detailed-exitcode).
func (p Plan) HasChanges() bool {
	s := p.Summary()
	return s.Add+s.Change+s.Destroy+s.Refused > 0
}

// Refused returns the changes that cannot be applied.
func (p Plan) Refused() []Change {
	var out []Change
	for _, c := range p.Changes {
		if c.Refuse != "" {
			out = append(out, c)
		}
	}
	return out
}

// String is the summary line: "Plan: 3 to add, 1 to change, 0 to destroy." or "No changes.".
func (s Summary) String() string {
	if s.Add+s.Change+s.Destroy+s.Refused == 0 {
		return "No changes."
	}
	line := fmt.Sprintf("Plan: %d to add, %d to change, %d to destroy.", s.Add, s.Change, s.Destroy)
	if s.Refused > 0 {
		line += fmt.Sprintf(" %d refused: nothing will be applied until the stack file or --replace resolves them.", s.Refused)
	}
	return line
}

// Render writes the plan as human text, Terraform-like, no-ops left out.
func (p Plan) Render(w io.Writer) error {
	var b strings.Builder
	s := p.Summary()
	if s.Add+s.Change+s.Destroy+s.Refused > 0 {
		fmt.Fprintf(&b, "Stack %q: instactl will perform the following actions.\n\n", p.Stack)
	}
	for _, c := range p.Changes {
		if c.Action == NoOp && c.Refuse == "" {
			continue
		}
		sym := c.Action.Symbol()
		switch {
		case c.Refuse != "":
			sym = "!"
		case c.ForceReplace:
			sym = "-/+"
		}
		head := fmt.Sprintf("%3s %s", sym, c.Address)
		if c.ID != "" {
			head += " (" + c.ID + ")"
		}
		if c.ForceReplace {
			head += " must be replaced"
		}
		b.WriteString(head + "\n")
		width := 0
		for _, d := range c.Diffs {
			width = max(width, len(d.Field))
		}
		for _, d := range c.Diffs {
			b.WriteString("      " + renderDiff(c.Action, d, width) + "\n")
		}
		if c.Refuse != "" {
			b.WriteString("      refused: " + c.Refuse + "\n")
		}
	}
	if b.Len() > 0 {
		b.WriteString("\n")
	}
	b.WriteString(s.String() + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func renderDiff(a Action, d FieldDiff, width int) string {
	pad := d.Field + ":" + strings.Repeat(" ", width-len(d.Field))
	var line string
	switch {
	case a == Create:
		line = fmt.Sprintf("%s %s", pad, d.New)
	case a == Delete:
		line = fmt.Sprintf("%s %s", pad, d.Old)
	case d.Old == "":
		line = fmt.Sprintf("%s + %s", pad, d.New)
	case d.New == "":
		line = fmt.Sprintf("%s - %s", pad, d.Old)
	default:
		line = fmt.Sprintf("%s %s -> %s", pad, d.Old, d.New)
	}
	if d.ForcesReplacement {
		line += " (cannot change in place)"
	}
	return line
}

// Fingerprint hashes the parts of actual a plan depends on. Slices are sorted first, and
// instance states are left out (pending becomes running on its own).
func Fingerprint(actual *cloud.Resources) string {
	if actual == nil {
		actual = &cloud.Resources{}
	}
	r := cloud.Resources{KeyPairs: slices.Sorted(slices.Values(actual.KeyPairs))}
	for _, in := range actual.Instances {
		in.State = ""
		in.SecurityGroups = slices.Sorted(slices.Values(in.SecurityGroups))
		r.Instances = append(r.Instances, in)
	}
	slices.SortFunc(r.Instances, func(a, b cloud.Instance) int { return strings.Compare(a.ID, b.ID) })
	r.Volumes = slices.Clone(actual.Volumes)
	slices.SortFunc(r.Volumes, func(a, b cloud.Volume) int { return strings.Compare(a.ID, b.ID) })
	for _, g := range actual.SecurityGroups {
		g.Ingress = sortRules(g.Ingress)
		r.SecurityGroups = append(r.SecurityGroups, g)
	}
	slices.SortFunc(r.SecurityGroups, func(a, b cloud.SecurityGroup) int { return strings.Compare(a.ID, b.ID) })
	for _, lb := range actual.LoadBalancers {
		lb.Instances = slices.Sorted(slices.Values(lb.Instances))
		lb.Zones = slices.Sorted(slices.Values(lb.Zones))
		lb.SecurityGroupIDs = slices.Sorted(slices.Values(lb.SecurityGroupIDs))
		r.LoadBalancers = append(r.LoadBalancers, lb)
	}
	slices.SortFunc(r.LoadBalancers, func(a, b cloud.LoadBalancer) int { return strings.Compare(a.Name, b.Name) })
	r.Edge = fingerprintEdge(actual.Edge)
	b, _ := json.Marshal(r) // maps marshal with sorted keys
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func sortRules(rs []cloud.Rule) []cloud.Rule {
	out := slices.Clone(rs)
	slices.SortFunc(out, func(a, b cloud.Rule) int { return strings.Compare(ruleString(a), ruleString(b)) })
	return slices.Compact(out)
}

func ruleString(r cloud.Rule) string {
	ports := fmt.Sprint(r.FromPort)
	if r.ToPort != r.FromPort {
		ports = fmt.Sprintf("%d-%d", r.FromPort, r.ToPort)
	}
	from := r.CIDR
	if r.FromGroup != "" {
		from = "sg." + r.FromGroup
	}
	return fmt.Sprintf("tcp %s from %s", ports, from)
}
