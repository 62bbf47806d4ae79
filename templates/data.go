package templates

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"strings"
)

// Service managers a host can have.
const (
	// ServiceManagerSystemd is an AWS host: services are systemd units named instagram-NAME.
	ServiceManagerSystemd = "systemd"
	// ServiceManagerSandbox is a sandbox host (no systemd): services run under SupervisorPath.
	ServiceManagerSandbox = "sandbox"
)

// Roles with a dedicated bootstrap; any other role only gets its volumes.
const (
	RolePostgres  = "pg"
	RoleRedis     = "redis"
	RoleMemcached = "memcached"
	RoleApp       = "app"
)

// Fixed paths on every host. Callers (the sandbox runner, deploy, backup) rely on them.
const (
	// DoneFile is written, with a timestamp, as the last step of a successful bootstrap.
	DoneFile = "/var/lib/instagram/bootstrap.done"
	// FailedFile is written by the error trap with the exit status, line and failing command.
	FailedFile = "/var/lib/instagram/bootstrap.failed"
	// LogFile is where the runner (cloud-init output redirection or the sandbox) sends the
	// script's output.
	LogFile = "/var/log/instagram/bootstrap.log"
	// SupervisorPath is the sandbox service supervisor: instactl-svc start|stop|restart|status NAME.
	SupervisorPath = "/opt/instagram/bin/instactl-svc"
	// PGGuardPath starts postgres on a pg host only when no other member of its group is a
	// primary: a host that was failed over while it was down comes back fenced.
	PGGuardPath = "/opt/instagram/bin/instactl-pg-guard"
	// PGPeersFile lists the other members of a pg host's group for the guard.
	PGPeersFile = "/etc/instagram/pg-peers"
	// PGPassFile holds the replication password on pg hosts (AWS), for the guard's question.
	PGPassFile = "/etc/instagram/pgpass"
	// ServicesDir holds the sandbox supervisor's service definitions (NAME.env).
	ServicesDir = "/etc/instagram/services"
	// HostEnvFile records the host's identity (stack, role, index, name, address) for other tools.
	HostEnvFile = "/etc/instagram/host.env"
	// AppEnvFile is the app server's configuration (INSTAGRAM_LISTEN plus Data.AppEnv); it is
	// instagram-app's default -config and the unit's EnvironmentFile.
	AppEnvFile = "/etc/instagram/app.env"
	// PgBouncerDatabasesFile holds PgBouncer's [databases] section on app hosts, pulled into
	// pgbouncer.ini with %include; package pooler rewrites it to repoint a group.
	PgBouncerDatabasesFile = "/etc/instagram/pgbouncer-databases.ini"
	// PgBouncerAdminUser is PgBouncer's admin user (admin_users): instactl's PAUSE, RELOAD,
	// RESUME. On AWS it authenticates with the replication password.
	PgBouncerAdminUser = "instactl"
	// PgBouncerEnv is the app.env variable holding the app host's own PgBouncer (ADDR:PORT).
	PgBouncerEnv = "INSTAGRAM_PGBOUNCER"
)

// PoolerDatabase is one [databases] entry of an app host's PgBouncer: a Postgres group's name
// and the address of its primary.
type PoolerDatabase struct {
	Name string `json:"name"`
	Host string `json:"host"`
	Port int    `json:"port"`
}

