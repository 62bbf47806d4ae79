package sandbox

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/instactl/instactl/cloud"
)

// Defaults for Config fields left zero.
var (
	// DefaultAddressBase is the CLI's base: host n listens on 127.0.10.n.
	DefaultAddressBase = netip.MustParseAddr("127.0.10.0")
	// DefaultLBAddress is where nginx listens.
	DefaultLBAddress = netip.MustParseAddr("127.0.0.1")
	// DefaultDataMounts are private directories every host gets besides the fixed set
	// (FixedMounts): the data directories of the stack's databases.
	DefaultDataMounts = []string{"/var/lib/postgresql", "/var/lib/redis"}
	// FixedMounts are the directories every host has its own copy of. /root is private because
	// this machine's /root/.bashrc starts pyenv (slow, and parallel sessions race); /run is a
	// private tmpfs (not listed: it is mounted first).
	FixedMounts = []string{"/opt/instagram", "/etc/instagram", "/var/lib/instagram", "/var/log/instagram", "/root", "/tmp"}
)

const (
	// DefaultSSHPort is the port every host's sshd listens on, on its own address.
	DefaultSSHPort = 2222
	// DefaultVolumeSizeMiB is the size of every volume image. mkfs.xfs 6.x refuses file systems
	// under 300 MB, so 256 would not format; images are sparse, so 512 costs only what is written.
	DefaultVolumeSizeMiB = 512
	// DefaultLBPort is the port of the first load balancer; later ones take the next free ports.
	DefaultLBPort = 18080
	// DefaultRegion and DefaultZone name the sandbox's only region and its default zone.
	DefaultRegion = "sandbox-1"
	DefaultZone   = "sandbox-1a"
)

// Config says where and how the sandbox cloud runs.
type Config struct {
	// Dir holds all state: state.json (under a flock on state.lock), keys/, known_hosts,
	// ssh_config, hosts/ID/ (sshd config, host key, logs, fs/ with the private directories),
	// volumes/, snapshots/, nginx/. It must not be under /run (each host mounts a tmpfs there).
	Dir string
	// Region and Zone are recorded on resources; Zone is the default for instances and volumes.
	Region, Zone string
	// AddressBase: host n (n >= 1, first free) gets AddressBase+n. Must be in 127.0.0.0/8.
	AddressBase netip.Addr
	// SSHPort is the port each host's sshd listens on, on the host's address (default 2222).
	SSHPort int
	// VolumeSizeMiB is the size of every volume image, whatever size is asked (default 512).
	VolumeSizeMiB int
	// LBAddress and LBPort are where nginx listens for the first load balancer (default
	// 127.0.0.1:18080).
	LBAddress netip.Addr
	LBPort    int
	// DataMounts are extra private directories on every host (default DefaultDataMounts).
	DataMounts []string
	// RoleMounts adds private directories per role, such as a role's volume mount point. A host
	// also gets the paths listed, comma-separated, in its TagMounts tag.
	RoleMounts map[string][]string
}

// TagMounts is an optional instance tag: comma-separated absolute paths the host gets private
// directories for, in addition to FixedMounts, Config.DataMounts and Config.RoleMounts.
const TagMounts = "instactl:sandbox-mounts"

// Provider is the sandbox cloud. It is safe for concurrent use, also by several processes
// sharing Dir.
type Provider struct {
	cfg Config
	mu  sync.Mutex
}

var _ cloud.Provider = (*Provider)(nil)

