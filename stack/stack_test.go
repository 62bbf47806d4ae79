package stack

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestExampleIsValid(t *testing.T) {
	st, err := Parse("instagram.yaml", Example())
	if err != nil {
		t.Fatalf("example does not validate:\n%v", err)
	}
	if st.Name != "instagram" || st.Provider != "sandbox" {
		t.Fatalf("unexpected header: %+v", st)
	}
	pg := st.Role("pg")
	if pg == nil || pg.Count != 4 || pg.Replicas != 1 || pg.Nodes() != 2 || pg.Volumes.Mount != "/var/lib/postgresql" {
		t.Fatalf("pg role: %+v", pg)
	}
	if !pg.IsPrimary(2) || pg.IsPrimary(3) || pg.PrimaryOf(3) != 2 {
		t.Fatalf("primary grouping wrong")
	}
	if got := strings.Join(st.Deploy.Batches, ","); got != "1,50%,100%" {
		t.Fatalf("batches = %s", got)
	}
	if st.LoadBalancer.DrainTimeout != 5*time.Second {
		t.Fatalf("drain = %s", st.LoadBalancer.DrainTimeout)
	}
	if n := len(st.Hosts()); n != 9 {
		t.Fatalf("hosts = %d, want 9", n)
	}
}

func TestExampleValidForAWS(t *testing.T) {
	data := strings.Replace(string(Example()), "provider: sandbox", "provider: aws", 1)
	st, err := Parse("aws.yaml", []byte(data))
	if err != nil {
		t.Fatalf("example with provider aws does not validate:\n%v", err)
	}
	if st.SSH.User != "root" || st.Image == "" {
		t.Fatalf("unexpected: %+v", st.SSH)
	}
}

func TestMinimalGetsDefaults(t *testing.T) {
	st, err := Parse("s.yaml", []byte("name: tiny\nroles:\n  app:\n    count: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Role("app").Port != 8080 || st.LoadBalancer.TargetPort != 8080 || st.SSH.Port != 2222 {
		t.Fatalf("defaults not applied: %+v", st)
	}
	if st.Backup.ArchiveTimeout != time.Minute || st.Backup.WALArchive {
		t.Fatalf("archive defaults: timeout %s, on %v; want 1m0s, off", st.Backup.ArchiveTimeout, st.Backup.WALArchive)
	}
	if len(st.Backup.Targets) != 0 {
		t.Fatalf("backup targets defaulted without pg/redis: %v", st.Backup.Targets)
	}
}

func TestErrors(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"unknown key with hint", "name: x\nroles:\n  app:\n    cout: 2\n",
			[]string{`s.yaml:4:5: roles.app.cout: unknown key "cout"; did you mean "count"?`}},
		{"zero count", "name: x\nroles:\n  app:\n    count: 0\n",
			[]string{"s.yaml:4:12: roles.app.count: must be >= 1 (got 0)"}},
		{"wrong type", "name: x\nroles:\n  app:\n    count: two\n",
			[]string{`s.yaml:4:12: roles.app.count: expected a whole number, found "two"`}},
		{"all errors at once", "name: X\nprovider: gcp\nroles:\n  app:\n    count: 1\n    sizee: 3\nload_balancer:\n  health_check: healthz\n",
			[]string{`s.yaml:6:5: roles.app.sizee: unknown key "sizee"`}},
		{"validation errors together", "name: X\nprovider: gcp\nroles:\n  app:\n    count: 1\nload_balancer:\n  health_check: healthz\n",
			[]string{"s.yaml:1:7: name: must be lowercase", `s.yaml:2:11: provider: must be "aws" or "sandbox" (got "gcp")`,
				"s.yaml:7:17: load_balancer.health_check: must be an HTTP path"}},
		{"bad batch", "name: x\nroles:\n  app: {count: 2}\ndeploy:\n  batches: [1, 150%]\n",
			[]string{"s.yaml:5:16: deploy.batches[1]: a percentage must be 1%-100%"}},
		{"replica grouping", "name: x\nroles:\n  app: {count: 1}\n  pg: {count: 3, replicas: 1}\n",
			[]string{"roles.pg.count: must be a multiple of replicas+1 = 2"}},
		{"backup target without replica", "name: x\nroles:\n  app: {count: 1}\n  pg: {count: 1, volumes: {count: 1, size_gib: 1, mount: /data}}\nbackup:\n  targets: [pg]\n",
			[]string{"s.yaml:6:13: backup.targets[0]: role pg has no replica"}},
		{"yaml syntax", "name: x\nroles: [\n", []string{"s.yaml:2:1: invalid YAML"}},
		{"duplicate key", "name: x\nname: y\nroles:\n  app: {count: 1}\n", []string{"s.yaml:2:1: name: key is given twice"}},
		{"empty", "", []string{"s.yaml:1:1: the file is empty"}},
		{"aws needs image", "name: x\nprovider: aws\nroles:\n  app: {count: 1}\n", []string{"s.yaml:1:1: image: provider aws needs an AMI id"}},
		{"data role without volumes", "name: x\nroles:\n  app: {count: 1}\n  redis: {count: 1}\n",
			[]string{"s.yaml:4:10: roles.redis.volumes: role redis keeps its data on volumes"}},
		{"archive timeout not whole seconds", "name: x\nroles:\n  app: {count: 1}\nbackup:\n  archive_timeout: 1500ms\n",
			[]string{"s.yaml:5:20: backup.archive_timeout: must be whole seconds from 1s to 1h"}},
		{"archive timeout too long", "name: x\nroles:\n  app: {count: 1}\nbackup:\n  archive_timeout: 2h\n",
			[]string{"backup.archive_timeout: must be whole seconds from 1s to 1h, such as 60s"}},
		{"wal archive without pg", "name: x\nroles:\n  app: {count: 1}\nbackup:\n  wal_archive: true\n",
			[]string{"backup.wal_archive: needs a pg role"}},
		{"sandbox raid", "name: x\nroles:\n  app: {count: 1}\n  pg: {count: 1, volumes: {count: 2, size_gib: 1, mount: /data}}\n",
			[]string{"roles.pg.volumes.count: the sandbox has no md RAID"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("s.yaml", []byte(c.in))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want Errors, got %v", err)
			}
			msg := err.Error()
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error missing %q; got:\n%s", w, msg)
				}
			}
			if c.name == "validation errors together" && len(errs) < 3 {
				t.Errorf("want all errors at once, got %d:\n%s", len(errs), msg)
			}
		})
	}
}

