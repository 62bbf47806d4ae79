package templates

import (
	"path"
	"sort"
	"strconv"
)

// Service is one long-running process on a host, described once and rendered either as a
// systemd unit (instagram-NAME.service) or as a sandbox supervisor definition
// (ServicesDir/NAME.env).
type Service struct {
	// Name is the short name deploy and backup use: postgres, pgbouncer, redis, memcached, app.
	Name        string
	Description string
	// User runs the process; Group is User's primary group.
	User string
	// Command is the argument vector, run without a shell, in the foreground.
	Command []string
	// Dir is the working directory.
	Dir string
	// EnvFile, when set, is loaded into the environment before Command starts.
	EnvFile string
	// RuntimeDir, when set, is created under /run owned by User before start (sockets).
	RuntimeDir string
	// StopSignal asks the process to stop (TERM, or INT for PostgreSQL's fast shutdown); after
	// StopTimeout seconds it is killed.
	StopSignal  string
	StopTimeout int
	// Start says whether bootstrap starts the service (the app waits for its first deploy).
	Start bool
	// After is a unit this one starts after, on systemd ("instagram-postgres.service").
	After string
	// RequiresMount is a mount point the service's data lives on (systemd orders after it).
	RequiresMount string
}

// Unit is the systemd unit name of the service.
func (s Service) Unit() string { return UnitName(s.Name) }

// UnitName is the systemd unit for a service name: "app" -> "instagram-app.service".
func UnitName(service string) string { return "instagram-" + service + ".service" }

// Services returns the services bootstrap installs on a host of d.Role, in start order.
func Services(d Data) []Service {
	d = d.withDefaults()
	sandbox := d.ServiceManager == ServiceManagerSandbox
	var out []Service
	switch d.Role {
	case RolePostgres:
		out = append(out, Service{
			Name: "postgres", Description: "PostgreSQL " + d.PGVersion + " " + d.PGData(),
			User: "postgres",
			// The guard execs postgres, so the service's pid is the postmaster's.
			Command: []string{PGGuardPath, path.Join(d.PGBinDir, "postgres"), "-D", d.PGData()},
			Dir:     d.Mount, RuntimeDir: "/run/postgresql",
			StopSignal: "INT", StopTimeout: 120, Start: true, RequiresMount: d.mountIfAny(),
		})
	case RoleRedis:
		user := "redis"
		if sandbox {
			user = "root"
		}
		out = append(out, Service{
			Name: "redis", Description: "Redis " + d.redisRole(),
			User:    user,
			Command: []string{"/usr/bin/redis-server", "/etc/instagram/redis.conf"},
			Dir:     d.Mount, StopSignal: "TERM", StopTimeout: 60, Start: true,
			RequiresMount: d.mountIfAny(),
		})
	case RoleMemcached:
		user := "memcache"
		cmd := []string{"/usr/bin/memcached", "-l", d.Address, "-p", strconv.Itoa(d.Port), "-U", "0",
			"-m", strconv.Itoa(d.CacheMB), "-c", "4096"}
		if sandbox {
			// memcached refuses to run as root unless told which user to stay.
			user = "root"
			cmd = append(cmd, "-u", "root")
		}
		out = append(out, Service{
			Name: "memcached", Description: "memcached", User: user, Command: cmd, Dir: "/",
			StopSignal: "TERM", StopTimeout: 10, Start: true,
		})
	case RoleApp:
		after := ""
		if d.PgBouncer {
			// PgBouncer refuses to run as root; user postgres comes with its Debian package
			// (postgresql-common) and exists on the sandbox machine.
			out = append(out, Service{
				Name: "pgbouncer", Description: "PgBouncer beside the app server",
				User:    "postgres",
				Command: []string{"/usr/sbin/pgbouncer", "/etc/instagram/pgbouncer.ini"},
				Dir:     "/", RuntimeDir: "/run/pgbouncer",
				StopSignal: "INT", StopTimeout: 30, Start: true,
			})
			after = UnitName("pgbouncer")
		}
		user := "instagram"
		if sandbox {
			user = "root"
		}
		out = append(out, Service{
			Name: "app", Description: "app server",
			User:    user,
			Command: []string{path.Join(d.AppPath, "current", d.AppBinary)},
			Dir:     d.AppPath, EnvFile: AppEnvFile, After: after,
			StopSignal: "TERM", StopTimeout: 30, Start: false,
		})
	}
	out = append(out, exporterServices(d)...)
	if d.Role == RoleMonitor {
		out = append(out, monitorServices(d)...)
	}
	return out
}

func (d Data) redisRole() string {
	if d.IsPrimary {
		return "master"
	}
	return "replica of " + d.PrimaryAddress
}

func (d Data) mountIfAny() string {
	if len(d.Devices) == 0 {
		return ""
	}
	return d.Mount
}

// serviceNames lists every service name any role can have, sorted.
func serviceNames() []string {
	names := []string{"postgres", "pgbouncer", "redis", "memcached", "app",
		ServiceNodeExporter, ServicePostgresExporter, ServiceRedisExporter, ServicePgBouncerExporter,
		ServicePrometheus, ServiceAlertmanager, ServiceBlackbox}
	sort.Strings(names)
	return names
}

// RestartCommand is the argument vector that restarts service on a host with the given
// service manager: "systemctl restart instagram-app" or "instactl-svc restart app".
// It returns nil for an unknown service manager.
func RestartCommand(serviceManager, service string) []string {
	return serviceCommand(serviceManager, "restart", service)
}

// StatusCommand is the argument vector that exits 0 only when service is running.
// It returns nil for an unknown service manager.
func StatusCommand(serviceManager, service string) []string {
	return serviceCommand(serviceManager, "status", service)
}

// StartCommand is the argument vector that starts service (a no-op when it is running).
// It returns nil for an unknown service manager.
func StartCommand(serviceManager, service string) []string {
	return serviceCommand(serviceManager, "start", service)
}

// StopCommand is the argument vector that stops service (a no-op when it is stopped).
// It returns nil for an unknown service manager.
func StopCommand(serviceManager, service string) []string {
	return serviceCommand(serviceManager, "stop", service)
}

func serviceCommand(serviceManager, action, service string) []string {
	switch serviceManager {
	case ServiceManagerSystemd:
		if action == "status" {
			return []string{"systemctl", "is-active", "--quiet", UnitName(service)}
		}
		return []string{"systemctl", action, UnitName(service)}
	case ServiceManagerSandbox:
		return []string{SupervisorPath, action, service}
	}
	return nil
}