// New checks cfg, fills defaults, and prepares Dir (the client key is generated once).
func New(cfg Config) (*Provider, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	p := &Provider{cfg: cfg}
	for _, d := range []string{cfg.Dir, p.path("keys"), p.path("hosts"), p.path("volumes"), p.path("snapshots"), p.path("nginx")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create sandbox directory: %w", err)
		}
	}
	// Loop devices report their backing file by its real path: compare against that.
	real, err := filepath.EvalSymlinks(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolve sandbox directory: %w", err)
	}
	if err := checkDir(real); err != nil {
		return nil, err
	}
	p.cfg.Dir = real
	// Under the state lock: several processes may open a fresh Dir at once, and must all end up
	// with the same client key.
	err = p.view(func(*state) error {
		if err := p.ensureClientKey(); err != nil {
			return err
		}
		return p.writeSSHConfig()
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (c *Config) fill() error {
	if c.Dir == "" {
		return fmt.Errorf("sandbox config: dir is required")
	}
	abs, err := filepath.Abs(c.Dir)
	if err != nil {
		return fmt.Errorf("sandbox config: dir: %w", err)
	}
	c.Dir = abs
	if err := checkDir(abs); err != nil {
		return err
	}
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if c.Zone == "" {
		c.Zone = DefaultZone
	}
	if !c.AddressBase.IsValid() {
		c.AddressBase = DefaultAddressBase
	}
	if !c.LBAddress.IsValid() {
		c.LBAddress = DefaultLBAddress
	}
	for _, a := range []netip.Addr{c.AddressBase, c.LBAddress} {
		if !a.Is4() || !a.IsLoopback() {
			return fmt.Errorf("sandbox config: address %s is not in 127.0.0.0/8; the sandbox only uses loopback addresses", a)
		}
	}
	if c.SSHPort == 0 {
		c.SSHPort = DefaultSSHPort
	}
	if c.VolumeSizeMiB == 0 {
		c.VolumeSizeMiB = DefaultVolumeSizeMiB
	}
	if c.LBPort == 0 {
		c.LBPort = DefaultLBPort
	}
	if c.DataMounts == nil {
		c.DataMounts = DefaultDataMounts
	}
	for _, m := range c.DataMounts {
		if err := checkMount(m); err != nil {
			return fmt.Errorf("sandbox config: data mounts: %w", err)
		}
	}
	for role, ms := range c.RoleMounts {
		for _, m := range ms {
			if err := checkMount(m); err != nil {
				return fmt.Errorf("sandbox config: role %s mounts: %w", role, err)
			}
		}
	}
	return nil
}

// checkDir refuses a Dir that hosts could not see: every host mounts a tmpfs on /run before it
// bind-mounts its directory from Dir.
func checkDir(dir string) error {
	for _, bad := range []string{"/run", "/proc", "/sys", "/dev"} {
		if dir == "/" || dir == bad || strings.HasPrefix(dir, bad+"/") {
			return fmt.Errorf("sandbox config: dir %s is not usable (every host mounts a private tmpfs on /run); choose a directory elsewhere, such as /var/lib/instactl/sandbox", dir)
		}
	}
	return nil
}

// checkMount refuses paths that cannot be a private directory of a host: the machine's own
// system directories, and anything under /run (a tmpfs of its own on every host).
func checkMount(m string) error {
	if !filepath.IsAbs(m) || filepath.Clean(m) != m {
		return fmt.Errorf("mount point %q must be a clean absolute path", m)
	}
	for _, whole := range []string{"/", "/etc", "/var", "/var/lib", "/var/log", "/opt", "/home", "/srv"} {
		if m == whole {
			return fmt.Errorf("mount point %q would hide the machine's %s", m, whole)
		}
	}
	for _, tree := range []string{"/run", "/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot"} {
		if m == tree || strings.HasPrefix(m, tree+"/") {
			return fmt.Errorf("mount point %q would hide part of the machine's %s", m, tree)
		}
	}
	return nil
}

func (p *Provider) path(elem ...string) string {
	return filepath.Join(append([]string{p.cfg.Dir}, elem...)...)
}

// Name is "sandbox".
func (p *Provider) Name() string { return "sandbox" }

// Dir is the directory holding all sandbox state.
func (p *Provider) Dir() string { return p.cfg.Dir }

// Config returns the configuration with defaults filled in.
func (p *Provider) Config() Config { return p.cfg }

// KeyPath is the client private key (OpenSSH format) every host accepts for root.
func (p *Provider) KeyPath() string { return p.path("keys", "id_ed25519") }

// KnownHostsPath is the known_hosts file listing every live host as "[addr]:port ssh-ed25519 KEY".
func (p *Provider) KnownHostsPath() string { return p.path("known_hosts") }

// SSHConfigPath is an OpenSSH client config (`ssh -F PATH 127.0.10.1`) with strict host key
// checking against KnownHostsPath and the client key.
func (p *Provider) SSHConfigPath() string { return p.path("ssh_config") }

// Describe returns every live resource tagged with stack. A host stopped by StopInstances is
// "stopped"; so is a host recorded running whose sshd is gone (the machine rebooted, or the
// processes were killed), which StartStopped brings back.
func (p *Provider) Describe(ctx context.Context, stack string) (*cloud.Resources, error) {
	res := &cloud.Resources{}
	err := p.view(func(s *state) error {
		for _, in := range s.Instances {
			if in.State == "terminated" || in.Tags[cloud.TagStack] != stack {
				continue
			}
			res.Instances = append(res.Instances, p.instanceView(in))
		}
		for _, v := range s.Volumes {
			if v.Tags[cloud.TagStack] == stack {
				vv := v.Volume
				vv.Tags = copyTags(v.Tags)
				res.Volumes = append(res.Volumes, vv)
			}
		}
		for _, g := range s.SecurityGroups {
			if g.Tags[cloud.TagStack] == stack {
				gg := *g
				gg.Ingress = append([]cloud.Rule(nil), g.Ingress...)
				gg.Tags = copyTags(g.Tags)
				res.SecurityGroups = append(res.SecurityGroups, gg)
			}
		}
		for _, l := range s.LoadBalancers {
			if l.Tags[cloud.TagStack] == stack {
				res.LoadBalancers = append(res.LoadBalancers, p.lbView(l))
			}
		}
		for _, k := range s.KeyPairs {
			if k.Stack == stack {
				res.KeyPairs = append(res.KeyPairs, k.Name)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(res.Instances, func(i, j int) bool {
		a, b := res.Instances[i], res.Instances[j]
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		return a.Index < b.Index
	})
	return res, nil
}

// instanceView is what callers see of a host, with its live state.
func (p *Provider) instanceView(in *instanceRec) cloud.Instance {
	out := in.Instance
	out.Tags = copyTags(in.Tags)
	out.SecurityGroups = append([]string(nil), in.SecurityGroups...)
	if out.State == "running" && p.sshdPID(in) == 0 {
		out.State = "stopped"
	}
	return out
}

// EnsureKeyPair records a public key under name, for stack. The sandbox adds it to the authorized
// keys of hosts created with that KeyName (besides the sandbox's own client key). Names are
// global, as on AWS: a different key, or another stack's key pair, under an existing name is an
// error.
func (p *Provider) EnsureKeyPair(ctx context.Context, stack, name, publicKey string) error {
	if name == "" || stack == "" {
		return fmt.Errorf("ensure key pair: stack and name are required")
	}
	publicKey = strings.TrimSpace(publicKey)
	if len(strings.Fields(publicKey)) < 2 {
		return fmt.Errorf("ensure key pair %s: public key must be in authorized_keys format (\"ssh-ed25519 AAAA...\")", name)
	}
	return p.update(func(s *state) error {
		for _, k := range s.KeyPairs {
			if k.Name != name {
				continue
			}
			if k.Stack != stack {
				return fmt.Errorf("ensure key pair: %s belongs to stack %q, not %q", name, k.Stack, stack)
			}
			if !sameKey(k.PublicKey, publicKey) {
				return fmt.Errorf("key pair %s already exists with a different public key; delete it first", name)
			}
			return nil
		}
		s.KeyPairs = append(s.KeyPairs, keyPair{Name: name, Stack: stack, PublicKey: publicKey})
		return nil
	})
}

// sameKey compares the type and key fields of two authorized_keys lines, ignoring comments.
func sameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}

// DeleteKeyPair forgets a key pair; deleting a missing one succeeds, as on AWS.
func (p *Provider) DeleteKeyPair(ctx context.Context, name string) error {
	return p.update(func(s *state) error {
		out := s.KeyPairs[:0]
		for _, k := range s.KeyPairs {
			if k.Name != name {
				out = append(out, k)
			}
		}
		s.KeyPairs = out
		return nil
	})
}
