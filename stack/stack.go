package stack

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Stack is one declarative stack file: everything instactl provisions, deploys, backs up and
// shards. It is a plain value; Parse fills it from YAML and applies defaults, Validate checks it.
type Stack struct {
	// Name tags every resource the stack owns; it is the only state (no state file).
	Name string `json:"name"`
	// Provider is "aws" or "sandbox".
	Provider string `json:"provider"`
	// Region is the AWS region (also recorded on sandbox resources for symmetry).
	Region string `json:"region"`
	// Zone is the availability zone instances and volumes are placed in.
	Zone string `json:"zone"`
	// Zones are further zones, in order of preference, a host may be placed in when AWS has no
	// capacity for it in Zone (its volumes follow it). Zone defaults to the first.
	Zones []string `json:"zones"`
	// Image is the AMI id for AWS instances; ignored by the sandbox.
	Image string `json:"image"`
	// SSH's key and known_hosts are local paths; a leading ~ is expanded when the stack is
	// loaded, as is sandbox.dir's.
	SSH SSH `json:"ssh"`
	// Network fixes every host's private address, so user-data can name a replica's primary
	// before the primary exists.
	Network Network `json:"network"`
	// Roles in file order; role names are unique.
	Roles        []Role       `json:"roles"`
	LoadBalancer LoadBalancer `json:"load_balancer"`
	Deploy       Deploy       `json:"deploy"`
	Shards       Shards       `json:"shards"`
	Backup       Backup       `json:"backup"`
	Sandbox      Sandbox      `json:"sandbox"`
	// DNS optionally names the load balancer and the photo CDN in a Route 53 zone (dns.go).
	DNS DNS `json:"dns"`
	// Path is the file the stack was read from, for error messages.
	Path string `json:"-"`
	// pos is where each key path was written, so later checks (CheckFiles) point at it too.
	pos map[string]Pos
}

// SSH says how instactl reaches hosts.
type SSH struct {
	User string `json:"user"`
	// Key is the private key file; on the sandbox it is generated under the sandbox directory.
	Key string `json:"key"`
	// KnownHosts is the known_hosts file used for strict host key checking.
	KnownHosts string `json:"known_hosts"`
	Port       int    `json:"port"`
	// AdminCIDR is where SSH is allowed from (security group rule on AWS).
	AdminCIDR string `json:"admin_cidr"`
}

// Role is a group of identical hosts.
type Role struct {
	Name         string `json:"name"`
	InstanceType string `json:"instance_type"`
	// InstanceTypes are further types, in order of preference, a host may get when AWS has no
	// capacity for InstanceType in any allowed zone. InstanceType defaults to the first.
	InstanceTypes []string `json:"instance_types"`
	Count         int      `json:"count"`
	// Port is the role's service port (app HTTP, postgres, redis, memcached); 0 for none.
	Port int `json:"port"`
	// Replicas is, for pg and redis, how many replicas follow each primary. Hosts are grouped
	// primary first: with count 4 and replicas 1, node 0 is hosts 0 (primary) and 1 (replica).
	Replicas int       `json:"replicas"`
	Volumes  VolumeSet `json:"volumes"`
}

// VolumeSet is the data volumes every host of a role gets (RAID 0 over them on AWS).
type VolumeSet struct {
	Count      int    `json:"count"`
	SizeGiB    int    `json:"size_gib"`
	Type       string `json:"type"`
	Filesystem string `json:"filesystem"`
	Mount      string `json:"mount"`
}

// LoadBalancer fronts the app role.
type LoadBalancer struct {
	ListenerPort int    `json:"listener_port"`
	TargetRole   string `json:"target_role"`
	TargetPort   int    `json:"target_port"`
	HealthCheck  string `json:"health_check"`
	// DrainTimeout is how long a deregistered host keeps serving in-flight requests.
	DrainTimeout time.Duration `json:"drain_timeout"`
}

// Deploy holds rolling deploy defaults.
type Deploy struct {
	Role          string        `json:"role"`
	Path          string        `json:"path"`
	Service       string        `json:"service"`
	KeepReleases  int           `json:"keep_releases"`
	Batches       []string      `json:"batches"`
	MaxFail       string        `json:"max_fail"`
	HealthTimeout time.Duration `json:"health_timeout"`
	HealthPasses  int           `json:"health_passes"`
	Parallel      int           `json:"parallel"`
	// Canary, when the file has the section, judges the first batch by its metrics.
	Canary *Canary `json:"canary,omitempty"`
	// Staging is how deploy gets the artifact to the hosts: "s3" (the default: once to the
	// stack's bucket, fetched by every host) or "ssh" (streamed to every host from here).
	Staging string `json:"staging,omitempty"`
	// SSHPersist is how long deploy's SSH connections stay open after a run, held by a
	// keeper process (like OpenSSH's ControlPersist), so the next deploy, rollback,
	// releases or lock within it opens sessions instead of handshakes. Unset means 5m (a
	// deploy, a look, a redeploy or rollback); 0s turns the keeper off (every run connects
	// afresh).
	SSHPersist *time.Duration `json:"ssh_persist,omitempty"`
}

// DefaultSSHPersist is deploy.ssh_persist when the stack file does not set it.
const DefaultSSHPersist = 5 * time.Minute

