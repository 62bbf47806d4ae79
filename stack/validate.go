package stack

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// validator checks a decoded, defaulted stack and records errors at the position of the key
// they are about (or the nearest written parent, for defaults that conflict).
type validator struct {
	d    *decoder
	st   *Stack
	skip map[string]bool
}

func (v *validator) errorf(keyPath, format string, args ...any) {
	// Nothing more is said about a key whose value (or whose parent's) could not be read.
	for probe := keyPath; probe != ""; {
		if v.skip[probe] {
			return
		}
		i := strings.LastIndexAny(probe, ".[")
		if i < 0 {
			break
		}
		probe = probe[:i]
	}
	p := locate(v.d.pos, keyPath)
	v.d.errorf(&yaml.Node{Line: p.Line, Column: p.Column}, keyPath, format, args...)
}

var (
	nameRe         = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)
	instanceTypeRe = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9-]+$`)
	batchRe        = regexp.MustCompile(`^([0-9]+)(%?)$`)
	replicaRole    = map[string]bool{"pg": true, "redis": true}
	// dataMounts are the roles whose services keep data on the role's volumes, with the
	// conventional mount point.
	dataMounts = map[string]string{"pg": "/var/lib/postgresql", "redis": "/var/lib/redis"}
)

func (v *validator) validate() {
	s := v.st
	if s.Name == "" {
		v.errorf("name", "is required: a short name such as \"instagram\" that tags every resource")
	} else if !nameRe.MatchString(s.Name) {
		v.errorf("name", "must be lowercase letters, digits and dashes, starting with a letter, at most 31 characters (got %q)", s.Name)
	}
	switch s.Provider {
	case "sandbox":
	case "aws":
		if !strings.HasPrefix(s.Image, "ami-") {
			v.errorf("image", "provider aws needs an AMI id such as ami-0abcdef1234567890 (got %q)", s.Image)
		}
	default:
		v.errorf("provider", "must be \"aws\" or \"sandbox\" (got %q)", s.Provider)
	}
	if !strings.HasPrefix(s.Zone, s.Region) {
		v.errorf("zone", "must be in region %s, e.g. %sa (got %q)", s.Region, s.Region, s.Zone)
	}
	v.fallbacks("zones", s.Zones, func(z string) string {
		if !strings.HasPrefix(z, s.Region) || len(z) <= len(s.Region) {
			return fmt.Sprintf("must be a zone of region %s, e.g. %sb (got %q)", s.Region, s.Region, z)
		}
		return ""
	})
	if s.SSH.Port < 1 || s.SSH.Port > 65535 {
		v.errorf("ssh.port", "must be a TCP port 1-65535 (got %d)", s.SSH.Port)
	}
	if _, err := parseCIDR(s.SSH.AdminCIDR); err != nil {
		v.errorf("ssh.admin_cidr", "must be a CIDR such as 203.0.113.0/24 (got %q)", s.SSH.AdminCIDR)
	}
	v.roles()
	v.loadBalancer()
	v.deploy()
	v.shards()
	v.backup()
	v.dns()
	if s.Provider == "sandbox" {
		v.sandbox()
	}
}

// MaxHosts bounds the hosts of one stack (and of one role): instactl is built for ~100, and a
// bound keeps a typo such as count: 1000000000 from costing unbounded memory.
const MaxHosts = 1000

func (v *validator) roles() {
	s := v.st
	if len(s.Roles) == 0 {
		v.errorf("roles", "declare at least one role, for example app: {count: 2}")
	}
	total := 0
	for _, r := range s.Roles {
		if r.Count > 0 && r.Count <= MaxHosts {
			total += r.Count
		}
	}
	if total > MaxHosts {
		v.errorf("roles", "declares %d hosts; a stack holds at most %d", total, MaxHosts)
	} else if a := s.Network.AddressBase; a.Is4() && total > 0 {
		last := a
		for i := 1; i < total && last.IsValid(); i++ {
			last = last.Next()
		}
		if !last.IsValid() || s.Provider == "sandbox" && last.As4()[0] != 127 {
			v.errorf("network.address_base", "the %d hosts from %s run past the end of the address range; choose a lower base", total, a)
		}
	}
	for _, r := range s.Roles {
		p := "roles." + r.Name
		if !nameRe.MatchString(r.Name) {
			v.errorf(p+".name", "role names are lowercase letters, digits and dashes (got %q)", r.Name)
		}
		if r.Count < 1 {
			v.errorf(p+".count", "must be >= 1 (got %d)", r.Count)
		} else if r.Count > MaxHosts {
			v.errorf(p+".count", "must be at most %d, the most hosts a stack holds (got %d)", MaxHosts, r.Count)
		}
		v.fallbacks(p+".instance_types", r.InstanceTypes, func(t string) string {
			if !instanceTypeRe.MatchString(t) {
				return fmt.Sprintf("must be an EC2 instance type such as m5.large (got %q)", t)
			}
			return ""
		})
		if r.Name == MonitorRole && r.Count > 1 {
			v.errorf(p+".count", "must be 1: one host runs Prometheus, Alertmanager and blackbox_exporter (got %d)", r.Count)
		}
		if r.Port < 0 || r.Port > 65535 {
			v.errorf(p+".port", "must be a TCP port 1-65535 (got %d)", r.Port)
		}
		if r.Replicas < 0 {
			v.errorf(p+".replicas", "must be >= 0 (got %d)", r.Replicas)
		} else if r.Replicas > 0 && !replicaRole[r.Name] {
			v.errorf(p+".replicas", "only pg and redis roles have replicas")
		} else if r.Count > 0 && r.Count%(r.Replicas+1) != 0 {
			v.errorf(p+".count", "must be a multiple of replicas+1 = %d, so every primary has its replicas (got %d)", r.Replicas+1, r.Count)
		}
		vs := r.Volumes
		if mount, ok := dataMounts[r.Name]; ok && vs.Count == 0 {
			v.errorf(p+".volumes", "role %s keeps its data on volumes (snapshots back it up); add volumes: {count: 1, size_gib: 10, mount: %s}", r.Name, mount)
		}
		if vs.Count < 0 || vs.Count > 8 {
			v.errorf(p+".volumes.count", "must be 0-8 (got %d)", vs.Count)
		}
		if vs.Count > 0 {
			if vs.SizeGiB < 1 || vs.SizeGiB > 16384 {
				v.errorf(p+".volumes.size_gib", "must be 1-16384 (got %d)", vs.SizeGiB)
			}
			if vs.Filesystem != "xfs" {
				v.errorf(p+".volumes.filesystem", "only xfs is supported (xfs_freeze makes snapshots consistent) (got %q)", vs.Filesystem)
			}
			if !path.IsAbs(vs.Mount) || path.Clean(vs.Mount) == "/" {
				v.errorf(p+".volumes.mount", "must be an absolute directory other than / such as /var/lib/postgresql (got %q)", vs.Mount)
			}
			switch vs.Type {
			case "gp2", "gp3", "io1", "io2", "st1", "sc1", "standard":
			default:
				v.errorf(p+".volumes.type", "must be an EBS volume type: gp3, gp2, io1, io2, st1, sc1 or standard (got %q)", vs.Type)
			}
			if v.st.Provider == "sandbox" && vs.Count > 1 {
				v.errorf(p+".volumes.count", "the sandbox has no md RAID: use count 1 (got %d)", vs.Count)
			}
		}
	}
}

func (v *validator) loadBalancer() {
	lb := v.st.LoadBalancer
	known := v.st.Role(lb.TargetRole) != nil
	if !known {
		v.errorf("load_balancer.target_role", "names no role; declared roles: %s", v.roleNames())
	}
	if lb.ListenerPort < 1 || lb.ListenerPort > 65535 {
		v.errorf("load_balancer.listener_port", "must be a TCP port 1-65535 (got %d)", lb.ListenerPort)
	}
	// target_port defaults from the target role: with no such role, one error is enough.
	if _, written := v.d.pos["load_balancer.target_port"]; (known || written) && (lb.TargetPort < 1 || lb.TargetPort > 65535) {
		v.errorf("load_balancer.target_port", "must be a TCP port 1-65535 (got %d)", lb.TargetPort)
	}
	if !strings.HasPrefix(lb.HealthCheck, "/") {
		v.errorf("load_balancer.health_check", "must be an HTTP path starting with / (got %q)", lb.HealthCheck)
	}
	if lb.DrainTimeout < 0 {
		v.errorf("load_balancer.drain_timeout", "must not be negative")
	}
}

func (v *validator) deploy() {
	dp := v.st.Deploy
	if v.st.Role(dp.Role) == nil {
		v.errorf("deploy.role", "names no role; declared roles: %s", v.roleNames())
	}
	if !path.IsAbs(dp.Path) {
		v.errorf("deploy.path", "must be an absolute path such as /opt/instagram (got %q)", dp.Path)
	}
	if dp.KeepReleases < 2 {
		v.errorf("deploy.keep_releases", "must be >= 2 so a rollback target is always kept (got %d)", dp.KeepReleases)
	}
	for i, b := range dp.Batches {
		if _, _, err := ParseCount(b); err != nil {
			v.errorf(fmt.Sprintf("deploy.batches[%d]", i), "%v", err)
		}
	}
	if _, _, err := ParseCount(dp.MaxFail); err != nil && dp.MaxFail != "0" {
		v.errorf("deploy.max_fail", "%v", err)
	}
	if dp.HealthTimeout <= 0 {
		v.errorf("deploy.health_timeout", "must be positive such as 30s")
	}
	if dp.HealthPasses < 1 || dp.HealthPasses > 100 {
		v.errorf("deploy.health_passes", "must be 1-100 (got %d)", dp.HealthPasses)
	}
	if dp.Parallel < 1 || dp.Parallel > MaxHosts {
		v.errorf("deploy.parallel", "must be 1-%d (got %d)", MaxHosts, dp.Parallel)
	}
	if dp.Staging != "" && dp.Staging != "s3" && dp.Staging != "ssh" {
		v.errorf("deploy.staging", "must be s3 or ssh (got %q)", dp.Staging)
	}
	if p := dp.Persist(); p < 0 || p > time.Hour {
		v.errorf("deploy.ssh_persist", "must be 0s (off) to 1h, such as 5m (got %s)", p)
	}
	v.canary()
}

// ParseCount parses a host count "N" or a percentage "N%" as used by batches and max_fail.
func ParseCount(s string) (n int, percent bool, err error) {
	m := batchRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, false, fmt.Errorf("expected a host count such as 1 or a percentage such as 25%% (got %q)", s)
	}
	n, _ = strconv.Atoi(m[1])
	percent = m[2] == "%"
	if percent && (n < 1 || n > 100) {
		return 0, false, fmt.Errorf("a percentage must be 1%%-100%% (got %q)", s)
	}
	if !percent && n < 0 {
		return 0, false, fmt.Errorf("a count must be >= 0 (got %q)", s)
	}
	return n, percent, nil
}

func (v *validator) shards() {
	sh := v.st.Shards
	if sh.Logical < 1 || sh.Logical > 8192 {
		v.errorf("shards.logical", "must be 1-8192: ids hold 13 bits of shard id (got %d)", sh.Logical)
	}
	r := v.st.Role(sh.Role)
	if r == nil {
		if v.st.Role("pg") != nil || sh.Role != "pg" {
			v.errorf("shards.role", "names no role; declared roles: %s", v.roleNames())
		}
		return
	}
	if sh.Logical < r.Nodes() {
		v.errorf("shards.logical", "must be at least the number of physical nodes (%d)", r.Nodes())
	}
	ident := regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	if !ident.MatchString(sh.Database) {
		v.errorf("shards.database", "must be a plain lowercase SQL identifier (got %q)", sh.Database)
	}
	if !ident.MatchString(sh.ControlDatabase) {
		v.errorf("shards.control_database", "must be a plain lowercase SQL identifier (got %q)", sh.ControlDatabase)
	}
}

func (v *validator) backup() {
	b := v.st.Backup
	for i, t := range b.Targets {
		r := v.st.Role(t)
		switch {
		case r == nil:
			v.errorf(fmt.Sprintf("backup.targets[%d]", i), "names no role; declared roles: %s", v.roleNames())
		case r.Volumes.Count == 0:
			v.errorf(fmt.Sprintf("backup.targets[%d]", i), "role %s has no data volumes to snapshot; add roles.%s.volumes", t, t)
		case r.Replicas == 0:
			v.errorf(fmt.Sprintf("backup.targets[%d]", i), "role %s has no replica: backups are taken from replicas so the primary never freezes; set roles.%s.replicas: 1", t, t)
		}
	}
	rt := b.Retention
	for name, n := range map[string]int{"hourly": rt.Hourly, "daily": rt.Daily, "weekly": rt.Weekly, "monthly": rt.Monthly, "min_verified": rt.MinVerified} {
		if n < 0 {
			v.errorf("backup.retention."+name, "must be >= 0 (got %d)", n)
		}
	}
	if b.MaxLagBytes < 0 {
		v.errorf("backup.max_lag_bytes", "must be >= 0 (got %d)", b.MaxLagBytes)
	}
	if b.FreezeBudget <= 0 {
		v.errorf("backup.freeze_budget", "must be positive such as 30s")
	}
	if t := b.ArchiveTimeout; t < time.Second || t > time.Hour || t%time.Second != 0 {
		v.errorf("backup.archive_timeout", "must be whole seconds from 1s to 1h, such as 60s: it bounds how long a committed write waits to be archived (got %s)", t)
	}
	if b.WALArchive && v.st.Role("pg") == nil {
		v.errorf("backup.wal_archive", "needs a pg role to archive; declared roles: %s", v.roleNames())
	}
}

func (v *validator) sandbox() {
	sb := v.st.Sandbox
	if !path.IsAbs(sb.Dir) {
		v.errorf("sandbox.dir", "must be an absolute path (got %q)", sb.Dir)
	}
	if a := v.st.Network.AddressBase; !a.Is4() || a.As4()[0] != 127 {
		v.errorf("network.address_base", "the sandbox needs a loopback address in 127.0.0.0/8 such as 127.0.10.1 (got %s)", a)
	}
	if sb.VolumeSizeMiB < 300 || sb.VolumeSizeMiB > 1<<20 {
		v.errorf("sandbox.volume_size_mib", "must be 300-1048576: XFS needs 300 MiB, and 1 TiB is plenty (got %d)", sb.VolumeSizeMiB)
	}
	for key, port := range map[string]int{"sandbox.lb_port": sb.LBPort, "sandbox.moto_port": sb.MotoPort} {
		if port < 1 || port > 65535 {
			v.errorf(key, "must be a TCP port 1-65535 (got %d)", port)
		}
	}
}

func (v *validator) roleNames() string {
	var names []string
	for _, r := range v.st.Roles {
		names = append(names, r.Name)
	}
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(names, ", ")
}

// fallbacks checks a list of alternatives (zones, instance_types): each entry valid (check
// returns the problem or ""), none twice.
func (v *validator) fallbacks(keyPath string, list []string, check func(string) string) {
	seen := map[string]int{}
	for i, x := range list {
		at := fmt.Sprintf("%s[%d]", keyPath, i)
		if msg := check(x); msg != "" {
			v.errorf(at, "%s", msg)
		} else if j, dup := seen[x]; dup {
			v.errorf(at, "%q is listed twice (also %s[%d]); list each once, in order of preference", x, keyPath, j)
		}
		seen[x] = i
	}
}
