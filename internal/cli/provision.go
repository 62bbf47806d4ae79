package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/spf13/cobra"
)

// addProvisionCommands adds plan, apply, destroy and inventory.
func addProvisionCommands(root *cobra.Command, f *Factory, out func() Output) {
	root.AddCommand(
		NewCmdPlan(f, out, nil),
		NewCmdApply(f, out, nil),
		NewCmdDestroy(f, out, nil),
		NewCmdInventory(f, out, nil),
	)
}

// PlanOptions are the inputs of `instactl plan`.
type PlanOptions struct {
	// Out is where the plan is saved as JSON for `instactl apply FILE`; empty: not saved.
	Out string
	// DetailedExitcode makes pending changes exit 2 (0: none, 1: error).
	DetailedExitcode bool
	// Replace lists the addresses allowed to be replaced when a change cannot be made in place.
	Replace []string
	// Verbose reports retried AWS calls on stderr.
	Verbose bool
}

// ApplyOptions are the inputs of `instactl apply`.
type ApplyOptions struct {
	// PlanFile is a plan saved by `plan --out`, applied exactly; empty: plan now.
	PlanFile string
	// Yes applies without asking.
	Yes     bool
	Replace []string
	Verbose bool
}

// DestroyOptions are the inputs of `instactl destroy`.
type DestroyOptions struct {
	Yes     bool
	Verbose bool
	// ForceDeleteData lets destroy delete a photo bucket that holds objects.
	ForceDeleteData bool
}

// ApplyReport is what apply and destroy print with -o json: the plan that was (or was not)
// applied, one result per change in plan order, and the closing summary line.
type ApplyReport struct {
	Stack   string             `json:"stack"`
	Plan    provision.Plan     `json:"plan"`
	Applied bool               `json:"applied"`
	Results []provision.Result `json:"results"`
	Summary string             `json:"summary"`
}

const provisionReplaceHelp = "allow replacing `ADDR` (instance.app[1], lb.NAME, or * for all) when a change cannot be made in place; repeatable"

// NewCmdPlan shows what apply would change. runF replaces the run in tests.
func NewCmdPlan(f *Factory, out func() Output, runF func(*PlanOptions) error) *cobra.Command {
	opts := &PlanOptions{}
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what apply would create, change and delete (changes nothing)",
		Long: `Compare the stack file with what the cloud holds (resources tagged with the stack's name; tags
are the only state) and print every change apply would make:

  +    create            ~    update in place      -    delete
  -/+  replace           !    refused: cannot be applied as the stack file asks

Updates list their field diffs. A change that cannot be made in place (an instance's type or
image, a volume's size, a load balancer's listener) is refused with the reason and the way out,
usually --replace ADDR. "No changes." means the cloud matches the stack file.

-o json prints the plan as data; --out FILE saves the same JSON so that 'instactl apply FILE'
applies exactly it, and refuses if the cloud changed in between.`,
		Example: `  instactl plan
  instactl plan --out plan.json && instactl apply plan.json
  instactl plan --detailed-exitcode     # exit 0: no changes, 2: changes pending, 1: error
  instactl plan --replace 'instance.app[1]'
  instactl plan -o json | jq -r '.changes[] | select(.action != "no-op") | .address'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			provisionVerbose(f, opts.Verbose)
			return provisionPlanRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Out, "out", "", "save the plan as JSON to `FILE` for 'instactl apply FILE'")
	cmd.Flags().BoolVar(&opts.DetailedExitcode, "detailed-exitcode", false, "exit 2 when changes are pending, 0 when there are none")
	cmd.Flags().StringArrayVar(&opts.Replace, "replace", nil, provisionReplaceHelp)
	cmd.Flags().BoolVarP(&opts.Verbose, "verbose", "v", false, provisionVerboseHelp)
	return cmd
}

func provisionPlanRun(ctx context.Context, f *Factory, out Output, opts *PlanOptions) error {
	_, _, plan, err := provisionCompute(ctx, f, opts.Replace)
	if err != nil {
		return err
	}
	plan = plan.NonNil()
	if err := render(f.IO, out, plan, plan.Render); err != nil {
		return err
	}
	if opts.Out != "" {
		if err := provision.SavePlan(opts.Out, plan); err != nil {
			return err
		}
		f.IO.Statusf("Saved the plan to %s. Apply exactly it with: instactl apply %s", opts.Out, opts.Out)
	}
	if opts.DetailedExitcode && plan.HasChanges() {
		return silentExit{ExitChanges}
	}
	return nil
}

// provisionCompute plans the stack file against its cloud.
func provisionCompute(ctx context.Context, f *Factory, replace []string) (*stack.Stack, cloud.Provider, provision.Plan, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, nil, provision.Plan{}, err
	}
	if err := st.CheckFiles(); err != nil {
		return nil, nil, provision.Plan{}, err // stack.Errors: exit 2
	}
	if st.Provider == "sandbox" {
		if _, err := os.Stat(st.SSH.Key + ".pub"); errors.Is(err, os.ErrNotExist) {
			return nil, nil, provision.Plan{}, usageErrorf("%s: sandbox %s was never brought up (no key %s.pub): run instactl sandbox up, which plans and applies the stack on this machine",
				st.Path, st.Name, st.SSH.Key)
		}
	}
	env, err := templates.AppEnv(st)
	if err != nil {
		return nil, nil, provision.Plan{}, withCode(ExitUsage, fmt.Errorf("%s: %w", st.Path, err))
	}
	desired, err := provision.Desired(st, func(h stack.HostRef) (string, error) { return templates.ForHost(st, h, env) })
	if err != nil {
		return nil, nil, provision.Plan{}, withCode(ExitUsage, fmt.Errorf("%s: %w", st.Path, err))
	}
	if err := desired.CheckReplace(replace); err != nil {
		return nil, nil, provision.Plan{}, withCode(ExitUsage, err)
	}
	desired.Replace = replace
	p, err := f.Provider(ctx)
	if err != nil {
		return nil, nil, provision.Plan{}, err
	}
	actual, err := p.Describe(ctx, st.Name) // its errors name the stack
	if err != nil {
		return nil, nil, provision.Plan{}, err
	}
	plan := provision.Compute(desired, actual)
	for _, addr := range plan.KeptReplacements(replace) {
		f.IO.Statusf("note: --replace %s: nothing forces its replacement, so it is kept", addr)
	}
	return st, p, plan, nil
}