func TestParseCount(t *testing.T) {
	for in, want := range map[string]int{"1": 1, "25%": 25, "100%": 100, "0": 0} {
		n, _, err := ParseCount(in)
		if err != nil || n != want {
			t.Errorf("ParseCount(%q) = %d, %v", in, n, err)
		}
	}
	for _, in := range []string{"", "x", "0%", "101%", "-1", "1.5"} {
		if _, _, err := ParseCount(in); err == nil {
			t.Errorf("ParseCount(%q) accepted", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Example())
	f.Add([]byte("name: x\nroles:\n  app: {count: 1}\n"))
	f.Add([]byte("roles: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := Parse("f.yaml", data)
		if err == nil && st == nil {
			t.Fatal("nil stack without error")
		}
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not a non-empty Errors: %v", err)
			}
			if len(errs) > maxErrors+1 {
				t.Fatalf("%d errors: the list is not bounded", len(errs))
			}
			for _, e := range errs {
				if e.File != "f.yaml" || e.Line < 1 || e.Column < 1 {
					t.Fatalf("error without file:line:column: %v", e)
				}
			}
		}
	})
}

func TestAddresses(t *testing.T) {
	st, err := Parse("s.yaml", Example())
	if err != nil {
		t.Fatal(err)
	}
	cases := map[HostRef]string{{"app", 0}: "127.0.10.1", {"app", 1}: "127.0.10.2", {"pg", 0}: "127.0.10.3", {"memcached", 0}: "127.0.10.9"}
	for h, want := range cases {
		if a, err := st.Address(h); err != nil || a.String() != want {
			t.Errorf("Address(%s) = %v, %v; want %s", h.Name(), a, err, want)
		}
	}
	if _, err := st.Address(HostRef{"app", 7}); err == nil {
		t.Error("address of a host that does not exist")
	}
}
