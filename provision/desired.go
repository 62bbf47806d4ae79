package provision

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

// DesiredState is every resource a stack asks for, in the provider's terms.
type DesiredState struct {
	Stack        string            `json:"stack"`
	KeyPair      *KeyPairSpec      `json:"key_pair,omitempty"`
	Groups       []GroupSpec       `json:"groups"`
	Instances    []InstanceSpec    `json:"instances"`
	Volumes      []VolumeSpec      `json:"volumes"`
	LoadBalancer *LoadBalancerSpec `json:"load_balancer,omitempty"`
	// Replace lists the addresses the operator allows Compute to replace when a field cannot
	// change in place (--replace instance.app[1]); "*" allows every instance and load balancer.
	Replace []string `json:"replace,omitempty"`
	// Edge is the photo bucket, app role, CDN and DNS records (edge.go); nil: none.
	Edge *EdgeSpec `json:"edge,omitempty"`
}

// KeyPairSpec is the operator's SSH key, imported once per stack.
type KeyPairSpec struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

// GroupSpec is a security group; rules name other groups of the stack.
type GroupSpec struct {
	Name        string       `json:"name"`
	Description string       `json:"description"`
	Rules       []cloud.Rule `json:"rules"`
}

// InstanceSpec is one host.
type InstanceSpec struct {
	Role     string   `json:"role"`
	Index    int      `json:"index"`
	Name     string   `json:"name"`
	Type     string   `json:"type"`
	Image    string   `json:"image"`
	Zone     string   `json:"zone"`
	KeyName  string   `json:"key_name,omitempty"`
	Groups   []string `json:"groups"`
	UserData string   `json:"user_data,omitempty"`
	// PrivateAddress is the host's fixed address from the stack's network.address_base, so
	// user-data can name a replica's primary before it exists.
	PrivateAddress string `json:"private_address,omitempty"`
	// ClientToken is derived from stack, role and index, so a create retried after a crash
	// finds the instance the first attempt made.
	ClientToken string `json:"client_token"`
	// Zones and Types, when the stack allows more than Zone and Type, are every zone and type
	// the host may get, in order of preference (Zone and Type first): apply moves on to the next
	// when AWS has no capacity, and plan takes any of them as matching.
	Zones []string `json:"zones,omitempty"`
	Types []string `json:"types,omitempty"`
	// InstanceProfile is the IAM instance profile the host runs with (edge.go); "": none.
	InstanceProfile string `json:"instance_profile,omitempty"`
}

// VolumeSpec is one data volume of a host, attached at Device.
type VolumeSpec struct {
	Role    string `json:"role"`
	Index   int    `json:"index"`
	Device  string `json:"device"`
	SizeGiB int    `json:"size_gib"`
	Type    string `json:"type,omitempty"`
	Zone    string `json:"zone"`
	// Zones, when the stack allows more than Zone: the volume is made in its host's zone.
	Zones []string `json:"zones,omitempty"`
}

// LoadBalancerSpec is the stack's front door and the role it sends traffic to.
type LoadBalancerSpec struct {
	Name         string        `json:"name"`
	ListenerPort int           `json:"listener_port"`
	TargetPort   int           `json:"target_port"`
	HealthCheck  string        `json:"health_check"`
	DrainTimeout time.Duration `json:"drain_timeout"`
	Zones        []string      `json:"zones"`
	Groups       []string      `json:"groups"`
	TargetRole   string        `json:"target_role"`
}

// Devices are the attachment points of a host's data volumes, in order.
var Devices = []string{"/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk",
	"/dev/sdl", "/dev/sdm", "/dev/sdn", "/dev/sdo", "/dev/sdp"}

// hostKey is "app[1]", the part of addresses that names a host.
func hostKey(role string, index int) string { return fmt.Sprintf("%s[%d]", role, index) }

// Address is the plan address of the instance: "instance.app[1]".
func (s InstanceSpec) Address() string { return "instance." + hostKey(s.Role, s.Index) }

