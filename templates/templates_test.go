package templates

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
)

// goldenCase is one host whose user-data is pinned in testdata/golden/NAME.sh.
type goldenCase struct {
	name string
	data Data
}

func awsHost(role string, index int, port int, primary bool, devices int) Data {
	d := Data{
		Stack: "prod", Role: role, Index: index, HostName: role + "-" + strconv.Itoa(index), Address: "10.0.1." + strconv.Itoa(10+index),
		ServiceManager: ServiceManagerSystemd, InstallPackages: true,
		DeviceDir: "/dev", Devices: DeviceNames(devices), Filesystem: "xfs",
		Port: port, IsPrimary: primary, AppPassword: "app-secret", ReplicationPassword: "repl's secret",
		ClientCIDR: "10.0.0.0/16", PgBouncer: role == RoleApp,
		AppEnv: map[string]string{
			"INSTAGRAM_CONTROL_DSN": "postgres://app@10.0.1.10:5432,10.0.1.11:5432/instagram_control?sslmode=disable&connect_timeout=2&target_session_attrs=read-write",
			"INSTAGRAM_REDIS_ADDR":  "10.0.1.30:6379"},
	}
	if role == RoleApp {
		d.PoolerDatabases = []PoolerDatabase{{Name: "pg-0", Host: "10.0.1.10", Port: 5432}, {Name: "pg-2", Host: "10.0.1.12", Port: 5432}}
	}
	if role == RoleRedis {
		d.RedisMinReplicas = 1
	}
	switch role {
	case RolePostgres:
		d.Mount = "/var/lib/postgresql"
	case RoleRedis:
		d.Mount = "/var/lib/redis"
	default:
		if devices > 0 {
			d.Mount = "/data"
		}
	}
	if !primary {
		d.PrimaryAddress = "10.0.1.10"
	}
	return d
}

func sandboxHost(role string, index int, port int, primary bool, devices int) Data {
	d := awsHost(role, index, port, primary, devices)
	d.Stack = "dev"
	d.Address = "127.0.77." + strconv.Itoa(1+index)
	d.ServiceManager = ServiceManagerSandbox
	d.InstallPackages = false
	d.DeviceDir = "/run/instactl/dev"
	d.AppPassword, d.ReplicationPassword = "", ""
	d.ClientCIDR, d.TrustCIDR = "", "127.0.0.0/8"
	d.WALKeepMB = 64
	d.AppEnv = nil
	if role == RoleApp {
		d.PoolerDatabases = []PoolerDatabase{{Name: "pg-0", Host: "127.0.77.1", Port: 5432}, {Name: "pg-2", Host: "127.0.77.3", Port: 5432}}
	}
	if !primary {
		d.PrimaryAddress = "127.0.77.1"
	}
	return d
}

func goldenCases() []goldenCase {
	var cases []goldenCase
	for _, f := range []struct {
		name string
		host func(string, int, int, bool, int) Data
		devs int
	}{{"aws", awsHost, 2}, {"sandbox", sandboxHost, 1}} {
		cases = append(cases,
			goldenCase{f.name + "/pg-primary", f.host(RolePostgres, 0, 5432, true, f.devs)},
			goldenCase{f.name + "/pg-replica", f.host(RolePostgres, 1, 5432, false, f.devs)},
			goldenCase{f.name + "/redis-master", f.host(RoleRedis, 0, 6379, true, 1)},
			goldenCase{f.name + "/redis-replica", f.host(RoleRedis, 1, 6379, false, 1)},
			goldenCase{f.name + "/memcached", f.host(RoleMemcached, 0, 11211, true, 0)},
			goldenCase{f.name + "/app", f.host(RoleApp, 0, 8080, true, 0)},
			goldenCase{f.name + "/worker", f.host("worker", 0, 0, true, 1)},
		)
	}
	return cases
}

// TestUserDataGolden pins every role's user-data in both flavours. UPDATE_GOLDEN=1 rewrites them.
func TestUserDataGolden(t *testing.T) {
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			got, err := UserData(c.data.Role, c.data)
			if err != nil {
				t.Fatal(err)
			}
			compareGolden(t, filepath.Join("testdata", "golden", c.name+".sh"), got)
			checkScript(t, c.name, got)
		})
	}
}

// TestFilesGolden pins every file a role renders on its own (configs, units, definitions).
func TestFilesGolden(t *testing.T) {
	for _, c := range goldenCases() {
		for _, name := range Names() {
			if name == fileUserData {
				continue
			}
			got, err := RenderFile(name, c.data)
			if err != nil {
				if strings.Contains(err.Error(), "has no file") {
					continue // a service of another role
				}
				t.Fatalf("%s %s: %v", c.name, name, err)
			}
			if !relevant(c.data, name) {
				continue
			}
			t.Run(c.name+"/"+name, func(t *testing.T) {
				compareGolden(t, filepath.Join("testdata", "golden", c.name+".files", name), got)
				if name == fileSupervisor {
					checkScript(t, name, got)
				}
			})
		}
	}
}

