package deploy

import (
	"fmt"
	"github.com/instactl/instactl/provision"
	"net"
	"os"
	"os/user"
	"path"
	"sort"
	"strconv"
	"time"

	"github.com/instactl/instactl/canary"
	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
)

// Config is everything a deploy, rollback or listing needs besides the hosts. ConfigFromStack
// fills it from the stack file; the CLI then applies its flags.
type Config struct {
	// Stack names the stack (recorded in the lock and the audit log).
	Stack string `json:"stack"`
	// Role is the role deployed to.
	Role string `json:"role"`
	// Path is the deploy root on every host (releases/, current).
	Path string `json:"path"`
	// Binary is the artifact's file name inside a release (default "instagram-app").
	Binary string `json:"binary"`
	// Service is the service restarted on activation (default "app").
	Service string `json:"service"`
	// ServiceManager is templates.ServiceManagerSystemd or templates.ServiceManagerSandbox.
	ServiceManager string `json:"service_manager"`
	// Restart, when set, replaces the service manager's restart command (an argv), for hosts
	// whose service is managed some other way.
	Restart []string `json:"restart,omitempty"`
	// KeepReleases is how many releases prune keeps per host (besides current and previous).
	KeepReleases int `json:"keep_releases"`
	// Batches are the batch sizes, e.g. ["1", "10%", "100%"] (see SplitBatches).
	Batches []string `json:"batches"`
	// MaxFail is "N" or "P%" of the hosts that may fail before the deploy stops.
	MaxFail string `json:"max_fail"`
	// Parallel bounds the hosts worked on at once (staging and within a batch).
	Parallel int `json:"parallel"`

	// HealthPath, HealthPort: the health gate GETs http://<host private address>:HealthPort
	// HealthPath from instactl.
	HealthPath string `json:"health_path"`
	HealthPort int    `json:"health_port"`
	// HealthTimeout bounds the gate per host; HealthPasses consecutive 200s within it pass;
	// HealthInterval is the pause between checks (default 250ms).
	HealthTimeout  time.Duration `json:"health_timeout"`
	HealthPasses   int           `json:"health_passes"`
	HealthInterval time.Duration `json:"health_interval"`
	// VerifyVersion makes the gate also require the artifact's version in the health response
	// body (the app reports its version in /healthz), so a host still running the old binary
	// never passes. Only used when the artifact has a Version.
	VerifyVersion bool `json:"verify_version"`

	// SkipHealthGate activates without the HTTP health gate (benchmarks, hosts without an
	// HTTP service). A restart that exits 0 then counts as healthy.
	SkipHealthGate bool `json:"skip_health_gate,omitempty"`

	// LoadBalancer names the LB the role is behind; empty: no LB steps.
	LoadBalancer string `json:"load_balancer,omitempty"`
	// DrainTimeout is the longest wait after deregistering, for in-flight requests; the wait
	// ends earlier once the LB reports the hosts out.
	DrainTimeout time.Duration `json:"drain_timeout"`

	// Staging is how the artifact reaches the hosts: StagingS3 (the default when Bucket is
	// set) puts it once in Bucket under StagePrefix and has every host fetch it with a
	// presigned URL valid PresignTTL, falling back to SSH per host when the fetch fails;
	// StagingSSH streams it to every host over SSH.
	Staging     string        `json:"staging,omitempty"`
	Bucket      string        `json:"bucket,omitempty"`
	StagePrefix string        `json:"stage_prefix,omitempty"`
	PresignTTL  time.Duration `json:"presign_ttl,omitempty"`

	// LockHost names the host holding the stack-wide lock (default: the first host by name).
	LockHost string `json:"lock_host,omitempty"`
	// StateDir is the local directory for run journals and the local audit log.
	StateDir string `json:"state_dir"`
	// AuditPath is the audit log on every host (default /var/log/instagram/deploy.jsonl).
	AuditPath string `json:"audit_path"`
	// Operator is who deploys, "user@host" (default: the local user and host name).
	Operator string `json:"operator"`
	// Message is the operator's note, recorded in the lock and the audit log.
	Message string `json:"message,omitempty"`

	// Canary, when set, judges the first batch of a deploy by its metrics against as many
	// hosts of the later batches (package canary); nil: health checks only.
	Canary *canary.Config `json:"canary,omitempty"`
}

// DefaultAuditPath is the audit log on every host.
const DefaultAuditPath = "/var/log/instagram/deploy.jsonl"