// Persist returns deploy.ssh_persist, or DefaultSSHPersist when unset.
func (d Deploy) Persist() time.Duration {
	if d.SSHPersist == nil {
		return DefaultSSHPersist
	}
	return *d.SSHPersist
}

// Shards configures logical sharding.
type Shards struct {
	// Logical is the number of logical shards (Postgres schemas); fixed for the life of the stack.
	Logical int `json:"logical"`
	// Role is the Postgres role whose primaries are the physical nodes.
	Role string `json:"role"`
	// Database is the database holding the shard schemas on every node.
	Database string `json:"database"`
	// ControlDatabase holds the shard map, on physical node 0.
	ControlDatabase string `json:"control_database"`
}

// Backup configures snapshots and retention.
type Backup struct {
	Targets      []string      `json:"targets"`
	MaxLagBytes  int64         `json:"max_lag_bytes"`
	MaxLagTime   time.Duration `json:"max_lag_time"`
	FreezeBudget time.Duration `json:"freeze_budget"`
	Retention    Retention     `json:"retention"`
	// WALArchive turns on the continuous WAL archive of every Postgres group (docs/pitr.md):
	// archive_mode = always and archive_command = instactl wal push, into bucket <stack>-wal.
	// Off by default until the archiver is installed on the pg hosts (instactl wal install):
	// a failing archive_command keeps every segment in pg_wal.
	WALArchive bool `json:"wal_archive"`
	// ArchiveTimeout is archive_timeout: the longest a committed write waits to be archived when
	// the primary is quiet, so the archive's RPO (default 60s).
	ArchiveTimeout time.Duration `json:"archive_timeout"`
}

// Retention is grandfather-father-son retention.
type Retention struct {
	Hourly      int `json:"hourly"`
	Daily       int `json:"daily"`
	Weekly      int `json:"weekly"`
	Monthly     int `json:"monthly"`
	MinVerified int `json:"min_verified"`
}

// Sandbox configures the local cloud.
type Sandbox struct {
	// Dir holds all sandbox state; `sandbox down` removes what it made there.
	Dir string `json:"dir"`
	// VolumeSizeMiB overrides volume sizes on the sandbox (GiB-sized loop images are wasteful).
	VolumeSizeMiB int `json:"volume_size_mib"`
	// LBPort is the port the sandbox load balancer (nginx) listens on.
	LBPort int `json:"lb_port"`
	// MotoPort is where moto_server is started for S3 and the AWS API.
	MotoPort int `json:"moto_port"`
}

// Network places hosts.
type Network struct {
	// AddressBase is the first host's private address; the n-th host of the stack (in role
	// order, then index) gets AddressBase+n. Sandbox: a loopback address; AWS: an address in
	// the subnet.
	AddressBase netip.Addr `json:"address_base"`
	// SubnetID is the AWS subnet instances are placed in (default: the zone's default subnet).
	SubnetID string `json:"subnet_id"`
}

// Address returns host h's private address: AddressBase plus h's ordinal in Hosts().
func (s *Stack) Address(h HostRef) (netip.Addr, error) {
	a := s.Network.AddressBase
	for _, ref := range s.Hosts() {
		if ref == h {
			return a, nil
		}
		a = a.Next()
	}
	return netip.Addr{}, fmt.Errorf("stack %s has no host %s", s.Name, h.Name())
}

// Role returns the role named name, or nil.
func (s *Stack) Role(name string) *Role {
	for i := range s.Roles {
		if s.Roles[i].Name == name {
			return &s.Roles[i]
		}
	}
	return nil
}

// HostName is the canonical name of host index of role: "app-0".
func HostName(role string, index int) string { return fmt.Sprintf("%s-%d", role, index) }

// Hosts lists every host the stack declares, in role order.
func (s *Stack) Hosts() []HostRef {
	var out []HostRef
	for _, r := range s.Roles {
		for i := 0; i < r.Count; i++ {
			out = append(out, HostRef{Role: r.Name, Index: i})
		}
	}
	return out
}

// HostRef identifies a host by role and index.
type HostRef struct {
	Role  string `json:"role"`
	Index int    `json:"index"`
}

// Name is the host's canonical name.
func (h HostRef) Name() string { return HostName(h.Role, h.Index) }

// IsPrimary reports whether host index of a role with the given replica count is a primary.
func (r Role) IsPrimary(index int) bool { return index%(r.Replicas+1) == 0 }

// PrimaryOf returns the primary's index for host index.
func (r Role) PrimaryOf(index int) int { return index - index%(r.Replicas+1) }

// Nodes returns the number of primary groups (physical nodes) of the role.
func (r Role) Nodes() int { return r.Count / (r.Replicas + 1) }

// AllZones is the zones a host may be placed in, in order of preference: Zone, then Zones.
func (s *Stack) AllZones() []string { return preferred(s.Zone, s.Zones) }

// AllInstanceTypes is the types a host of r may get, in order of preference: InstanceType, then
// InstanceTypes.
func (r Role) AllInstanceTypes() []string { return preferred(r.InstanceType, r.InstanceTypes) }

func preferred(first string, rest []string) []string {
	out := []string{first}
	for _, x := range rest {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
