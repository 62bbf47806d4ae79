package cloud

import (
	"context"
	"errors"
	"time"
)

// Tag keys instactl writes on every resource it owns. Tags are the only state: a resource without
// TagStack = this stack is never changed or deleted.
const (
	TagStack = "instactl:stack"
	TagRole  = "instactl:role"
	TagIndex = "instactl:index"
	TagName  = "Name"
	// TagDevice records, on a volume, the device it belongs at on its instance.
	TagDevice = "instactl:device"
	// TagSet groups the snapshots of one backup set.
	TagSet = "instactl:set"
)

// ErrNotFound is returned (wrapped) when a resource does not exist.
var ErrNotFound = errors.New("not found")

// Instance is one host.
type Instance struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Role  string `json:"role"`
	Index int    `json:"index"`
	Type  string `json:"type"`
	Image string `json:"image"`
	Zone  string `json:"zone"`
	// PrivateAddress is what other hosts use; PublicAddress what the operator's SSH uses
	// (on the sandbox both are the host's loopback address).
	PrivateAddress string            `json:"private_address"`
	PublicAddress  string            `json:"public_address"`
	SSHPort        int               `json:"ssh_port"`
	State          string            `json:"state"` // pending, running, stopping, stopped, terminated
	SecurityGroups []string          `json:"security_groups,omitempty"`
	Tags           map[string]string `json:"tags"`
	// InstanceProfile is the name of the IAM instance profile it runs with ("": none).
	InstanceProfile string `json:"instance_profile,omitempty"`
}

// InstanceSpec asks for a new instance.
type InstanceSpec struct {
	Name    string
	Role    string
	Index   int
	Type    string
	Image   string
	Zone    string
	KeyName string
	// Address optionally requests the private address (AWS: PrivateIpAddress in the subnet;
	// sandbox: the loopback address). Deterministic addresses let user-data name its primary.
	Address  string
	UserData string
	// SecurityGroupIDs to attach.
	SecurityGroupIDs []string
	// ClientToken makes creation idempotent across crashes (derived from stack, role, index).
	ClientToken string
	Tags        map[string]string
	// InstanceProfile names the IAM instance profile the instance runs with ("": none).
	InstanceProfile string
}

// Volume is one block volume.
type Volume struct {
	ID         string            `json:"id"`
	Zone       string            `json:"zone"`
	SizeGiB    int               `json:"size_gib"`
	Type       string            `json:"type"`
	State      string            `json:"state"` // creating, available, in-use, deleting
	InstanceID string            `json:"instance_id,omitempty"`
	Device     string            `json:"device,omitempty"`
	SnapshotID string            `json:"snapshot_id,omitempty"`
	Tags       map[string]string `json:"tags"`
}

// VolumeSpec asks for a new volume, empty or from a snapshot.
type VolumeSpec struct {
	Zone       string
	SizeGiB    int
	Type       string
	SnapshotID string
	// ClientToken, when set, makes the create idempotent: a create repeated with the same token
	// (a lost reply, a crash) gets the volume the first one made.
	ClientToken string
	Tags        map[string]string
}

// SecurityGroup is a firewall group with ingress rules.
type SecurityGroup struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Ingress     []Rule            `json:"ingress"`
	Tags        map[string]string `json:"tags"`
}

// Rule allows TCP to a port range from a CIDR or from another group (by name within the stack).
type Rule struct {
	FromPort  int    `json:"from_port"`
	ToPort    int    `json:"to_port"`
	CIDR      string `json:"cidr,omitempty"`
	FromGroup string `json:"from_group,omitempty"`
}

// LoadBalancer is the stack's front door.
type LoadBalancer struct {
	Name         string        `json:"name"`
	DNSName      string        `json:"dns_name"`
	ListenerPort int           `json:"listener_port"`
	TargetPort   int           `json:"target_port"`
	HealthCheck  string        `json:"health_check"` // HTTP path
	DrainTimeout time.Duration `json:"drain_timeout"`
	// Zones the LB serves; SecurityGroupIDs guard its listener.
	Zones            []string `json:"zones,omitempty"`
	SecurityGroupIDs []string `json:"security_group_ids,omitempty"`
	// Instances registered, by instance id.
	Instances []string          `json:"instances"`
	Tags      map[string]string `json:"tags"`
}

// InstanceHealth is the LB's view of one registered instance.
type InstanceHealth struct {
	InstanceID string `json:"instance_id"`
	State      string `json:"state"` // InService, OutOfService, Draining
	Reason     string `json:"reason,omitempty"`
}

