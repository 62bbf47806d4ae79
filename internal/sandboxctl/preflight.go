package sandboxctl

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
)

// requirement is one program the sandbox runs, and the Debian package that provides it.
type requirement struct {
	path    string // absolute, or a name looked up on PATH
	pkg     string
	purpose string
}

var requirements = []requirement{
	{"/usr/sbin/sshd", "openssh-server", "every host is an sshd"},
	{"/usr/sbin/nginx", "nginx-light", "the load balancer"},
	{"/usr/sbin/mkfs.xfs", "xfsprogs", "volumes are XFS"},
	{"/usr/sbin/xfs_freeze", "xfsprogs", "consistent snapshots"},
	{"losetup", "mount", "volumes are loop devices"},
	{"unshare", "util-linux", "each host has its own mount namespace"},
	{"nsenter", "util-linux", "bootstrap runs inside a host"},
	{"/usr/lib/postgresql/15/bin/postgres", "postgresql-15", "PostgreSQL 15 primaries and replicas"},
	{"psql", "postgresql-client-15", "shard and backup commands"},
	{"redis-server", "redis-server", "Redis master and replica"},
	{"redis-cli", "redis-tools", "Redis checks"},
	{"memcached", "memcached", "the cache role"},
}

// Preflight checks that this machine can run the sandbox: root, and every program it starts.
// Missing Debian packages are reported together, with the one apt-get line that installs them.
func Preflight() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the sandbox needs root (loop devices, mount namespaces): run as root")
	}
	pkgs := map[string][]string{}
	for _, r := range requirements {
		if _, err := exec.LookPath(r.path); err != nil {
			pkgs[r.pkg] = append(pkgs[r.pkg], r.purpose)
		}
	}
	var missing []string
	if _, err := exec.LookPath("moto_server"); err != nil {
		missing = append(missing, "moto_server (serves S3 to the app): pip install 'moto[server]'")
	}
	if len(pkgs) == 0 && len(missing) == 0 {
		return nil
	}
	names := make([]string, 0, len(pkgs))
	for p := range pkgs {
		names = append(names, p)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("this machine lacks what the sandbox needs:\n")
	for _, p := range names {
		fmt.Fprintf(&b, "  %s (%s)\n", p, strings.Join(pkgs[p], "; "))
	}
	for _, m := range missing {
		fmt.Fprintf(&b, "  %s\n", m)
	}
	if len(names) > 0 {
		fmt.Fprintf(&b, "install with: apt-get update && apt-get install -y %s", strings.Join(names, " "))
	}
	return fmt.Errorf("%s", strings.TrimRight(b.String(), "\n"))
}