// Data is everything the templates need to know about one host. FromStack fills it from a
// stack file; callers then set the secrets. Zero values get the defaults documented per field.
type Data struct {
	// Stack is the stack name.
	Stack string `json:"stack"`
	// Role selects the bootstrap: pg, redis, memcached, app; any other role gets volumes only.
	Role string `json:"role"`
	// Index is the host's index within its role.
	Index int `json:"index"`
	// HostName is the canonical host name, "pg-1" (default Role-Index).
	HostName string `json:"host_name"`
	// Address is this host's private address; every service binds to it and only it.
	Address string `json:"address"`
	// ServiceManager is ServiceManagerSystemd (AWS) or ServiceManagerSandbox.
	ServiceManager string `json:"service_manager"`
	// InstallPackages runs apt-get for the role's packages (AWS; the sandbox machine has them).
	InstallPackages bool `json:"install_packages"`

	// DeviceDir is where Devices appear: "/dev" on AWS, "/run/instactl/dev" on the sandbox
	// (symlinks to loop devices). Default "/dev".
	DeviceDir string `json:"device_dir"`
	// Devices are the data volumes' device names ("sdf", "sdg"); RAID 0 when more than one.
	Devices []string `json:"devices"`
	// Filesystem for the data volume; only "xfs" is supported (default).
	Filesystem string `json:"filesystem"`
	// Mount is where the data volume is mounted; empty with no Devices.
	Mount string `json:"mount"`
	// DeviceTimeout is how many seconds to wait for every device to appear (default 300).
	DeviceTimeout int `json:"device_timeout"`

	// Port is the role's service port (postgres, redis, memcached, app HTTP).
	Port int `json:"port"`
	// IsPrimary is true for a pg or redis primary (and for roles without replication).
	IsPrimary bool `json:"is_primary"`
	// PrimaryAddress and PrimaryPort locate the primary a replica follows.
	PrimaryAddress string `json:"primary_address,omitempty"`
	PrimaryPort    int    `json:"primary_port,omitempty"`
	// PrimaryTimeout is how many seconds a replica waits for its primary (default 900).
	PrimaryTimeout int `json:"primary_timeout"`

	// PGBinDir holds the PostgreSQL server binaries (default /usr/lib/postgresql/15/bin).
	PGBinDir string `json:"pg_bin_dir"`
	// PGVersion is the major version; the cluster lives in Mount/PGVersion/main (default "15").
	PGVersion string `json:"pg_version"`
	// Database is the app database created on every pg primary (default "instagram").
	Database string `json:"database"`
	// AppPassword and ReplicationPassword are the passwords of roles app and replicator; empty
	// leaves the role without a password (then only TrustCIDR can reach it).
	AppPassword         string `json:"-"`
	ReplicationPassword string `json:"-"`
	// ClientCIDR may connect to postgres with a password (default "samenet": the host's subnets).
	ClientCIDR string `json:"client_cidr"`
	// TrustCIDR, when set, may connect to postgres without a password; the sandbox uses
	// "127.0.0.0/8". Never set it on AWS.
	TrustCIDR string `json:"trust_cidr,omitempty"`
	// WALKeepMB is wal_keep_size on pg hosts, so a replica that falls behind can catch up
	// without a slot (default 1024).
	WALKeepMB int `json:"wal_keep_mb"`
	// MaxWALMB is max_wal_size on pg hosts: PostgreSQL's default of 1 GB, or a quarter of the
	// data volumes when that is less, so pg_wal between checkpoints cannot fill a small volume
	// (a short archive_timeout makes a segment file every few seconds).
	MaxWALMB int `json:"max_wal_mb"`
	// PgBouncer installs and starts PgBouncer beside the app server (app hosts, both flavours):
	// the app reaches every Postgres group through it (INSTAGRAM_PGBOUNCER in app.env) and
	// instactl repoints it at a group's new primary (package pooler).
	PgBouncer bool `json:"pgbouncer"`
	// PgBouncerPort is PgBouncer's port on Address (default 6432).
	PgBouncerPort int `json:"pgbouncer_port"`
	// PoolerDatabases are PgBouncer's first [databases] entries, one per Postgres group, each
	// pointing at the group's primary at render time (database Database there). Bootstrap writes
	// them to PgBouncerDatabasesFile only when that file does not exist yet: after a failover
	// the file on the host, which instactl rewrote, is the truth, not the stack file.
	PoolerDatabases []PoolerDatabase `json:"pooler_databases,omitempty"`

	// Peers are the other members of a pg host's replication group ("ADDRESS PORT"), written to
	// PGPeersFile: the boot guard asks them whether one is primary before this host's cluster
	// starts as one (see files/instactl-pg-guard.tmpl).
	Peers []string `json:"peers,omitempty"`

	// WALArchive, on a pg host, turns on the continuous WAL archive (docs/pitr.md); nil leaves
	// archive_mode off.
	WALArchive *WALArchive `json:"wal_archive,omitempty"`

	// RedisMinReplicas is min-replicas-to-write on a Redis master and replica (either may become
	// master): with a replica in the group, a master that lost it stops taking writes, so a
	// fenced old master cannot diverge. 0 leaves it off (a group without replica).
	RedisMinReplicas int `json:"redis_min_replicas,omitempty"`

	// Exporters runs node_exporter (textfile collector at TextfileDir) and the exporter of the
	// host's role on Address at the ports of the monitoring plan (postgres_exporter on pg,
	// redis_exporter on redis, the PgBouncer exporter beside PgBouncer): set when the stack
	// declares a monitor role. The monitor role itself always has them.
	Exporters bool `json:"exporters,omitempty"`

	// CacheMB is memcached's memory limit (default 64).
	CacheMB int `json:"cache_mb"`

	// AppPath is the app's deploy root; releases land in AppPath/releases, the live one is
	// AppPath/current (default /opt/instagram).
	AppPath string `json:"app_path"`
	// AppBinary is the server binary inside a release (default "instagram-app"); the service
	// runs AppPath/current/AppBinary.
	AppBinary string `json:"app_binary"`
	// AppEnv is extra environment for the app server (DSNs, cache addresses), written sorted to
	// AppEnvFile after INSTAGRAM_LISTEN (Address:Port).
	AppEnv map[string]string `json:"app_env,omitempty"`
}

