package provision

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// ErrBadPlanFile is wrapped by LoadPlan when a file cannot be read or is not a plan for the
// stack: the operator's input is wrong and nothing was changed.
var ErrBadPlanFile = errors.New("bad plan file")

// SavePlan writes plan as indented JSON, readable only by its owner: the user-data it carries
// holds the stack's internal addresses and settings.
func SavePlan(path string, plan Plan) error {
	b, err := json.MarshalIndent(plan.NonNil(), "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save the plan: %w", err)
	}
	return nil
}

// LoadPlan reads a plan saved by SavePlan and checks that it is for stackName. Its errors wrap
// ErrBadPlanFile and say how to make a good one.
func LoadPlan(path, stackName string) (Plan, error) {
	var plan Plan
	b, err := os.ReadFile(path)
	if err != nil {
		return plan, fmt.Errorf("%w: %v (save one with: instactl plan --out %s)", ErrBadPlanFile, err, path)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&plan); err != nil || plan.Stack == "" || plan.Fingerprint == "" {
		if err == nil {
			err = errors.New("no stack or fingerprint")
		}
		return plan, fmt.Errorf("%w: %s is not a plan saved by instactl plan --out (%v)", ErrBadPlanFile, path, err)
	}
	if plan.Stack != stackName {
		return plan, fmt.Errorf("%w: %s is a plan for stack %q, but the stack file names %q; pass the matching --stack",
			ErrBadPlanFile, path, plan.Stack, stackName)
	}
	return plan, nil
}

// NonNil returns the plan with an empty change list as [] rather than null in JSON.
func (p Plan) NonNil() Plan {
	if p.Changes == nil {
		p.Changes = []Change{}
	}
	return p
}

// CheckReplace rejects --replace addresses the desired state does not declare; "*" stands
// for every one.
func (d DesiredState) CheckReplace(replace []string) error {
	var valid []string
	for _, in := range d.Instances {
		valid = append(valid, in.Address())
	}
	if d.LoadBalancer != nil {
		valid = append(valid, "lb."+d.LoadBalancer.Name)
	}
	for _, addr := range replace {
		if addr != "*" && !slices.Contains(valid, addr) {
			return fmt.Errorf("--replace %q: stack %s has no such instance or load balancer; use one of %s, or * for all",
				addr, d.Stack, strings.Join(valid, ", "))
		}
	}
	return nil
}

// KeptReplacements lists the --replace addresses that nothing in the plan replaces: the
// operator asked, but the resource matches the stack and is kept.
func (p Plan) KeptReplacements(replace []string) []string {
	var kept []string
	for _, addr := range replace {
		if addr != "*" && !slices.ContainsFunc(p.Changes, func(c Change) bool { return c.Address == addr && c.ForceReplace }) {
			kept = append(kept, addr)
		}
	}
	return kept
}

// RefusedError is the error for a plan that holds refused changes: each with its reason, and
// the way out.
func RefusedError(refused []Change) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d refused change(s); nothing was applied:", len(refused))
	for _, c := range refused {
		fmt.Fprintf(&b, "\n  %s: %s", c.Address, c.Refuse)
	}
	b.WriteString("\nchange the stack file back, or allow the replacement with --replace ADDR")
	return errors.New(b.String())
}

// Outcome is the closing line of an apply: what was done, counted like the plan's summary.
func Outcome(plan Plan, results []Result) string {
	var add, change, destroy, failed int
	for i, r := range results {
		switch {
		case r.Action == NoOp:
		case r.Err != "" || r.Skipped:
			failed++
		case i < len(plan.Changes) && plan.Changes[i].ForceReplace:
			add++
			destroy++
		case r.Action == Create:
			add++
		case r.Action == Update:
			change++
		case r.Action == Delete:
			destroy++
		}
	}
	if failed > 0 {
		return fmt.Sprintf("Apply stopped: %d added, %d changed, %d destroyed, %d failed or skipped; run instactl plan and apply again to converge.",
			add, change, destroy, failed)
	}
	return fmt.Sprintf("Apply complete: %d added, %d changed, %d destroyed.", add, change, destroy)
}

// FailureError is the error that ends an apply that did not complete: one line per failed
// change with the provider's error (for AWS its error code and message), what was made before
// the failure, and the next step. err is what Apply returned.
func FailureError(plan Plan, results []Result, err error) error {
	var failed, made []string
	skipped := 0
	for i, r := range results {
		switch {
		case r.Action == NoOp:
		case r.Skipped:
			skipped++
		case r.Err != "":
			failed = append(failed, fmt.Sprintf("\n  %s: %s", r.Address, r.Err))
		default:
			made = append(made, strings.TrimSpace(r.Address+" "+ResultID(plan, i, r)))
		}
	}
	var b strings.Builder
	if len(failed) == 0 { // interrupted: nothing failed by itself
		b.WriteString(err.Error())
	} else {
		fmt.Fprintf(&b, "apply %s: %d change(s) failed, %d skipped because of them:%s", plan.Stack, len(failed), skipped, strings.Join(failed, ""))
	}
	if len(made) > 0 {
		fmt.Fprintf(&b, "\nmade before the failure and kept (%d): %s", len(made), strings.Join(made, ", "))
	} else {
		b.WriteString("\nno change was completed")
	}
	b.WriteString("\nfix the cause and run instactl apply again: it picks up where this run stopped, without duplicates")
	return errors.New(b.String())
}

// ResultID is the id result i acted on, or the name of a key pair or load balancer (which
// have no other id).
func ResultID(plan Plan, i int, r Result) string {
	if r.ID != "" || i >= len(plan.Changes) {
		return r.ID
	}
	switch c := plan.Changes[i]; {
	case c.KeyPair != nil:
		return c.KeyPair.Name
	case c.LoadBalancer != nil:
		return c.LoadBalancer.Name
	}
	return plan.Changes[i].Name
}

// Text says what happened to one change: "created i-0abc", or with withDuration "created in
// 1.2s"; a failed or skipped change says so with its cause, whole.
func (r Result) Text(withDuration bool) string {
	var s string
	switch {
	case r.Skipped:
		return "skipped: " + strings.TrimPrefix(r.Err, "skipped: ")
	case r.Err != "":
		return "FAILED: " + r.Err
	case r.Action == Create:
		s = "created"
	case r.Action == Update:
		s = "updated"
	case r.Action == Delete:
		s = "deleted"
	}
	if !withDuration {
		if r.ID != "" {
			s += " " + r.ID
		}
		return s
	}
	return fmt.Sprintf("%s in %s", s, r.Duration.Round(10*time.Millisecond))
}