// ConfigFromStack takes the deploy settings of st. The service manager follows the provider:
// systemd on AWS, instactl-svc on the sandbox. stateDir holds journals and the local audit log.
func ConfigFromStack(st *stack.Stack, stateDir string) Config {
	sm := templates.ServiceManagerSystemd
	if st.Provider == "sandbox" {
		sm = templates.ServiceManagerSandbox
	}
	c := Config{
		Stack: st.Name, Role: st.Deploy.Role, Path: st.Deploy.Path, Service: st.Deploy.Service,
		ServiceManager: sm, KeepReleases: st.Deploy.KeepReleases, Batches: st.Deploy.Batches,
		MaxFail: st.Deploy.MaxFail, Parallel: st.Deploy.Parallel,
		HealthTimeout: st.Deploy.HealthTimeout, HealthPasses: st.Deploy.HealthPasses,
		StateDir: stateDir, Canary: canaryConfig(st.Deploy.Canary), Staging: st.Deploy.Staging,
		Bucket: templates.PhotoBucket(st),
	}
	if r := st.Role(st.Deploy.Role); r != nil {
		c.HealthPort = r.Port
	}
	if st.LoadBalancer.TargetRole == st.Deploy.Role {
		c.LoadBalancer = provision.LoadBalancerName(st.Name)
		c.HealthPath = st.LoadBalancer.HealthCheck
		c.DrainTimeout = st.LoadBalancer.DrainTimeout
		if st.LoadBalancer.TargetPort != 0 {
			c.HealthPort = st.LoadBalancer.TargetPort
		}
	}
	return c.withDefaults()
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Path, "/opt/instagram")
	def(&c.Binary, "instagram-app")
	def(&c.Service, "app")
	def(&c.HealthPath, "/healthz")
	def(&c.AuditPath, DefaultAuditPath)
	def(&c.MaxFail, "0")
	def(&c.StagePrefix, DefaultStagePrefix)
	if c.Staging == "" && c.Bucket != "" {
		c.Staging = StagingS3
	}
	def(&c.Staging, StagingSSH)
	if len(c.Batches) == 0 {
		c.Batches = []string{"1", "100%"}
	}
	if c.KeepReleases == 0 {
		c.KeepReleases = 5
	}
	if c.Parallel <= 0 {
		c.Parallel = 50
	}
	if c.HealthTimeout <= 0 {
		c.HealthTimeout = 30 * time.Second
	}
	if c.HealthPasses <= 0 {
		c.HealthPasses = 2
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 250 * time.Millisecond
	}
	if c.Operator == "" {
		c.Operator = localOperator()
	}
	return c
}

// validate checks what would otherwise fail halfway through a deploy.
func (c Config) validate() error {
	if !path.IsAbs(c.Path) || path.Clean(c.Path) != c.Path || c.Path == "/" {
		return fmt.Errorf("deploy path must be a clean absolute path other than / (got %q)", c.Path)
	}
	if err := checkID("binary name", c.Binary); err != nil {
		return err
	}
	if _, err := c.restartCommand(); err != nil {
		return err
	}
	if _, err := ParseBatches(c.Batches); err != nil {
		return err
	}
	if _, err := ParseMaxFail(c.MaxFail); err != nil {
		return err
	}
	if !c.SkipHealthGate && (c.HealthPort <= 0 || c.HealthPort > 65535) {
		return fmt.Errorf("health check port must be 1-65535 (got %d): set the role's port", c.HealthPort)
	}
	if c.Canary != nil {
		if err := c.Canary.Validate(); err != nil {
			return fmt.Errorf("canary analysis: %w", err)
		}
	}
	switch {
	case c.Staging != StagingS3 && c.Staging != StagingSSH:
		return fmt.Errorf("deploy staging must be %q or %q (got %q)", StagingS3, StagingSSH, c.Staging)
	case c.Staging == StagingS3 && c.Bucket == "":
		return fmt.Errorf("deploy staging %q needs a bucket; the stack has none: stage with %q", StagingS3, StagingSSH)
	}
	if c.StateDir == "" {
		return fmt.Errorf("a local state directory is required for run journals and the audit log")
	}
	return nil
}

func localOperator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	return name + "@" + host
}

// Host is one deploy target.
type Host struct {
	// Name labels the host ("app-0").
	Name string `json:"name"`
	// InstanceID is what the load balancer registers.
	InstanceID string `json:"instance_id,omitempty"`
	// Address and SSHPort are where SSH connects (0: the SSH config's default).
	Address string `json:"address"`
	SSHPort int    `json:"ssh_port,omitempty"`
	// HealthAddress is the address the health check reaches (default Address).
	HealthAddress string `json:"health_address,omitempty"`
}

// Target is the SSH target of the host.
func (h Host) Target() remote.Target {
	return remote.Target{Name: h.Name, Address: h.Address, Port: h.SSHPort}
}

// healthURL is the URL the gate checks.
func (h Host) healthURL(c Config) string {
	addr := h.HealthAddress
	if addr == "" {
		addr = h.Address
	}
	return "http://" + net.JoinHostPort(addr, strconv.Itoa(c.HealthPort)) + c.HealthPath
}

// HostsFromInstances picks the instances of role, ordered by index. Stopped instances are
// kept, so a deploy reports them failed instead of silently skipping them.
func HostsFromInstances(instances []cloud.Instance, role string) []Host {
	var sel []cloud.Instance
	for _, in := range instances {
		if in.Role == role && in.State != "terminated" && in.State != "shutting-down" {
			sel = append(sel, in)
		}
	}
	sort.Slice(sel, func(i, j int) bool { return sel[i].Index < sel[j].Index })
	out := make([]Host, 0, len(sel))
	for _, in := range sel {
		name := in.Name
		if name == "" {
			name = stack.HostName(in.Role, in.Index)
		}
		out = append(out, Host{Name: name, InstanceID: in.ID, Address: in.PublicAddress,
			SSHPort: in.SSHPort, HealthAddress: in.PrivateAddress})
	}
	return out
}

// stopCommand is the service manager's stop of Service; ok is false when Restart replaces the
// service manager (then instactl does not know how to stop the service).
func (c Config) stopCommand() (cmd remote.Command, ok bool) {
	if len(c.Restart) > 0 {
		return nil, false
	}
	argv := templates.StopCommand(c.ServiceManager, c.Service)
	return remote.Command(argv), argv != nil
}

// restartCommand is Restart, or the service manager's restart of Service.
func (c Config) restartCommand() (remote.Command, error) {
	if len(c.Restart) > 0 {
		return remote.Command(c.Restart), nil
	}
	return RestartCommand(c.ServiceManager, c.Service)
}
