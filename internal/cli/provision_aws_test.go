package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/cloudtest"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// provisionAWSStack writes an AWS stack file whose SSH key (a fresh public key) lives next to it.
// roles is the indented YAML of the roles section.
func provisionAWSStack(t *testing.T, dir, name, roles string) string {
	t.Helper()
	key := filepath.Join(dir, "id_ed25519")
	if _, err := os.Stat(key + ".pub"); err != nil {
		if err := os.WriteFile(key+".pub", []byte(cloudtest.PublicKey(t)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := fmt.Sprintf("name: %s\nprovider: aws\nimage: ami-785db401\nssh:\n  key: %s\nroles:\n%s\n", name, key, roles)
	f, err := os.CreateTemp(dir, name+"-*.yaml") // one file per variant of the stack
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// provisionAWSCLI runs the independent aws command line against moto and decodes its JSON.
func provisionAWSCLI(t *testing.T, endpoint string, out any, args ...string) {
	t.Helper()
	bin := testenv.Require(t, "aws", "awscli")
	cmd := exec.Command(bin, append([]string{"--endpoint-url", endpoint, "--output", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "AWS_DEFAULT_REGION=us-east-1")
	b, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Errorf("aws %s: %v\n%s", strings.Join(args, " "), err, stderr)
		return
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Errorf("aws %s: %v", strings.Join(args, " "), err)
	}
}

type provisionTag struct{ Key, Value string }

func provisionTagOf(ts []provisionTag, k string) string {
	for _, t := range ts {
		if t.Key == k {
			return t.Value
		}
	}
	return ""
}

// provisionSeen is what the aws CLI sees of one stack.
type provisionSeen struct {
	hosts   []string          // "app[0]" of every live instance tagged with the stack, sorted
	ids     map[string]string // "app[0]" -> instance id
	volumes int
	groups  int
	keys    int
	lb      []string // instance ids behind the stack's ELB; nil when there is no ELB
}

// provisionSee lists, through the aws CLI (concurrently: each start costs Python), every live
// resource tagged with stackName.
func provisionSee(t *testing.T, endpoint, stackName string) provisionSeen {
	t.Helper()
	filter := "Name=tag:" + cloud.TagStack + ",Values=" + stackName
	var (
		di struct {
			Reservations []struct {
				Instances []struct {
					InstanceId string
					Tags       []provisionTag
				}
			}
		}
		dv struct{ Volumes []struct{ VolumeId string } }
		dg struct{ SecurityGroups []struct{ GroupId string } }
		dk struct{ KeyPairs []struct{ KeyName string } }
		dl struct {
			LoadBalancerDescriptions []struct {
				LoadBalancerName string
				Instances        []struct{ InstanceId string }
			}
		}
	)
	calls := []func(){
		func() {
			provisionAWSCLI(t, endpoint, &di, "ec2", "describe-instances", "--filters", filter,
				"Name=instance-state-name,Values=pending,running,stopping,stopped")
		},
		func() { provisionAWSCLI(t, endpoint, &dv, "ec2", "describe-volumes", "--filters", filter) },
		func() { provisionAWSCLI(t, endpoint, &dg, "ec2", "describe-security-groups", "--filters", filter) },
		func() { provisionAWSCLI(t, endpoint, &dk, "ec2", "describe-key-pairs", "--filters", filter) },
		func() { provisionAWSCLI(t, endpoint, &dl, "elb", "describe-load-balancers") },
	}
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Go(c)
	}
	wg.Wait()
	s := provisionSeen{ids: map[string]string{}, volumes: len(dv.Volumes), groups: len(dg.SecurityGroups), keys: len(dk.KeyPairs)}
	for _, r := range di.Reservations {
		for _, in := range r.Instances {
			k := fmt.Sprintf("%s[%s]", provisionTagOf(in.Tags, cloud.TagRole), provisionTagOf(in.Tags, cloud.TagIndex))
			s.hosts = append(s.hosts, k)
			s.ids[k] = in.InstanceId
		}
	}
	slices.Sort(s.hosts)
	for _, lb := range dl.LoadBalancerDescriptions {
		if lb.LoadBalancerName == provision.LoadBalancerName(stackName) {
			s.lb = []string{}
			for _, in := range lb.Instances {
				s.lb = append(s.lb, in.InstanceId)
			}
			slices.Sort(s.lb)
		}
	}
	return s
}

// provisionRunTTY is run with stdin a terminal that types input.
func provisionRunTTY(t *testing.T, input string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	io := &IOStreams{In: strings.NewReader(input), Out: &out, ErrOut: &errOut, InTTY: true}
	code := Run(context.Background(), io, args)
	return out.String(), errOut.String(), code
}

// provisionFailing fails the creation of one host, as a cloud that runs out of capacity would.
type provisionFailing struct {
	cloud.Provider
	role  string
	index int
}

func (p provisionFailing) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (cloud.Instance, error) {
	if spec.Role == p.role && spec.Index == p.index {
		return cloud.Instance{}, errors.New("injected failure")
	}
	return p.Provider.CreateInstance(ctx, spec)
}

// provisionFailingApply runs `apply --yes` on path with the creation of role[index] failing.
func provisionFailingApply(t *testing.T, path, role string, index int) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	f := NewFactory(&IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, &path)
	real := f.Provider
	f.Provider = func(ctx context.Context) (cloud.Provider, error) {
		p, err := real(ctx)
		return provisionFailing{Provider: p, role: role, index: index}, err
	}
	cmd := NewCmdApply(f, func() Output { return OutputText }, nil)
	cmd.SetArgs([]string{"--yes"})
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(context.Background())
	if err != nil {
		fmt.Fprintf(&errOut, "error: %v\n", err)
	}
	return out.String(), errOut.String(), exitCode(err)
}

// provisionPlanned lists the hosts a plan creates, as "app[0]", sorted.
func provisionPlanned(p provision.Plan) []string {
	var out []string
	for _, c := range p.Changes {
		if c.Kind == provision.KindInstance && c.Action == provision.Create {
			out = append(out, fmt.Sprintf("%s[%d]", c.Instance.Role, c.Instance.Index))
		}
	}
	slices.Sort(out)
	return out
}

const provisionAWSRoles = `  app: {count: 2}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  memcached: {count: 1}`

// TestProvisionAWS drives plan, apply, inventory and destroy against moto through the real
// AWS SDK, and checks the cloud with the independent aws CLI.
func TestProvisionAWS(t *testing.T) {
	if testing.Short() {
		t.Skip("moto integration test; -short")
	}
	endpoint := testenv.Moto(t)
	testenv.Require(t, "aws", "awscli")
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	dir := t.TempDir()
	path := provisionAWSStack(t, dir, "igcli", provisionAWSRoles)
	planFile := filepath.Join(dir, "plan.json")

	// plan: every resource is a create, and --detailed-exitcode says changes are pending.
	stdout, stderr, code := run(t, "--stack", path, "plan", "--detailed-exitcode")
	if code != ExitChanges {
		t.Fatalf("plan --detailed-exitcode: exit %d, want 2\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"  + instance.app[0]", "  + instance.pg[1]", "  + volume.pg[1].sdf", "  + lb.igcli",
		"  + registration.app[1]", "  + key.igcli", `type:`, "Plan: 20 to add, 0 to change, 0 to destroy."} {
		if !strings.Contains(stdout, want) {
			t.Errorf("plan text lacks %q:\n%s", want, stdout)
		}
	}

	// plan --out saves the same JSON -o json prints.
	stdout, stderr, code = run(t, "--stack", path, "plan", "--out", planFile, "-o", "json")
	if code != 0 || !strings.Contains(stderr, "instactl apply "+planFile) {
		t.Fatalf("plan --out: exit %d: %s", code, stderr)
	}
	var printed, saved provision.Plan
	b, err := os.ReadFile(planFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(stdout), &printed); err != nil {
		t.Fatalf("plan -o json: %v\n%s", err, stdout)
	}
	if err := json.Unmarshal(b, &saved); err != nil || saved.Fingerprint != printed.Fingerprint || len(saved.Changes) != 20 {
		t.Fatalf("saved plan: %v, %d changes, fingerprint %q vs printed %q", err, len(saved.Changes), saved.Fingerprint, printed.Fingerprint)
	}
	planned := provisionPlanned(saved)

	// apply FILE applies exactly the saved plan.
	stdout, stderr, code = run(t, "--stack", path, "apply", planFile, "--yes")
	if code != 0 {
		t.Fatalf("apply %s: exit %d\n%s%s", planFile, code, stdout, stderr)
	}
	for _, want := range []string{"+ instance.app[1]", "created in", "Apply complete: 20 added, 0 changed, 0 destroyed."} {
		if !strings.Contains(stdout, want) {
			t.Errorf("apply output lacks %q:\n%s", want, stdout)
		}
	}
	seen := provisionSee(t, endpoint, "igcli")
	if !slices.Equal(seen.hosts, planned) || seen.volumes != 2 || seen.groups != 4 || seen.keys != 1 {
		t.Errorf("aws CLI sees hosts %v, %d volumes, %d groups, %d keys; planned hosts %v, 2 volumes, 4 groups, 1 key",
			seen.hosts, seen.volumes, seen.groups, seen.keys, planned)
	}
	if want := []string{seen.ids["app[0]"], seen.ids["app[1]"]}; !slices.Equal(seen.lb, slices.Sorted(slices.Values(want))) {
		t.Errorf("aws CLI sees %v behind the ELB, want the app hosts %v", seen.lb, want)
	}

	// The cloud now matches: No changes, exit 0 even with --detailed-exitcode.
	stdout, _, code = run(t, "--stack", path, "plan", "--detailed-exitcode")
	if code != 0 || strings.TrimSpace(stdout) != "No changes." {
		t.Fatalf("second plan: exit %d\n%s", code, stdout)
	}
	stdout, _, code = run(t, "--stack", path, "apply")
	if code != 0 || strings.TrimSpace(stdout) != "No changes." {
		t.Fatalf("apply with nothing to do: exit %d\n%s", code, stdout)
	}

	// The saved plan is stale now: refused, nothing changed.
	_, stderr, code = run(t, "--stack", path, "apply", planFile)
	if code != ExitError || !strings.Contains(stderr, "changed since the plan was computed") || !strings.Contains(stderr, "run instactl plan again") {
		t.Fatalf("stale plan: exit %d, want 1 and a hint to plan again: %s", code, stderr)
	}

	// Scaling up without --yes on a non-terminal stdin is refused with the fix.
	path3 := provisionAWSStack(t, dir, "igcli", strings.Replace(provisionAWSRoles, "app: {count: 2}", "app: {count: 3}", 1))
	stdout, stderr, code = run(t, "--stack", path3, "apply")
	if code != ExitUsage || !strings.Contains(stdout, "+ instance.app[2]") || !strings.Contains(stderr, "--yes") {
		t.Fatalf("apply without --yes: exit %d, want 2 with the plan and a hint about --yes\n%s%s", code, stdout, stderr)
	}

	// On a terminal apply asks; any answer but "yes" cancels and changes nothing.
	stdout, stderr, code = provisionRunTTY(t, "no\n", "--stack", path3, "apply")
	if code != ExitError || !strings.Contains(stderr, "Apply these changes to stack \"igcli\"?") || !strings.Contains(stderr, "nothing was changed") {
		t.Fatalf("apply answered no: exit %d, want 1\n%s%s", code, stdout, stderr)
	}

	// A failure halfway: what was done is reported, the exit code says partial (5), and the
	// next apply converges.
	path4 := provisionAWSStack(t, dir, "igcli", strings.Replace(provisionAWSRoles, "app: {count: 2}", "app: {count: 4}", 1))
	stdout, stderr, code = provisionFailingApply(t, path4, "app", 3)
	if code != ExitError || !strings.Contains(stdout, "+ instance.app[2]") || !strings.Contains(stdout, "FAILED: injected failure") ||
		!strings.Contains(stdout, "skipped") || !strings.Contains(stdout, "Apply stopped: 1 added, 0 changed, 0 destroyed, 3 failed or skipped") {
		t.Fatalf("apply with a failing host: exit %d, want 5\n%s%s", code, stdout, stderr)
	}
	t.Logf("apply with a failing host:\n%s%s", stdout[strings.Index(stdout, "Plan:"):], stderr)
	if stdout, stderr, code = run(t, "--stack", path4, "apply", "--yes"); code != 0 || !strings.Contains(stdout, "Apply complete: 3 added, 0 changed, 0 destroyed.") {
		t.Fatalf("apply after the failure: exit %d\n%s%s", code, stdout, stderr)
	}
	if stdout, stderr, code = run(t, "--stack", path, "apply", "--yes"); code != 0 || !strings.Contains(stdout, "Apply complete: 0 added, 0 changed, 4 destroyed.") {
		t.Fatalf("scale back to 2: exit %d\n%s%s", code, stdout, stderr)
	}

	// A type change is refused with the reason; nothing is applied, even with --yes.
	pathType := provisionAWSStack(t, dir, "igcli", strings.Replace(provisionAWSRoles, "memcached: {count: 1}", "memcached: {count: 1, instance_type: m5.large}", 1))
	stdout, _, _ = run(t, "--stack", pathType, "plan")
	if !strings.Contains(stdout, "  ! instance.memcached[0]") || !strings.Contains(stdout, `type: "t3.medium" -> "m5.large"`) ||
		!strings.Contains(stdout, "--replace instance.memcached[0]") {
		t.Errorf("plan with a type change does not explain the refusal:\n%s", stdout)
	}
	_, stderr, code = run(t, "--stack", pathType, "apply", "--yes")
	if code != ExitUsage || !strings.Contains(stderr, "refused") || !strings.Contains(stderr, "instance.memcached[0]") {
		t.Fatalf("apply of a refused change: exit %d, want 2: %s", code, stderr)
	}
	if _, stderr, code := run(t, "--stack", pathType, "plan", "--replace", "instance.nope[0]"); code != ExitUsage || !strings.Contains(stderr, "instance.memcached[0]") {
		t.Errorf("--replace of an unknown address: exit %d: %s", code, stderr)
	}
	// --replace allows it: the host is replaced, the others are kept.
	stdout, stderr, code = provisionRunTTY(t, "yes\n", "--stack", pathType, "apply", "--replace", "instance.memcached[0]")
	if code != 0 || !strings.Contains(stdout, "-/+ instance.memcached[0]") || !strings.Contains(stdout, "Apply complete: 1 added, 0 changed, 1 destroyed.") {
		t.Fatalf("apply --replace: exit %d\n%s%s", code, stdout, stderr)
	}

	// inventory -o json lists every host with its fixed address, volumes and LB membership.
	stdout, stderr, code = run(t, "--stack", pathType, "inventory", "-o", "json")
	var inv InventoryReport
	if err := json.Unmarshal([]byte(stdout), &inv); err != nil || code != 0 {
		t.Fatalf("inventory: exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
	st, err := stack.Load(pathType)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range inv.Hosts {
		got = append(got, fmt.Sprintf("%s[%d]", h.Role, h.Index))
		want, _ := st.Address(stack.HostRef{Role: h.Role, Index: h.Index})
		if h.PrivateAddress != want.String() || h.ID == "" || h.State != "running" {
			t.Errorf("inventory host %+v, want private address %s, an id, running", h, want)
		}
		if (h.Role == "pg") != (len(h.Volumes) == 1) || (h.Role == "app") != (len(h.LoadBalancers) == 1) {
			t.Errorf("inventory host %s[%d]: volumes %v, load balancers %v", h.Role, h.Index, h.Volumes, h.LoadBalancers)
		}
	}
	if !slices.Equal(got, planned) || len(inv.Missing) != 0 {
		t.Errorf("inventory lists %v (missing %v), want %v", got, inv.Missing, planned)
	}
	stdout, _, code = run(t, "--stack", pathType, "inventory", "--role", "pg")
	if code != 0 || !strings.Contains(stdout, "pg-1") || strings.Contains(stdout, "app-0") || !strings.Contains(stdout, "sdf:vol-") {
		t.Errorf("inventory --role pg: exit %d\n%s", code, stdout)
	}

	// Another stack in the same account, which destroy must leave alone.
	other := provisionAWSStack(t, dir, "othercli", "  app: {count: 1}")
	if _, stderr, code := run(t, "--stack", other, "apply", "--yes"); code != 0 {
		t.Fatalf("apply other stack: exit %d: %s", code, stderr)
	}

	// destroy without --yes on a non-terminal is refused; with --yes everything goes.
	if _, stderr, code := run(t, "--stack", pathType, "destroy"); code != ExitUsage || !strings.Contains(stderr, "--yes") {
		t.Fatalf("destroy without --yes: exit %d: %s", code, stderr)
	}
	if _, stderr, code := provisionRunTTY(t, "yes\n", "--stack", pathType, "destroy"); code != ExitError || !strings.Contains(stderr, "Type the stack name") {
		t.Fatalf("destroy confirmed with yes instead of the stack name: exit %d: %s", code, stderr)
	}
	stdout, stderr, code = run(t, "--stack", pathType, "destroy", "--yes")
	if code != 0 || !strings.Contains(stdout, "- instance.pg[0]") || !strings.Contains(stdout, "0 added, 0 changed, 18 destroyed.") {
		t.Fatalf("destroy: exit %d\n%s%s", code, stdout, stderr)
	}
	if s := provisionSee(t, endpoint, "igcli"); len(s.hosts)+s.volumes+s.groups+s.keys != 0 || s.lb != nil {
		t.Errorf("after destroy the aws CLI still sees %+v", s)
	}
	if s := provisionSee(t, endpoint, "othercli"); len(s.hosts) != 1 || s.groups != 2 || s.keys != 1 || len(s.lb) != 1 {
		t.Errorf("destroy of igcli touched othercli: %+v", s)
	}
	stdout, _, code = run(t, "--stack", pathType, "destroy")
	if code != 0 || strings.TrimSpace(stdout) != "No changes." {
		t.Errorf("second destroy: exit %d\n%s", code, stdout)
	}
}
