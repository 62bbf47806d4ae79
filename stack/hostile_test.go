package stack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// HostileFiles are stack files written to break a parser: each must be refused with every error
// at file:line:column, never a panic, in time and memory bounded by the file's size. The CLI's
// table test runs the same files through the real command line.
func HostileFiles() map[string]struct {
	Data string
	Want string // a piece of the first error message
} {
	var lol strings.Builder // the classic "billion laughs", nine levels of nine aliases
	lol.WriteString("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&lol, "l%d: &l%d [", i, i)
		for j := 0; j < 9; j++ {
			fmt.Fprintf(&lol, "*l%d, ", i-1)
		}
		lol.WriteString("]\n")
	}
	lol.WriteString("name: x\nroles:\n  app: {count: 1}\ndeploy:\n  batches: *l9\n")
	var many strings.Builder // more aliases than any stack file needs, where they are decoded
	many.WriteString("name: x\nbase: &b {count: 1}\nroles:\n")
	for i := 0; i < 150; i++ {
		fmt.Fprintf(&many, "  r%d: *b\n", i)
	}
	var keys strings.Builder // thousands of problems: reported up to a bound
	keys.WriteString("name: x\nroles:\n  app: {count: 1}\n")
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&keys, "k%d: 1\n", i)
	}
	return map[string]struct {
		Data string
		Want string
	}{
		"billion laughs":        {lol.String(), "unknown key"},
		"alias flood":           {many.String(), "more than 100 aliases"},
		"recursive alias":       {"name: x\nroles: &r\n  app: *r\n", "roles.app"},
		"binary garbage":        {"name: x\n\x00\x01\x02\xff\xfe garbage", "control character 0x00"},
		"invalid utf-8":         {"name: caf\xe9\nroles:\n  app: {count: 1}\n", "is not UTF-8 text"},
		"ELF header":            {"\x7fELF\x02\x01\x01\x00\x00\x00", "control character 0x7f"},
		"tab indent":            {"name: x\nroles:\n\tapp: {count: 1}\n", "(a tab: YAML indents with spaces only)"},
		"tab after spaces":      {"name: x\nroles:\n  app:\n  \tcount: 1\n", "invalid YAML"},
		"huge number":           {"name: x\nroles:\n  app: {count: 99999999999999999999999999}\n", "expected a whole number"},
		"huge count":            {"name: x\nroles:\n  app: {count: 1000000000}\n", "must be at most 1000"},
		"too many hosts":        {"name: x\nroles:\n  app: {count: 1000}\n  memcached: {count: 1000}\n", "a stack holds at most 1000"},
		"huge shards":           {"name: x\nroles:\n  app: {count: 1}\nshards:\n  logical: 9223372036854775807\n", "must be 1-8192"},
		"huge duration":         {"name: x\nroles:\n  app: {count: 1}\ndeploy:\n  health_timeout: 99999999999999h\n", "expected a duration"},
		"addresses overflow":    {"name: x\nnetwork:\n  address_base: 127.255.255.250\nroles:\n  app: {count: 9}\n", "run past the end"},
		"huge port":             {"name: x\nroles:\n  app: {count: 1}\nsandbox:\n  lb_port: 70000\n", "must be a TCP port"},
		"roles as a list":       {"name: x\nroles: [app, pg]\n", "expected a mapping of role name to role"},
		"name as a mapping":     {"name: {first: x}\nroles:\n  app: {count: 1}\n", "expected a string, found a mapping"},
		"count as a list":       {"name: x\nroles:\n  app: {count: [1]}\n", "expected a whole number, found a list"},
		"key as a list":         {"name: x\n? [a, b]\n: 1\nroles:\n  app: {count: 1}\n", "a key must be a plain name"},
		"unknown lb role":       {"name: x\nroles:\n  app: {count: 1}\nload_balancer:\n  target_role: nope\n", "load_balancer.target_role: names no role"},
		"unknown deploy role":   {"name: x\nroles:\n  app: {count: 1}\ndeploy:\n  role: nope\n", "deploy.role: names no role"},
		"unknown backup target": {"name: x\nroles:\n  app: {count: 1}\nbackup:\n  targets: [nope]\n", "backup.targets[0]: names no role"},
		"unknown shard role":    {"name: x\nroles:\n  app: {count: 1}\nshards:\n  role: nope\n", "shards.role: names no role"},
		"deep nesting":          {"name: x\nroles: " + strings.Repeat("[", 20000) + "\n", "invalid YAML"},
		"thousands of problems": {keys.String(), "more than 100 problems"},
		"over the size cap":     {strings.Repeat("# padding\n", MaxFileSize/10+1), "larger than 1024 KiB"},
		"a scalar":              {"just words\n", "expected a mapping of keys"},
	}
}

