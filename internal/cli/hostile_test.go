package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHostileStackFiles: files written to break the parser are refused by validate and by every
// command that loads the stack, through the real command line: exit 2, every problem at
// file:line:column, no panic. (stack's own table, TestHostileFiles, covers more variants.)
func TestHostileStackFiles(t *testing.T) {
	var lol strings.Builder // "billion laughs": nine levels of nine aliases, used where decoded
	lol.WriteString("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&lol, "l%d: &l%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 9), ", "))
	}
	lol.WriteString("name: x\nroles:\n  app: {count: 1}\ndeploy:\n  batches: *l9\n")
	var aliases strings.Builder
	aliases.WriteString("name: x\nbase: &b {count: 1}\nroles:\n")
	for i := 0; i < 150; i++ {
		fmt.Fprintf(&aliases, "  r%d: *b\n", i)
	}
	files := []struct{ name, data, want string }{
		{"billion laughs", lol.String(), `unknown key "l9"`},
		{"alias flood", aliases.String(), "more than 100 aliases"},
		{"binary garbage", "\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00>\x00", "control character 0x7f"},
		{"tabs", "name: x\nroles:\n\tapp: {count: 1}\n", ":3:1: invalid YAML: found character that cannot start any token (a tab"},
		{"huge number", "name: x\nroles:\n  app: {count: 99999999999999999999999}\n", `:3:16: roles.app.count: expected a whole number`},
		{"huge count", "name: x\nroles:\n  app: {count: 2000000000}\n", ":3:16: roles.app.count: must be at most 1000"},
		{"wrong type", "name: x\nroles: [app, pg]\n", ":2:8: roles: expected a mapping of role name to role"},
		{"unknown lb role", "name: x\nroles:\n  app: {count: 1}\nload_balancer:\n  target_role: nope\n", ":5:16: load_balancer.target_role: names no role; declared roles: app"},
		{"unknown deploy role", "name: x\nroles:\n  app: {count: 1}\ndeploy:\n  role: nope\n", ":5:9: deploy.role: names no role"},
		{"unknown backup target", "name: x\nroles:\n  app: {count: 1}\nbackup:\n  targets: [nope]\n", ":5:13: backup.targets[0]: names no role"},
		{"over 1 MiB", "name: x\n" + strings.Repeat("# padding\n", 110000), "larger than 1024 KiB"},
	}
	commands := [][]string{
		{"validate"}, {"plan"}, {"apply", "--yes"}, {"destroy", "--yes"}, {"inventory"}, {"deploy"},
		{"rollback"}, {"releases"}, {"lock", "status"}, {"run", "--", "true"}, {"status"},
		{"sandbox", "up"}, {"sandbox", "down"}, {"sandbox", "status"}, {"backup", "list"},
		{"backup", "create"}, {"shard", "map"}, {"shard", "init"}, {"render", "app"},
	}
	dir := t.TempDir()
	for _, f := range files {
		t.Run(f.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(f.name, " ", "-")+".yaml")
			if err := os.WriteFile(path, []byte(f.data), 0o644); err != nil {
				t.Fatal(err)
			}
			placed := regexp.MustCompile(`^(error: )?` + regexp.QuoteMeta(path) + `:\d+:\d+: `)
			for _, args := range commands {
				stdout, stderr, code := run(t, append([]string{"--stack", path}, args...)...)
				out := stdout + stderr
				if code != ExitUsage {
					t.Errorf("%s: exit %d, want 2\n%s", strings.Join(args, " "), code, out)
					continue
				}
				if !strings.Contains(out, path+f.want) && !strings.Contains(out, f.want) {
					t.Errorf("%s: output lacks %q:\n%s", strings.Join(args, " "), f.want, out)
				}
				for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
					if !placed.MatchString(l) {
						t.Errorf("%s: a line without file:line:column: %q", strings.Join(args, " "), l)
						break
					}
				}
			}
		})
	}
}
