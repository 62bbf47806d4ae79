package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/instactl/instactl/cloud"
)

func (p *Provider) hostDir(id string) string { return p.path("hosts", id) }

// hostFS is where host id's private directory for path m lives in the machine's namespace.
func (p *Provider) hostFS(id, m string) string { return filepath.Join(p.hostDir(id), "fs", m) }

// sshdPID returns the host's sshd listener PID if it is alive and really the host's, else 0.
func (p *Provider) sshdPID(in *instanceRec) int {
	if in.PID <= 0 || in.State == "terminated" {
		return 0
	}
	if !strings.Contains(cmdline(in.PID), "sshd") || !nsIsHost(in.PID, in.ID) {
		return 0
	}
	return in.PID
}

// mountsFor lists the private directories of a host, parents before children.
func (p *Provider) mountsFor(role string, tags map[string]string) ([]string, error) {
	set := map[string]bool{}
	for _, m := range FixedMounts {
		set[m] = true
	}
	for _, m := range p.cfg.DataMounts {
		set[m] = true
	}
	for _, m := range p.cfg.RoleMounts[role] {
		set[m] = true
	}
	if v := tags[TagMounts]; v != "" {
		for _, m := range strings.Split(v, ",") {
			m = strings.TrimSpace(m)
			if err := checkMount(m); err != nil {
				return nil, fmt.Errorf("tag %s: %w", TagMounts, err)
			}
			set[m] = true
		}
	}
	out := make([]string, 0, len(set))
	for m := range set {
		out = append(out, m)
	}
	sort.Strings(out)
	return out, nil
}

// CreateInstance starts a host: a new address, an ed25519 host key, and an sshd in a mount
// namespace of its own where the directories of mountsFor are private. It returns once sshd
// accepts connections and the host key is in KnownHostsPath. Non-empty UserData runs once, in the
// background, like cloud-init (see BootstrapStatus). Idempotent on ClientToken: the same token
// returns the instance created first, whatever its state now (as on AWS). SecurityGroupIDs must
// exist in the stack; they are recorded, not enforced.
func (p *Provider) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (cloud.Instance, error) {
	stack := spec.Tags[cloud.TagStack]
	if stack == "" {
		return cloud.Instance{}, fmt.Errorf("create instance: tags must carry %s", cloud.TagStack)
	}
	mounts, err := p.mountsFor(spec.Role, spec.Tags)
	if err != nil {
		return cloud.Instance{}, fmt.Errorf("create instance: %w", err)
	}
	var out cloud.Instance
	err = p.updateAlways(func(s *state) error {
		if spec.ClientToken != "" {
			for _, in := range s.Instances {
				if in.ClientToken == spec.ClientToken && in.Tags[cloud.TagStack] == stack {
					out = p.instanceView(in)
					return nil
				}
			}
		}
		if err := checkInstanceRefs(s, stack, spec); err != nil {
			return fmt.Errorf("create instance: %w", err)
		}
		in, err := p.newInstance(s, spec, mounts)
		if err != nil {
			return fmt.Errorf("create instance: %w", err)
		}
		if err := p.bootHost(s, in); err != nil {
			_ = killHost(in.ID, 0)
			_ = os.RemoveAll(p.hostDir(in.ID))
			return fmt.Errorf("create instance %s: %w", in.Name, err)
		}
		s.Instances = append(s.Instances, in)
		if in.HasUserData {
			if err := p.startBootstrap(in, spec.UserData); err != nil {
				return fmt.Errorf("create instance %s: %w", in.Name, err)
			}
		}
		out = p.instanceView(in)
		return nil
	})
	return out, err
}

func checkInstanceRefs(s *state, stack string, spec cloud.InstanceSpec) error {
	for _, id := range spec.SecurityGroupIDs {
		g, err := s.group(id)
		if err != nil {
			return err
		}
		if g.Tags[cloud.TagStack] != stack {
			return fmt.Errorf("security group %s belongs to stack %q, not %q", id, g.Tags[cloud.TagStack], stack)
		}
	}
	if spec.KeyName == "" {
		return nil
	}
	for _, k := range s.KeyPairs {
		if k.Name == spec.KeyName {
			return nil
		}
	}
	return fmt.Errorf("key pair %s: %w", spec.KeyName, cloud.ErrNotFound)
}