// placed is what every error line must start with.
var placed = regexp.MustCompile(`^h\.yaml:\d+:\d+: `)

func TestHostileFiles(t *testing.T) {
	for name, c := range HostileFiles() {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("h.yaml", []byte(c.Data))
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("want Errors, got %v", err)
			}
			if len(errs) > maxErrors+1 {
				t.Errorf("%d errors: the list is not bounded", len(errs))
			}
			for _, e := range errs {
				if !placed.MatchString(e.Error()) {
					t.Errorf("error without file:line:column: %q", e.Error())
				}
			}
			if !strings.Contains(err.Error(), c.Want) {
				t.Errorf("errors lack %q:\n%s", c.Want, firstLines(err.Error(), 5))
			}
		})
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

func TestLoadStopsAtSizeCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(path, []byte("name: x\n"+strings.Repeat("#", 3*MaxFileSize)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path+":2:") || !strings.Contains(err.Error(), "larger than 1024 KiB") {
		t.Fatalf("Load of a 3 MiB file: %v", err)
	}
}

// TestPathsExpanded: every key naming a local path has ~ expanded when the stack is loaded, so
// no consumer sees a ~ (the provisioner once read "~/.ssh/id_ed25519.pub" literally).
func TestPathsExpanded(t *testing.T) {
	t.Setenv("HOME", "/home/ann")
	st, err := Parse("s.yaml", []byte("name: x\nprovider: aws\nimage: ami-1\nroles:\n  app: {count: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.SSH.Key != "/home/ann/.ssh/id_ed25519" || st.SSH.KnownHosts != "/home/ann/.ssh/known_hosts" {
		t.Errorf("aws defaults not expanded: key %q, known_hosts %q", st.SSH.Key, st.SSH.KnownHosts)
	}
	st, err = Parse("s.yaml", []byte("name: x\nssh:\n  key: ~/k/id\n  known_hosts: ~/k/kh\nsandbox:\n  dir: ~/sb\nroles:\n  app: {count: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.SSH.Key != "/home/ann/k/id" || st.SSH.KnownHosts != "/home/ann/k/kh" || st.Sandbox.Dir != "/home/ann/sb" {
		t.Errorf("written paths not expanded: %+v %+v", st.SSH, st.Sandbox)
	}
	st, err = Parse("s.yaml", []byte("name: x\nsandbox:\n  dir: ~/sb\nroles:\n  app: {count: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.SSH.Key != "/home/ann/sb/keys/id_ed25519" {
		t.Errorf("key defaulted from sandbox.dir ~/sb: %q", st.SSH.Key)
	}
}

func TestCheckFiles(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	data := "name: x\nprovider: aws\nimage: ami-1\nssh:\n  user: admin\n  key: ~/.ssh/id_ed25519\nroles:\n  app: {count: 1}\n"
	st, err := Parse("s.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(home, ".ssh", "id_ed25519")
	want := fmt.Sprintf("s.yaml:6:8: ssh.key: %s.pub does not exist; create it with: ssh-keygen -t ed25519 -f %s", key, key)
	if err := st.CheckFiles(); err == nil || err.Error() != want {
		t.Errorf("CheckFiles without a key:\n got %v\nwant %s", err, want)
	}
	if err := os.MkdirAll(filepath.Dir(key), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte("private"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.CheckFiles(); err == nil || !strings.Contains(err.Error(), "ssh-keygen -y -f "+key+" > "+key+".pub") {
		t.Errorf("CheckFiles with only the private key: %v", err)
	}
	if err := os.WriteFile(key+".pub", []byte("ssh-ed25519 AAAA x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := st.CheckFiles(); err != nil {
		t.Errorf("CheckFiles with the key: %v", err)
	}
	// A defaulted key points at its section, and a sandbox stack has nothing to check.
	st, err = Parse("s.yaml", []byte("name: x\nprovider: aws\nimage: ami-1\nssh:\n  user: admin\nroles:\n  app: {count: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(key + ".pub"); err != nil {
		t.Fatal(err)
	}
	if err := st.CheckFiles(); err == nil || !strings.HasPrefix(err.Error(), "s.yaml:5:3: ssh.key: ") {
		t.Errorf("defaulted key: %v", err)
	}
	st, err = Parse("s.yaml", []byte("name: x\nroles:\n  app: {count: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CheckFiles(); err != nil {
		t.Errorf("sandbox stack: %v", err)
	}
}
