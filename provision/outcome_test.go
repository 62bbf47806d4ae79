package provision

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSaveAndLoadPlan(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.json")
	plan := Plan{Stack: "demo", Fingerprint: "abc"}
	if err := SavePlan(path, plan); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("saved plan: %v %v, want mode 0600", fi, err)
	}
	got, err := LoadPlan(path, "demo")
	if err != nil || got.Stack != "demo" || got.Fingerprint != "abc" || got.Changes == nil {
		t.Fatalf("LoadPlan = %+v, %v", got, err)
	}
	garbage := filepath.Join(dir, "garbage.json")
	if err := os.WriteFile(garbage, []byte(`{"stack":"demo","surprise":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ path, stack, want string }{
		"missing file": {filepath.Join(dir, "nope.json"), "demo", "instactl plan --out"},
		"not a plan":   {garbage, "demo", "is not a plan saved by instactl plan --out"},
		"other stack":  {path, "prod", `a plan for stack "demo", but the stack file names "prod"`},
	} {
		_, err := LoadPlan(tc.path, tc.stack)
		if !errors.Is(err, ErrBadPlanFile) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrBadPlanFile saying %q", name, err, tc.want)
		}
	}
}

func TestCheckReplaceAndKept(t *testing.T) {
	d := DesiredState{Stack: "demo", Instances: []InstanceSpec{{Role: "app", Index: 0}}}
	if err := d.CheckReplace([]string{"instance.app[0]", "*"}); err != nil {
		t.Errorf("declared address refused: %v", err)
	}
	err := d.CheckReplace([]string{"instance.app[7]"})
	if err == nil || !strings.Contains(err.Error(), "use one of instance.app[0]") {
		t.Errorf("undeclared address: %v, want the valid ones named", err)
	}
	p := Plan{Changes: []Change{{Address: "instance.app[0]", ForceReplace: true}, {Address: "instance.app[1]"}}}
	if kept := p.KeptReplacements([]string{"instance.app[0]", "instance.app[1]", "*"}); len(kept) != 1 || kept[0] != "instance.app[1]" {
		t.Errorf("KeptReplacements = %v, want [instance.app[1]]", kept)
	}
}

func TestOutcomeAndFailure(t *testing.T) {
	plan := Plan{Stack: "demo", Changes: []Change{
		{Address: "instance.app[0]", Action: Create},
		{Address: "instance.app[1]", Action: Create},
		{Address: "volume.pg[0].0", Action: Create},
		{Address: "instance.pg[0]", Action: Update, ForceReplace: true},
	}}
	ok := []Result{{Address: "instance.app[0]", Action: Create, ID: "i-1"}, {Address: "instance.app[1]", Action: Create, ID: "i-2"},
		{Address: "volume.pg[0].0", Action: Create, ID: "vol-1"}, {Address: "instance.pg[0]", Action: Update, ID: "i-3"}}
	if got := Outcome(plan, ok); got != "Apply complete: 4 added, 0 changed, 1 destroyed." {
		t.Errorf("Outcome = %q", got)
	}
	bad := []Result{ok[0], {Address: "instance.app[1]", Action: Create, Err: "InsufficientInstanceCapacity: " + strings.Repeat("x", 400) + " the end"},
		{Address: "volume.pg[0].0", Action: Create, Skipped: true, Err: "skipped: a dependency failed"}, ok[3]}
	if got := Outcome(plan, bad); !strings.HasPrefix(got, "Apply stopped: 2 added, 0 changed, 1 destroyed, 2 failed or skipped") {
		t.Errorf("Outcome = %q", got)
	}
	msg := FailureError(plan, bad, errors.New("apply failed")).Error()
	for _, want := range []string{"1 change(s) failed, 1 skipped", "the end", "made before the failure and kept (2): instance.app[0] i-1, instance.pg[0] i-3", "run instactl apply again"} {
		if !strings.Contains(msg, want) {
			t.Errorf("failure error lacks %q:\n%s", want, msg)
		}
	}
	if got := bad[2].Text(false); got != "skipped: a dependency failed" {
		t.Errorf("Text of a skipped change = %q", got)
	}
}
