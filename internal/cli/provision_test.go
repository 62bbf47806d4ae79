package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
)

func TestProvisionOptionsCaptured(t *testing.T) {
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	text := func() Output { return OutputText }

	var plan *PlanOptions
	cmd := NewCmdPlan(f, text, func(o *PlanOptions) error { plan = o; return nil })
	cmd.SetArgs([]string{"--out", "p.json", "--detailed-exitcode", "--replace", "instance.app[1]", "--replace", "lb.x"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if plan == nil || plan.Out != "p.json" || !plan.DetailedExitcode || !slices.Equal(plan.Replace, []string{"instance.app[1]", "lb.x"}) {
		t.Fatalf("plan options: %+v", plan)
	}

	var apply *ApplyOptions
	cmd = NewCmdApply(f, text, func(o *ApplyOptions) error { apply = o; return nil })
	cmd.SetArgs([]string{"saved.json", "-y"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if apply == nil || apply.PlanFile != "saved.json" || !apply.Yes {
		t.Fatalf("apply options: %+v", apply)
	}

	var inv *InventoryOptions
	cmd = NewCmdInventory(f, text, func(o *InventoryOptions) error { inv = o; return nil })
	cmd.SetArgs([]string{"--role", "pg"})
	if err := cmd.Execute(); err != nil || inv == nil || inv.Role != "pg" {
		t.Fatalf("inventory options: %+v, %v", inv, err)
	}
}

// TestProvisionUsageErrors: bad input exits 2 before any cloud is asked.
func TestProvisionUsageErrors(t *testing.T) {
	path := sandboxStackFile(t, "127.0.60.1", 18160, 15060, "  app: {count: 1}")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"apply", "a.json", "b.json"}, "at most one argument"},
		{[]string{"apply", "saved.json", "--replace", "instance.app[0]"}, "--replace cannot change a saved plan"},
		{[]string{"apply", filepath.Join(t.TempDir(), "missing.json")}, "instactl plan --out"},
		{[]string{"inventory", "--role", "nope"}, `--role "nope"`},
		{[]string{"plan", "--bogus"}, "unknown flag"},
		{[]string{"destroy", "extra"}, "takes no arguments"},
	} {
		_, stderr, code := run(t, append([]string{"--stack", path}, tc.args...)...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestProvisionSandbox: after `sandbox up`, plan and the sandbox agree (No changes.), apply has
// nothing to do, and inventory lists every host at its fixed 127.0.60.x address.
func TestProvisionSandbox(t *testing.T) {
	requireSandbox(t)
	path := sandboxStackFile(t, "127.0.60.1", 18160, 15060, `  app: {count: 2}
  pg: {count: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  memcached: {count: 1}`)
	st := sandboxUp(t, path)

	stdout, stderr, code := run(t, "--stack", path, "plan", "--detailed-exitcode")
	if code != 0 || strings.TrimSpace(stdout) != "No changes." {
		t.Fatalf("plan after sandbox up: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = run(t, "--stack", path, "apply")
	if code != 0 || strings.TrimSpace(stdout) != "No changes." {
		t.Fatalf("apply after sandbox up: exit %d\n%s%s", code, stdout, stderr)
	}

	stdout, stderr, code = run(t, "--stack", path, "inventory")
	if code != 0 {
		t.Fatalf("inventory: exit %d: %s", code, stderr)
	}
	for _, h := range st.Hosts() {
		addr, _ := st.Address(h)
		if !strings.HasPrefix(addr.String(), "127.0.60.") {
			t.Fatalf("%s has address %s", h.Name(), addr)
		}
		line := provisionLineOf(stdout, " "+h.Name()+" ")
		if !strings.Contains(line, " "+addr.String()+" ") || !strings.Contains(line, "running") {
			t.Errorf("inventory line of %s is %q, want its address %s and running:\n%s", h.Name(), line, addr, stdout)
		}
	}
	if line := provisionLineOf(stdout, " pg-0 "); !strings.Contains(line, "sdf:") {
		t.Errorf("pg-0 lists no volume: %q", line)
	}
	if line := provisionLineOf(stdout, " app-1 "); !strings.Contains(line, st.Name) {
		t.Errorf("app-1 is not behind the load balancer: %q", line)
	}

	stdout, _, code = run(t, "--stack", path, "inventory", "--role", "app", "-o", "json")
	var inv InventoryReport
	if err := json.Unmarshal([]byte(stdout), &inv); err != nil || code != 0 {
		t.Fatalf("inventory -o json: exit %d, %v\n%s", code, err, stdout)
	}
	var got []string
	for _, h := range inv.Hosts {
		want, _ := st.Address(stack.HostRef{Role: h.Role, Index: h.Index})
		got = append(got, fmt.Sprintf("%s-%d@%s", h.Role, h.Index, h.PrivateAddress))
		if h.PrivateAddress != want.String() || h.SSHPort != st.SSH.Port {
			t.Errorf("inventory host %+v, want address %s and ssh port %d", h, want, st.SSH.Port)
		}
	}
	if want := []string{"app-0@127.0.60.1", "app-1@127.0.60.2"}; !slices.Equal(got, want) || len(inv.Missing) != 0 {
		t.Errorf("inventory --role app = %v (missing %v), want %v", got, inv.Missing, want)
	}
}

// provisionLineOf returns the first line of text containing s.
func provisionLineOf(text, s string) string {
	for line := range strings.Lines(text) {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}