// Address is the plan address of the volume: "volume.pg[0].sdf".
func (s VolumeSpec) Address() string {
	return "volume." + hostKey(s.Role, s.Index) + "." + strings.TrimPrefix(s.Device, "/dev/")
}

// ClientToken derives the idempotency token of a host from stack, role and index.
func ClientToken(stackName, role string, index int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%d", stackName, role, index)))
	return "instactl-" + hex.EncodeToString(sum[:16])
}

// VolumeToken derives the idempotency token of a data volume from stack, device and the
// instance it is made for: a create retried (a lost reply, a crash, a re-plan that did not see
// the new volume yet) gets the volume the first made, and a host made anew gets new volumes.
func VolumeToken(stackName, device, instanceID string) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%s", stackName, instanceID, device)))
	return "instactl-v-" + hex.EncodeToString(sum[:16])
}

// LoadBalancerName is the ELB name of a stack: letters, digits and hyphens, at most 32.
func LoadBalancerName(stackName string) string {
	b := []byte(stackName)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b[:min(len(b), 32)]), "-")
}

// Desired builds what st asks for. userData renders a host's cloud-init (nil: none).
func Desired(st *stack.Stack, userData func(stack.HostRef) (string, error)) (DesiredState, error) {
	d := DesiredState{Stack: st.Name}
	if st.Name == "" {
		return d, fmt.Errorf("desired state: stack has no name")
	}
	if st.SSH.Key != "" {
		pub, err := os.ReadFile(st.SSH.Key + ".pub")
		if err != nil {
			return d, fmt.Errorf("desired state: read public key: %w (create it with: ssh-keygen -t ed25519 -f %s)", err, st.SSH.Key)
		}
		d.KeyPair = &KeyPairSpec{Name: st.Name, PublicKey: strings.TrimSpace(string(pub))}
	}
	d.Groups = desiredGroups(st)
	for ri, r := range st.Roles {
		if st.Role(r.Name) != &st.Roles[ri] {
			return d, fmt.Errorf("desired state: role %q is declared twice", r.Name)
		}
		if r.Volumes.Count > len(Devices) {
			return d, fmt.Errorf("desired state: role %s asks for %d volumes per host, at most %d fit (%s..%s)",
				r.Name, r.Volumes.Count, len(Devices), Devices[0], Devices[len(Devices)-1])
		}
		for i := range r.Count {
			in, err := desiredInstance(st, r, i, d.KeyPair, userData)
			if err != nil {
				return d, err
			}
			d.Instances = append(d.Instances, in)
			for v := range r.Volumes.Count {
				d.Volumes = append(d.Volumes, VolumeSpec{Role: r.Name, Index: i, Device: Devices[v],
					SizeGiB: r.Volumes.SizeGiB, Type: r.Volumes.Type, Zone: st.Zone, Zones: in.Zones})
			}
		}
	}
	if lb := st.LoadBalancer; lb.TargetRole != "" {
		if st.Role(lb.TargetRole) == nil {
			return d, fmt.Errorf("desired state: load balancer targets role %q, which the stack does not declare", lb.TargetRole)
		}
		d.LoadBalancer = &LoadBalancerSpec{Name: LoadBalancerName(st.Name), ListenerPort: lb.ListenerPort,
			TargetPort: lb.TargetPort, HealthCheck: lb.HealthCheck, DrainTimeout: lb.DrainTimeout,
			Zones: st.AllZones(), Groups: []string{"lb"}, TargetRole: lb.TargetRole}
	}
	desiredEdge(st, &d)
	return d, nil
}