// relevant limits the file goldens to what the role installs.
func relevant(d Data, name string) bool {
	switch name {
	case filePostgres, filePgHba:
		return d.Role == RolePostgres
	case filePgBouncer, fileUserlist, filePgBouncerDatabases:
		return d.Role == RoleApp && d.PgBouncer
	case fileRedis:
		return d.Role == RoleRedis
	case fileAppEnv:
		return d.Role == RoleApp
	case fileSupervisor:
		return d.ServiceManager == ServiceManagerSandbox && d.Role == RolePostgres && d.IsPrimary
	}
	if strings.HasPrefix(name, unitPrefix) {
		return d.ServiceManager == ServiceManagerSystemd
	}
	if strings.HasPrefix(name, svcEnvPrefix) {
		return d.ServiceManager == ServiceManagerSandbox
	}
	return true
}

func compareGolden(t *testing.T, path, got string) {
	t.Helper()
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run UPDATE_GOLDEN=1 go test ./templates/ to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the rendered output (UPDATE_GOLDEN=1 go test ./templates/ rewrites it); first difference:\n%s",
			path, firstDiff(string(want), got))
	}
}

func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return "line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl
		}
	}
	return "(none)"
}

// checkScript runs bash -n, and shellcheck when installed, on a rendered script.
func checkScript(t *testing.T, name, script string) {
	t.Helper()
	cmd := exec.Command("bash", "-n")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bash -n %s: %v\n%s", name, err, out)
	}
	if _, err := exec.LookPath("shellcheck"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("shellcheck is missing: apt-get install -y shellcheck")
		}
		return
	}
	cmd = exec.Command("shellcheck", "--shell=bash", "--severity=style", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("shellcheck %s: %v\n%s", name, err, out.String())
	}
}

func TestUserDataBasics(t *testing.T) {
	for _, c := range goldenCases() {
		got, err := UserData(c.data.Role, c.data)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"#!/bin/bash\n", "set -euo pipefail\n", "trap 'on_error", `>"$DONE"`} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: user-data lacks %q", c.name, want)
			}
		}
		if c.data.ServiceManager == ServiceManagerSandbox && strings.Contains(got, "systemctl") {
			t.Errorf("%s: sandbox user-data calls systemctl", c.name)
		}
		if c.data.ServiceManager == ServiceManagerSandbox && strings.Contains(got, "apt-get") {
			t.Errorf("%s: sandbox user-data runs apt-get", c.name)
		}
		if strings.Contains(got, "<no value>") {
			t.Errorf("%s: user-data has <no value>", c.name)
		}
	}
}

func TestValidate(t *testing.T) {
	good := sandboxHost(RolePostgres, 1, 5432, false, 1)
	if err := good.Validate(); err != nil {
		t.Fatalf("valid data rejected: %v", err)
	}
	for name, mutate := range map[string]func(*Data){
		"service manager": func(d *Data) { d.ServiceManager = "upstart" },
		"address":         func(d *Data) { d.Address = "127.0.0.1; rm -rf /" },
		"device":          func(d *Data) { d.Devices = []string{"../sda"} },
		"mount":           func(d *Data) { d.Mount = "relative" },
		"replica primary": func(d *Data) { d.PrimaryAddress = "" },
		"port":            func(d *Data) { d.Port = 0 },
		"filesystem":      func(d *Data) { d.Filesystem = "ext4" },
		"host name":       func(d *Data) { d.HostName = "pg 1" },
		"app env":         func(d *Data) { d.AppEnv = map[string]string{"A": "it's"} },
		"trust cidr":      func(d *Data) { d.TrustCIDR = "everyone" },
		"pooler db":       func(d *Data) { d.PoolerDatabases = []PoolerDatabase{{Name: "pg-0", Host: "db.example", Port: 5432}} },
		"pooler env":      func(d *Data) { d.PgBouncer, d.AppEnv = true, map[string]string{PgBouncerEnv: "1.2.3.4:6432"} },
	} {
		d := good
		mutate(&d)
		if _, err := UserData(d.Role, d); err == nil {
			t.Errorf("%s: bad data accepted", name)
		}
	}
}