var (
	nameRe   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	deviceRe = regexp.MustCompile(`^[a-z][a-z0-9]*$`)
	pathRe   = regexp.MustCompile(`^/[A-Za-z0-9._/-]*$`)
	envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// withDefaults returns d with every zero field that has a default filled in.
func (d Data) withDefaults() Data {
	if d.HostName == "" && d.Role != "" {
		d.HostName = fmt.Sprintf("%s-%d", d.Role, d.Index)
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	def(&d.DeviceDir, "/dev")
	def(&d.Filesystem, "xfs")
	def(&d.PGVersion, "15")
	def(&d.PGBinDir, "/usr/lib/postgresql/"+d.PGVersion+"/bin")
	def(&d.Database, "instagram")
	def(&d.ClientCIDR, "samenet")
	def(&d.AppPath, "/opt/instagram")
	def(&d.AppBinary, "instagram-app")
	defInt(&d.DeviceTimeout, 300)
	defInt(&d.PrimaryTimeout, 900)
	defInt(&d.WALKeepMB, 1024)
	defInt(&d.MaxWALMB, 1024)
	defInt(&d.PgBouncerPort, 6432)
	defInt(&d.CacheMB, 64)
	if d.PrimaryPort == 0 {
		d.PrimaryPort = d.Port
	}
	if d.Role == RoleMonitor {
		d.Exporters = true
	}
	return d
}

// Validate reports the first field that cannot be rendered safely. Values end up in a root
// shell script and in config files, so names and paths are held to conservative alphabets.
func (d Data) Validate() error {
	d = d.withDefaults()
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	switch d.ServiceManager {
	case ServiceManagerSystemd, ServiceManagerSandbox:
	default:
		bad("service_manager must be %q or %q (got %q)", ServiceManagerSystemd, ServiceManagerSandbox, d.ServiceManager)
	}
	for field, v := range map[string]string{"role": d.Role, "host_name": d.HostName} {
		if !nameRe.MatchString(v) {
			bad("%s must match %s (got %q)", field, nameRe, v)
		}
	}
	if d.Stack != "" && !nameRe.MatchString(d.Stack) {
		bad("stack must match %s (got %q)", nameRe, d.Stack)
	}
	if _, err := netip.ParseAddr(d.Address); err != nil {
		bad("address must be an IP address (got %q)", d.Address)
	}
	for field, v := range map[string]string{"device_dir": d.DeviceDir, "pg_bin_dir": d.PGBinDir, "app_path": d.AppPath} {
		if !pathRe.MatchString(v) || path.Clean(v) != v {
			bad("%s must be a clean absolute path (got %q)", field, v)
		}
	}
	if d.WALArchive != nil {
		if err := d.WALArchive.validate(); err != nil {
			bad("%v", err)
		}
	}
	if len(d.Devices) > 0 {
		if !pathRe.MatchString(d.Mount) || path.Clean(d.Mount) != d.Mount || d.Mount == "/" {
			bad("mount must be a clean absolute path other than / when devices are given (got %q)", d.Mount)
		}
	}
	for _, dev := range d.Devices {
		if !deviceRe.MatchString(dev) {
			bad("device names are like sdf (got %q)", dev)
		}
	}
	if (d.Role == RolePostgres || d.Role == RoleRedis) && (!pathRe.MatchString(d.Mount) || d.Mount == "/") {
		bad("role %s keeps its data under mount, which must be an absolute path (got %q)", d.Role, d.Mount)
	}
	if d.Filesystem != "xfs" {
		bad("filesystem must be xfs (got %q)", d.Filesystem)
	}
	if !nameRe.MatchString(d.AppBinary) || !nameRe.MatchString(d.Database) || !nameRe.MatchString(d.PGVersion) {
		bad("app_binary, database and pg_version must match %s", nameRe)
	}
	for _, cidr := range []string{d.ClientCIDR, d.TrustCIDR} {
		if cidr == "" || cidr == "samenet" || cidr == "samehost" {
			continue
		}
		if _, err := netip.ParsePrefix(cidr); err != nil {
			bad("%q is not a CIDR", cidr)
		}
	}
	if needsPort(d.Role) && (d.Port <= 0 || d.Port > 65535) {
		bad("role %s needs a port (got %d)", d.Role, d.Port)
	}
	if (d.Role == RolePostgres || d.Role == RoleRedis) && !d.IsPrimary {
		if _, err := netip.ParseAddr(d.PrimaryAddress); err != nil {
			bad("a %s replica needs primary_address (got %q)", d.Role, d.PrimaryAddress)
		}
	}
	for k, v := range d.AppEnv {
		if !envKeyRe.MatchString(k) || strings.ContainsAny(v, "\n\x00'\\") {
			bad("app_env %q: keys are shell identifiers, values single lines without ' or \\", k)
		}
	}
	for _, db := range d.PoolerDatabases {
		if _, err := netip.ParseAddr(db.Host); err != nil || !nameRe.MatchString(db.Name) || db.Port <= 0 || db.Port > 65535 {
			bad("pooler_databases: %q = %s:%d is not a group name and an IP address and port", db.Name, db.Host, db.Port)
		}
	}
	if _, ok := d.AppEnv[PgBouncerEnv]; ok && d.PgBouncer {
		bad("app_env must not set %s: it is the host's own PgBouncer, rendered per host", PgBouncerEnv)
	}
	for _, pw := range []string{d.AppPassword, d.ReplicationPassword} {
		if strings.ContainsAny(pw, "\n\x00") {
			bad("passwords must be single lines")
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("templates: invalid host data for %s: %s", d.HostName, strings.Join(errs, "; "))
	}
	return nil
}

func needsPort(role string) bool {
	switch role {
	case RolePostgres, RoleRedis, RoleMemcached, RoleApp, RoleMonitor:
		return true
	}
	return false
}

// DeviceNames returns the device names for n data volumes: sdf, sdg, ... (AWS's recommended
// range for EBS data volumes). Provisioning attaches volumes at these names and the sandbox
// places its symlinks under the same names, so both agree with the bootstrap script.
func DeviceNames(n int) []string {
	out := make([]string, 0, n)
	for i := 0; i < n && i < 11; i++ { // sdf..sdp
		out = append(out, "sd"+string(rune('f'+i)))
	}
	return out
}

// PeersFile is where a pg host lists the other members of its group for the boot guard.
func (d Data) PeersFile() string { return PGPeersFile }

// PGData is the PostgreSQL cluster directory on a pg host: Mount/PGVersion/main.
func (d Data) PGData() string {
	d = d.withDefaults()
	return path.Join(d.Mount, d.PGVersion, "main")
}
