package templates

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"text/template"
)

//go:embed files
var files embed.FS

// heredocEnd closes every file embedded in the user-data script; rendered files must not
// contain it on a line of its own.
const heredocEnd = "INSTACTL_EOF"

// Public file names, as Names lists them and RenderFile takes them.
const (
	fileUserData           = "userdata.sh"
	filePostgres           = "postgresql.conf"
	filePgHba              = "pg_hba.conf"
	filePgBouncer          = "pgbouncer.ini"
	filePgBouncerDatabases = "pgbouncer-databases.ini"
	fileUserlist           = "pgbouncer-userlist.txt"
	fileRedis              = "redis.conf"
	fileAppEnv             = "app.env"
	fileHostEnv            = "host.env"
	fileSupervisor         = "instactl-svc"
	filePGGuard            = "instactl-pg-guard"
	unitPrefix             = "systemd/"
	svcEnvPrefix           = "services/"
)

// staticNames are the files rendered from files/ by the same name plus ".tmpl".
var staticNames = []string{fileUserData, filePostgres, filePgHba, filePgBouncer, filePgBouncerDatabases, fileUserlist,
	fileRedis, fileAppEnv, fileHostEnv, fileSupervisor, filePGGuard}

// parse builds a fresh template set. Parsing is cheap next to what a script does, and a set per
// render keeps the functions that render nested files free of shared state.
func parse() (*template.Template, error) {
	t := template.New("").Option("missingkey=error")
	t.Funcs(template.FuncMap{
		"shq":            shellQuote,
		"shwords":        shellWords,
		"sdexec":         systemdExec,
		"pgq":            pgQuote,
		"bouncerq":       bouncerQuote,
		"services":       Services,
		"join":           strings.Join,
		"env":            envLine,
		"base":           path.Base,
		"pgGuardPath":    func() string { return PGGuardPath },
		"walEnvPath":     func() string { return WALEnvFile },
		"pgPassFile":     func() string { return PGPassFile },
		"sandboxFstab":   func() string { return SandboxFstabPath },
		"sandboxRCLocal": func() string { return SandboxRCLocalPath },
		"supervisorPath": func() string { return SupervisorPath },
		// Monitoring paths and ports (monitor.go).
		"textfileDir":             func() string { return TextfileDir },
		"postgresExporterQueries": func() string { return PostgresExporterQueries },
		"pgHeartbeatSQL":          func() string { return PgHeartbeatSQL },
		"pgHeartbeatInterval":     func() int { return PgHeartbeatInterval },
		"postgresExporterEnv":     func() string { return PostgresExporterEnv },
		"pgbouncerExporterEnv":    func() string { return PgBouncerExporterEnv },
		"pgbouncerExporterPath":   func() string { return PgBouncerExporterPath },
		"nodeExporterPort":        func() int { return NodeExporterPort },
		"monitorConfigDir":        func() string { return MonitorConfigDir },
		"prometheusConfig":        func() string { return PrometheusConfig },
		"alertmanagerConfig":      func() string { return AlertmanagerConfig },
		"blackboxConfig":          func() string { return BlackboxConfig },
		"file": func(name string, d Data) (string, error) {
			return renderHeredoc(t, name, d)
		},
		"unit": func(sd serviceData) (string, error) {
			return renderHeredoc(t, "service/systemd.service", sd)
		},
		"svcenv": func(sd serviceData) (string, error) {
			return renderHeredoc(t, "service/svc.env", sd)
		},
		"service": func(d Data, name string) (serviceData, error) {
			s, ok := findService(d, name)
			if !ok {
				return serviceData{}, fmt.Errorf("role %s has no service %s", d.Role, name)
			}
			return serviceData{Data: d, Service: s}, nil
		},
	})
	err := fs.WalkDir(files, "files", func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(strings.TrimPrefix(p, "files/"), ".tmpl")
		_, err = t.New(name).Parse(string(b))
		return err
	})
	return t, err
}

// serviceData is what the unit and supervisor templates see.
type serviceData struct {
	Data
	Service Service
}

// renderHeredoc renders a file for embedding between <<'INSTACTL_EOF' and INSTACTL_EOF.
func renderHeredoc(t *template.Template, name string, data any) (string, error) {
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, name, data); err != nil {
		return "", err
	}
	s := b.String()
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	for _, line := range strings.Split(s, "\n") {
		if line == heredocEnd {
			return "", fmt.Errorf("templates: %s contains the line %s", name, heredocEnd)
		}
	}
	return s, nil
}

// UserData renders the bootstrap script for a host of role (which overrides d.Role). The
// script is bash, idempotent, and ends by writing DoneFile (or FailedFile from its ERR trap).
func UserData(role string, d Data) (string, error) {
	d.Role = role
	return RenderFile(fileUserData, d)
}

// RenderFile renders one file by its name from Names: a config file ("postgresql.conf"), the
// supervisor ("instactl-svc"), a systemd unit ("systemd/instagram-redis.service") or a sandbox
// service definition ("services/redis.env") of one of d.Role's services, or "userdata.sh".
func RenderFile(name string, d Data) (string, error) {
	d = d.withDefaults()
	if err := d.Validate(); err != nil {
		return "", err
	}
	t, err := parse()
	if err != nil {
		return "", fmt.Errorf("templates: parse: %w", err)
	}
	var tmpl string
	var data any = d
	switch {
	case strings.HasPrefix(name, unitPrefix), strings.HasPrefix(name, svcEnvPrefix):
		s, ok := findService(d, name)
		if !ok {
			return "", fmt.Errorf("templates: role %s has no file %s (it runs %s)", d.Role, name, serviceList(d))
		}
		tmpl, data = "service/systemd.service", serviceData{Data: d, Service: s}
		if strings.HasPrefix(name, svcEnvPrefix) {
			tmpl = "service/svc.env"
		}
	default:
		if !slices.Contains(staticNames, name) {
			return "", fmt.Errorf("templates: no file %q (instactl render lists them)", name)
		}
		tmpl = name
	}
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, tmpl, data); err != nil {
		return "", fmt.Errorf("templates: render %s for %s: %w", name, d.HostName, err)
	}
	out := b.String()
	if name == fileUserData {
		// The role sections leave runs of blank lines behind; one blank line reads better.
		out = blankRuns.ReplaceAllString(out, "\n\n")
	}
	return out, nil
}

var blankRuns = regexp.MustCompile(`\n{3,}`)

// findService finds one of d.Role's services by name, unit file name or definition file name.
func findService(d Data, name string) (Service, bool) {
	for _, s := range Services(d) {
		if name == s.Name || name == unitPrefix+s.Unit() || name == svcEnvPrefix+s.Name+".env" {
			return s, true
		}
	}
	return Service{}, false
}

func serviceList(d Data) string {
	var names []string
	for _, s := range Services(d) {
		names = append(names, s.Name)
	}
	if len(names) == 0 {
		return "no services"
	}
	return strings.Join(names, ", ")
}

// Names lists every file RenderFile knows, sorted. Units and service definitions exist only for
// the roles that run that service.
func Names() []string {
	names := append([]string(nil), staticNames...)
	for _, s := range serviceNames() {
		names = append(names, unitPrefix+UnitName(s), svcEnvPrefix+s+".env")
	}
	sort.Strings(names)
	return names
}