func desiredInstance(st *stack.Stack, r stack.Role, i int, key *KeyPairSpec, userData func(stack.HostRef) (string, error)) (InstanceSpec, error) {
	in := InstanceSpec{Role: r.Name, Index: i, Name: st.Name + "-" + stack.HostName(r.Name, i),
		Type: r.InstanceType, Image: st.Image, Zone: st.Zone, Groups: []string{r.Name},
		ClientToken: ClientToken(st.Name, r.Name, i)}
	if zs := st.AllZones(); len(zs) > 1 {
		in.Zones = zs
	}
	if ts := r.AllInstanceTypes(); len(ts) > 1 {
		in.Types = ts
	}
	if key != nil {
		in.KeyName = key.Name
	}
	if st.Network.AddressBase.IsValid() {
		addr, err := st.Address(stack.HostRef{Role: r.Name, Index: i})
		if err != nil {
			return in, fmt.Errorf("desired state: %w", err)
		}
		in.PrivateAddress = addr.String()
	}
	if userData != nil {
		ud, err := userData(stack.HostRef{Role: r.Name, Index: i})
		if err != nil {
			return in, fmt.Errorf("desired state: user data of %s: %w", stack.HostName(r.Name, i), err)
		}
		in.UserData = ud
	}
	return in, nil
}

// frontRole is the role the others accept traffic from: the LB target, else the deploy role.
func frontRole(st *stack.Stack) string {
	for _, r := range []string{st.LoadBalancer.TargetRole, st.Deploy.Role, "app"} {
		if r != "" && st.Role(r) != nil {
			return r
		}
	}
	return ""
}

// The role whose hosts run PgBouncer beside the app server (templates.RoleApp), and its port
// (templates.Data.PgBouncerPort's default). instactl drives the poolers' admin console (PAUSE,
// RELOAD, RESUME) from where it runs: the operator's CIDR, like SSH.
const (
	pgBouncerRole = "app"
	pgBouncerPort = 6432
)

// pgBouncerAdmin adds the PgBouncer admin rule (from ssh.admin_cidr) to the app role's rules.
func pgBouncerAdmin(st *stack.Stack, rules []cloud.Rule) []cloud.Rule {
	if st.SSH.AdminCIDR == "" {
		return rules
	}
	return append(rules, cloud.Rule{FromPort: pgBouncerPort, ToPort: pgBouncerPort, CIDR: st.SSH.AdminCIDR})
}

// desiredGroups: lb (listener from anywhere), the front role (target port from lb, ssh from
// admin), every other role (its port from the front role and from itself, ssh from admin); the
// app role also takes PgBouncer's port from admin.
// The order is one groups can be created in: a group comes after those its rules name.
func desiredGroups(st *stack.Stack) []GroupSpec {
	var out []GroupSpec
	lb := st.LoadBalancer
	if lb.TargetRole != "" {
		out = append(out, GroupSpec{Name: "lb", Description: st.Name + " load balancer",
			Rules: []cloud.Rule{{FromPort: lb.ListenerPort, ToPort: lb.ListenerPort, CIDR: "0.0.0.0/0"}}})
	}
	sshPort := st.SSH.Port
	if sshPort == 0 {
		sshPort = 22
	}
	admin := func(rules []cloud.Rule) []cloud.Rule {
		if st.SSH.AdminCIDR == "" {
			return rules
		}
		return append(rules, cloud.Rule{FromPort: sshPort, ToPort: sshPort, CIDR: st.SSH.AdminCIDR})
	}
	front := frontRole(st)
	if front != "" {
		var rules []cloud.Rule
		if lb.TargetRole == front {
			rules = append(rules, cloud.Rule{FromPort: lb.TargetPort, ToPort: lb.TargetPort, FromGroup: "lb"})
		}
		if front == pgBouncerRole {
			rules = pgBouncerAdmin(st, rules)
		}
		out = append(out, GroupSpec{Name: front, Description: st.Name + " " + front, Rules: sortRules(admin(rules))})
	}
	for _, r := range st.Roles {
		if r.Name == front {
			continue
		}
		var rules []cloud.Rule
		if r.Name == pgBouncerRole {
			rules = pgBouncerAdmin(st, rules)
		}
		if r.Port > 0 {
			if front != "" {
				rules = append(rules, cloud.Rule{FromPort: r.Port, ToPort: r.Port, FromGroup: front})
			}
			rules = append(rules, cloud.Rule{FromPort: r.Port, ToPort: r.Port, FromGroup: r.Name})
		}
		out = append(out, GroupSpec{Name: r.Name, Description: st.Name + " " + r.Name, Rules: sortRules(admin(rules))})
	}
	return out
}