// Snapshot is a point-in-time copy of one volume.
type Snapshot struct {
	ID        string            `json:"id"`
	VolumeID  string            `json:"volume_id"`
	SizeGiB   int               `json:"size_gib"`
	State     string            `json:"state"` // pending, completed, error
	StartTime time.Time         `json:"start_time"`
	Tags      map[string]string `json:"tags"`
}

// Resources is everything a provider holds for one stack.
type Resources struct {
	Instances      []Instance      `json:"instances"`
	Volumes        []Volume        `json:"volumes"`
	SecurityGroups []SecurityGroup `json:"security_groups"`
	LoadBalancers  []LoadBalancer  `json:"load_balancers"`
	KeyPairs       []string        `json:"key_pairs"`
	// Edge is the photo bucket, app role, CDN and DNS records (edge.go); nil for a provider
	// without them.
	Edge *Edge `json:"edge,omitempty"`
}

// Provider is a cloud: AWS (cloud/aws) or the local sandbox (cloud/sandbox). Both pass the same
// conformance suite. Every call that lists filters by the stack tag, and every mutating call
// refuses resources not tagged with the stack it is given.
type Provider interface {
	// Name is "aws" or "sandbox".
	Name() string
	// Describe returns every live resource tagged with stack (terminated instances excluded).
	Describe(ctx context.Context, stack string) (*Resources, error)

	// EnsureKeyPair imports publicKey as name, tagged with stack, unless it exists already.
	EnsureKeyPair(ctx context.Context, stack, name, publicKey string) error
	DeleteKeyPair(ctx context.Context, name string) error

	// CreateSecurityGroup creates a group and its ingress rules; rules referring to other groups
	// name them (SecurityGroup.Name), resolved within the stack.
	CreateSecurityGroup(ctx context.Context, stack string, g SecurityGroup) (SecurityGroup, error)
	// UpdateSecurityGroupRules makes the group's ingress exactly rules.
	UpdateSecurityGroupRules(ctx context.Context, stack, groupID string, rules []Rule) error
	DeleteSecurityGroup(ctx context.Context, groupID string) error

	// CreateInstance starts an instance and waits until it is running. Idempotent on ClientToken.
	CreateInstance(ctx context.Context, spec InstanceSpec) (Instance, error)
	// TerminateInstances terminates and waits until they are gone.
	TerminateInstances(ctx context.Context, ids []string) error
	// StopInstances stops instances without terminating them: their volumes, addresses and
	// tags stay. force skips a clean shutdown (AWS StopInstances Force; on the sandbox every
	// process of the host dies at once, like a power cut). It returns when every instance is
	// stopped. Stopping a stopped instance succeeds.
	StopInstances(ctx context.Context, ids []string, force bool) error
	// StartInstances starts stopped instances and returns when each is running and reachable
	// (sandbox: its sshd answers); starting a running instance succeeds.
	StartInstances(ctx context.Context, ids []string) error

	CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, error)
	// AttachVolume attaches and waits for in-use. It refuses a volume in another zone or already
	// attached, and a device in use (AWS via moto does not check these; instactl does).
	AttachVolume(ctx context.Context, volumeID, instanceID, device string) error
	DetachVolume(ctx context.Context, volumeID, instanceID, device string) error
	DeleteVolume(ctx context.Context, volumeID string) error

	// CreateLoadBalancer makes lb; when the stack already has one of that name, it takes lb's
	// health check and drain timeout (how those change in place).
	CreateLoadBalancer(ctx context.Context, lb LoadBalancer) (LoadBalancer, error)
	DeleteLoadBalancer(ctx context.Context, name string) error
	RegisterInstances(ctx context.Context, lbName string, instanceIDs []string) error
	// DeregisterInstances removes instances; callers wait DrainTimeout for in-flight requests.
	DeregisterInstances(ctx context.Context, lbName string, instanceIDs []string) error
	InstanceHealth(ctx context.Context, lbName string) ([]InstanceHealth, error)

	// CreateSnapshots snapshots the given volumes of one instance as one crash-consistent set,
	// with tags applied in the same call.
	CreateSnapshots(ctx context.Context, instanceID string, volumeIDs []string, tags map[string]string) ([]Snapshot, error)
	// DescribeSnapshots lists snapshots tagged with stack.
	DescribeSnapshots(ctx context.Context, stack string) ([]Snapshot, error)
	DeleteSnapshot(ctx context.Context, snapshotID string) error
	// TagSnapshots adds tags to existing snapshots, overwriting keys they already have, so a
	// set's later state (verified by a drill, found partial) is seen from every machine. It
	// refuses snapshots without a stack tag and any change of that tag, and changes nothing
	// unless every snapshot exists (a missing one is ErrNotFound).
	TagSnapshots(ctx context.Context, snapshotIDs []string, tags map[string]string) error
}