// newInstance allocates an address and id and writes the host directory: sshd_config, host key,
// authorized_keys, metadata and the private directories.
func (p *Provider) newInstance(s *state, spec cloud.InstanceSpec, mounts []string) (*instanceRec, error) {
	addr, err := p.allocateAddress(s, spec.Address)
	if err != nil {
		return nil, err
	}
	in := &instanceRec{
		Instance: cloud.Instance{
			ID: newID("i"), Name: spec.Name, Role: spec.Role, Index: spec.Index, Type: spec.Type,
			Image: spec.Image, Zone: spec.Zone, PrivateAddress: addr.String(), PublicAddress: addr.String(),
			SSHPort: p.cfg.SSHPort, State: "running",
			SecurityGroups: append([]string(nil), spec.SecurityGroupIDs...), Tags: copyTags(spec.Tags),
		},
		ClientToken: spec.ClientToken, KeyName: spec.KeyName, Mounts: mounts,
		HasUserData: spec.UserData != "",
	}
	if in.Name == "" {
		in.Name = fmt.Sprintf("%s-%d", spec.Role, spec.Index)
	}
	if in.Zone == "" {
		in.Zone = p.cfg.Zone
	}
	if in.Type == "" {
		in.Type = "sandbox"
	}
	for k, v := range map[string]string{cloud.TagName: in.Name, cloud.TagRole: in.Role, cloud.TagIndex: strconv.Itoa(in.Index)} {
		if _, ok := in.Tags[k]; !ok && v != "" {
			in.Tags[k] = v
		}
	}
	if err := p.writeHostDir(s, in); err != nil {
		_ = os.RemoveAll(p.hostDir(in.ID))
		return nil, err
	}
	return in, nil
}

// allocateAddress returns the requested address if it is free, or else the first AddressBase+n
// (n >= 1) that no live host of this sandbox has and whose SSH port nothing else on the machine
// listens on.
func (p *Provider) allocateAddress(s *state, want string) (netip.Addr, error) {
	used := map[string]bool{}
	for _, in := range s.Instances {
		if in.State != "terminated" {
			used[in.PrivateAddress] = true
		}
	}
	if want != "" {
		a, err := netip.ParseAddr(want)
		if err != nil || !a.Is4() || !a.IsLoopback() {
			return netip.Addr{}, fmt.Errorf("address %q: the sandbox only uses addresses in 127.0.0.0/8", want)
		}
		if used[a.String()] {
			return netip.Addr{}, fmt.Errorf("address %s is in use by another instance", a)
		}
		l, err := net.Listen("tcp", net.JoinHostPort(a.String(), strconv.Itoa(p.cfg.SSHPort)))
		if err != nil {
			return netip.Addr{}, fmt.Errorf("address %s: port %d is taken on the machine: %w", a, p.cfg.SSHPort, err)
		}
		l.Close()
		return a, nil
	}
	a := p.cfg.AddressBase
	for n := 1; n <= 1024; n++ {
		a = a.Next()
		if !a.IsValid() || !a.IsLoopback() {
			break
		}
		if used[a.String()] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(a.String(), strconv.Itoa(p.cfg.SSHPort)))
		if err != nil {
			continue // someone else's; skip it
		}
		l.Close()
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("no free loopback address after %s", p.cfg.AddressBase)
}