func TestServiceCommands(t *testing.T) {
	for _, c := range []struct {
		got, want []string
	}{
		{RestartCommand(ServiceManagerSystemd, "app"), []string{"systemctl", "restart", "instagram-app.service"}},
		{RestartCommand(ServiceManagerSandbox, "app"), []string{"/opt/instagram/bin/instactl-svc", "restart", "app"}},
		{StatusCommand(ServiceManagerSystemd, "redis"), []string{"systemctl", "is-active", "--quiet", "instagram-redis.service"}},
		{StatusCommand(ServiceManagerSandbox, "redis"), []string{"/opt/instagram/bin/instactl-svc", "status", "redis"}},
		{StopCommand(ServiceManagerSandbox, "postgres"), []string{"/opt/instagram/bin/instactl-svc", "stop", "postgres"}},
		{StartCommand(ServiceManagerSystemd, "postgres"), []string{"systemctl", "start", "instagram-postgres.service"}},
		{RestartCommand("upstart", "app"), nil},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestRenderFileErrors(t *testing.T) {
	d := sandboxHost(RoleRedis, 0, 6379, true, 1)
	if _, err := RenderFile("nope.conf", d); err == nil {
		t.Error("unknown file rendered")
	}
	if _, err := RenderFile("services/postgres.env", d); err == nil {
		t.Error("a redis host rendered a postgres service")
	}
	if _, err := RenderFile("services/redis.env", d); err != nil {
		t.Error(err)
	}
}

func TestQuoting(t *testing.T) {
	for in, want := range map[string]string{
		"plain":    "plain",
		"":         "''",
		"a b":      "'a b'",
		"it's":     `'it'\''s'`,
		"$(x)":     "'$(x)'",
		"/a/b-c.d": "/a/b-c.d",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
	if got := systemdExec([]string{"/bin/x", "a b", "100%", "$HOME", `q"`}); got != `/bin/x "a b" 100%% $$HOME "q\""` {
		t.Errorf("systemdExec = %s", got)
	}
}

func TestFromStack(t *testing.T) {
	st, err := stack.Parse("example.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	d, err := FromStack(st, RolePostgres, 1, "127.0.10.4", "127.0.10.3")
	if err != nil {
		t.Fatal(err)
	}
	if d.ServiceManager != ServiceManagerSandbox || d.IsPrimary || d.PrimaryAddress != "127.0.10.3" ||
		d.HostName != "pg-1" || d.Mount != "/var/lib/postgresql" || len(d.Devices) != 1 || d.DeviceDir != SandboxDeviceDir {
		t.Errorf("FromStack = %+v", d)
	}
	if _, err := UserData(d.Role, d); err != nil {
		t.Error(err)
	}
	if _, err := FromStack(st, "nope", 0, "127.0.10.1", ""); err == nil {
		t.Error("unknown role accepted")
	}
	// max_wal_size: a quarter of the data volumes, at most PostgreSQL's default 1 GB.
	for _, tc := range []struct{ count, gib, want int }{{1, 10, 1024}, {1, 1, 256}, {2, 1, 512}} {
		st.Role(RolePostgres).Volumes.Count, st.Role(RolePostgres).Volumes.SizeGiB = tc.count, tc.gib
		d, err := FromStack(st, RolePostgres, 0, "127.0.10.3", "")
		if err != nil || d.MaxWALMB != tc.want {
			t.Errorf("%d x %d GiB: max_wal_size %d MB (%v), want %d", tc.count, tc.gib, d.MaxWALMB, err, tc.want)
		}
	}
	st.Provider = "aws"
	d, err = FromStack(st, RolePostgres, 0, "10.0.1.10", "")
	if err != nil {
		t.Fatal(err)
	}
	if d.ServiceManager != ServiceManagerSystemd || !d.InstallPackages || d.PgBouncer || d.TrustCIDR != "" {
		t.Errorf("FromStack (aws) = %+v", d)
	}
}

// TestFromStackPgBouncer: every app host, in both flavours, runs PgBouncer with one entry per
// Postgres group pointing at the group's first host; pg hosts run none.
func TestFromStackPgBouncer(t *testing.T) {
	st, err := stack.Parse("example.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	for _, provider := range []string{"sandbox", "aws"} {
		st.Provider = provider
		d, err := FromStack(st, RoleApp, 1, "127.0.10.2", "")
		if err != nil {
			t.Fatal(err)
		}
		want := []PoolerDatabase{{Name: "pg-0", Host: "127.0.10.3", Port: 5432}, {Name: "pg-2", Host: "127.0.10.5", Port: 5432}}
		if !d.PgBouncer || !reflect.DeepEqual(d.PoolerDatabases, want) || d.Database != st.Shards.Database {
			t.Errorf("%s: app host PgBouncer = %v, databases %+v (want %+v), dbname %s", provider, d.PgBouncer, d.PoolerDatabases, want, d.Database)
		}
		if names := serviceList(d); names != "pgbouncer, app" {
			t.Errorf("%s: app host services = %s, want pgbouncer, app", provider, names)
		}
		env, err := RenderFile(fileAppEnv, d)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(env, "\nINSTAGRAM_PGBOUNCER='127.0.10.2:6432'\n") {
			t.Errorf("%s: app.env lacks the host's own PgBouncer:\n%s", provider, env)
		}
		pg, err := FromStack(st, RolePostgres, 0, "127.0.10.3", "")
		if err != nil {
			t.Fatal(err)
		}
		if pg.PgBouncer || serviceList(pg) != "postgres" {
			t.Errorf("%s: a pg host runs %s", provider, serviceList(pg))
		}
		r, err := FromStack(st, RoleRedis, 1, "127.0.10.8", "127.0.10.7")
		if err != nil {
			t.Fatal(err)
		}
		if r.RedisMinReplicas != 1 {
			t.Errorf("%s: redis replica min-replicas-to-write = %d, want 1", provider, r.RedisMinReplicas)
		}
	}
}