func (p *Provider) writeHostDir(s *state, in *instanceRec) error {
	dir := p.hostDir(in.ID)
	if err := os.MkdirAll(filepath.Join(dir, "meta"), 0o755); err != nil {
		return fmt.Errorf("create host directory: %w", err)
	}
	for _, m := range in.Mounts {
		if err := privateDir(p.hostFS(in.ID, m), m); err != nil {
			return err
		}
	}
	for _, d := range []string{"/var/lib/instagram", "/var/log/instagram"} {
		if err := os.MkdirAll(p.hostFS(in.ID, d), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	key, err := genKey(filepath.Join(dir, "ssh_host_ed25519_key"), in.Name)
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	in.hostKey = key
	auth, err := p.clientPublicKey()
	if err != nil {
		return err
	}
	for _, k := range s.KeyPairs {
		if k.Name == in.KeyName {
			auth += "\n" + k.PublicKey
		}
	}
	files := map[string]string{
		"sshd_config":     p.sshdConfig(in),
		"authorized_keys": auth + "\n",
		// An IMDS-like view of the instance for user-data and services: the host's own address
		// is not what `hostname -I` says on the sandbox.
		"meta/instance-id": in.ID, "meta/local-ipv4": in.PrivateAddress, "meta/name": in.Name,
		"meta/role": in.Role, "meta/index": strconv.Itoa(in.Index), "meta/zone": in.Zone,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.TrimSuffix(content, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// privateDir creates a host's copy of machine directory m, owned and moded like the machine's
// (so /var/lib/postgresql stays postgres's, /tmp stays 1777).
func privateDir(path, m string) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("create private %s: %w", m, err)
	}
	fi, err := os.Stat(m)
	if err != nil {
		return nil // created later as a mount point; root 0755 is right
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown private %s: %w", m, err)
	}
	if err := os.Chmod(path, fi.Mode()&(fs.ModePerm|fs.ModeSticky|fs.ModeSetgid)); err != nil {
		return fmt.Errorf("chmod private %s: %w", m, err)
	}
	return nil
}

// sshdConfig renders the host's sshd_config. Paths are as the host sees them: its directory is
// bind-mounted at /run/instactl/host, because Dir itself may be hidden inside the host (a Dir
// under /tmp is, once the host's private /tmp is mounted). For the same reason
// AuthorizedKeysFile is the host's copy of Dir/keys/id_ed25519.pub (plus its key pair's key).
func (p *Provider) sshdConfig(in *instanceRec) string {
	return fmt.Sprintf(`# instactl sandbox host %s (%s)
ListenAddress %s
AddressFamily inet
HostKey %[4]s/ssh_host_ed25519_key
PidFile %[4]s/sshd.pid
AuthorizedKeysFile %[4]s/authorized_keys
# the host directory may live under a world-writable /tmp
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
MaxStartups 100:30:200
MaxSessions 100
LoginGraceTime 60
X11Forwarding no
PrintMotd no
PrintLastLog no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel INFO
`, in.ID, in.Name, net.JoinHostPort(in.PrivateAddress, strconv.Itoa(in.SSHPort)), hostMarker)
}

// ensureMountPoints creates missing mount points on the machine's root filesystem (bind mounts
// need an existing target) and records them so Down can remove them.
func ensureMountPoints(s *state, mounts []string) error {
	for _, m := range mounts {
		var missing []string
		for d := m; d != "/"; d = filepath.Dir(d) {
			fi, err := os.Stat(d)
			if err == nil {
				if !fi.IsDir() {
					return fmt.Errorf("mount point %s exists and is not a directory", d)
				}
				break
			}
			missing = append([]string{d}, missing...)
		}
		for _, d := range missing {
			if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("create mount point %s: %w", d, err)
			}
			s.CreatedDirs = append(s.CreatedDirs, d)
		}
	}
	return nil
}

// prologue runs as the first process of a host's new mount namespace and becomes its sshd: a
// private tmpfs on /run (sshd needs /run/sshd; postgres its socket directory), the host directory
// at /run/instactl/host, then every private directory bind-mounted over the machine's.
const prologue = `set -eu
hostdir=$1; shift
mount -t tmpfs -o mode=0755,size=64m instactl-run /run
mkdir -p /run/sshd /run/lock /run/instactl/host /run/instactl/dev /run/postgresql /run/redis
chmod 1777 /run/lock
mount --bind "$hostdir" /run/instactl/host
if id postgres >/dev/null 2>&1; then chown postgres:postgres /run/postgresql; chmod 2775 /run/postgresql; fi
if id redis >/dev/null 2>&1; then chown redis:redis /run/redis; fi
for m in "$@"; do mount --bind "/run/instactl/host/fs$m" "$m"; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec /usr/sbin/sshd -D -f /run/instactl/host/sshd_config -E /run/instactl/host/sshd.log
`

// bootHost starts the host's sshd (detached: it outlives instactl), waits until it accepts
// connections, and records its host key in known_hosts.
func (p *Provider) bootHost(s *state, in *instanceRec) error {
	if err := ensureMountPoints(s, in.Mounts); err != nil {
		return err
	}
	dir := p.hostDir(in.ID)
	_ = os.Remove(filepath.Join(dir, "sshd.pid"))
	args := append([]string{"--mount", "--propagation", "private", "/bin/sh", "-c", prologue, "sh", dir}, in.Mounts...)
	cmd := exec.Command("unshare", args...)
	done, err := startDetached(cmd, filepath.Join(dir, "console.log"))
	if err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	// unshare and sh exec, so the process started is the sshd listener.
	in.PID = cmd.Process.Pid
	addr := net.JoinHostPort(in.PrivateAddress, strconv.Itoa(in.SSHPort))
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			return fmt.Errorf("sshd exited during start: %s %s", tail(filepath.Join(dir, "console.log"), 800), tail(filepath.Join(dir, "sshd.log"), 800))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd not listening on %s after 15s: %s", addr, tail(filepath.Join(dir, "sshd.log"), 800))
		}
		time.Sleep(20 * time.Millisecond)
	}
	key := in.hostKey
	if key == nil {
		b, err := os.ReadFile(filepath.Join(dir, "ssh_host_ed25519_key.pub"))
		if err != nil {
			return fmt.Errorf("read host key: %w", err)
		}
		if key, _, _, _, err = ssh.ParseAuthorizedKey(b); err != nil {
			return fmt.Errorf("parse host key: %w", err)
		}
	}
	return p.setKnownHost(in.PrivateAddress, key)
}

// TerminateInstances kills each host's sshd and every process in its mount namespace (nothing
// else: the namespace is recognized by its mounts, see hostMarker), detaches the loop devices of
// its volumes (they become available, like EBS volumes with DeleteOnTermination=false),
// deregisters it from load balancers, removes its known_hosts line and its private directories.
// Terminating a terminated instance succeeds.
func (p *Provider) TerminateInstances(ctx context.Context, ids []string) error {
	return p.updateAlways(func(s *state) error {
		var recs []*instanceRec
		for _, id := range ids {
			in, err := s.instance(id)
			if err != nil {
				return fmt.Errorf("terminate: %w", err)
			}
			if _, err := stackOf("instance", id, in.Tags); err != nil {
				return fmt.Errorf("terminate: %w", err)
			}
			recs = append(recs, in)
		}
		lbChanged := false
		var errs []error
		for _, in := range recs {
			if in.State == "terminated" {
				continue
			}
			changed, err := p.terminate(s, in)
			if err != nil {
				errs = append(errs, fmt.Errorf("terminate %s: %w", in.ID, err))
			}
			lbChanged = lbChanged || changed
		}
		if lbChanged {
			errs = append(errs, p.applyNginx(s))
		}
		return errors.Join(errs...)
	})
}

// terminate ends one host; it reports whether a load balancer lost the instance.
func (p *Provider) terminate(s *state, in *instanceRec) (bool, error) {
	p.thawVolumes(s, in)
	if err := killHost(in.ID, p.sshdPID(in)); err != nil {
		return false, err
	}
	in.State, in.PID = "terminated", 0
	var errs []error
	for _, v := range s.Volumes {
		if v.InstanceID == in.ID {
			if err := p.releaseLoop(v); err != nil {
				errs = append(errs, fmt.Errorf("volume %s: %w", v.ID, err))
				continue // still attached: the record says so, and Down retries
			}
			v.State, v.InstanceID, v.Device, v.Loop = "available", "", "", ""
		}
	}
	lbChanged := false
	for _, l := range s.LoadBalancers {
		if n := len(l.Instances); n != len(removeID(l.Instances, in.ID)) {
			l.Instances = removeID(l.Instances, in.ID)
			lbChanged = true
		}
	}
	if err := p.setKnownHost(in.PrivateAddress, nil); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(p.hostDir(in.ID)); err != nil {
		errs = append(errs, fmt.Errorf("remove host directory: %w", err))
	}
	return lbChanged, errors.Join(errs...)
}

func removeID(ids []string, id string) []string {
	var out []string
	for _, x := range ids {
		if x != id {
			out = append(out, x)
		}
	}
	return out
}

// HostPath returns the path, as seen from the machine, of path inside a running host's private
// file system (/proc/PID/root/PATH): the way to read and write a host's files without SSH.
func (p *Provider) HostPath(ctx context.Context, instanceID, path string) (string, error) {
	var pid int
	err := p.view(func(s *state) error {
		in, err := s.instance(instanceID)
		if err != nil {
			return err
		}
		if pid = p.sshdPID(in); pid == 0 {
			return fmt.Errorf("instance %s is not running", instanceID)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return filepath.Join("/proc", strconv.Itoa(pid), "root", path), nil
}

// thawVolumes unfreezes every file system of the host's volumes before its processes are
// killed: a process blocked on a frozen file system cannot die, and a host torn down mid-backup
// (its guardian gone with it) would otherwise leave unkillable processes and a busy loop device.
// Thawing a file system that is not frozen fails harmlessly.
func (p *Provider) thawVolumes(s *state, in *instanceRec) {
	pid := p.sshdPID(in)
	if pid == 0 {
		return
	}
	for _, v := range s.Volumes {
		if v.InstanceID != in.ID || v.Loop == "" {
			continue
		}
		if mp := mountedAt(pid, v.Loop); mp != "" {
			_, _ = run("nsenter", "--target", strconv.Itoa(pid), "--mount", "--", "xfs_freeze", "-u", mp)
		}
	}
}
