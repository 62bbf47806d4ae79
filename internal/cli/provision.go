package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

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
}

// ApplyOptions are the inputs of `instactl apply`.
type ApplyOptions struct {
	// PlanFile is a plan saved by `plan --out`, applied exactly; empty: plan now.
	PlanFile string
	// Yes applies without asking.
	Yes     bool
	Replace []string
}

// DestroyOptions are the inputs of `instactl destroy`.
type DestroyOptions struct {
	Yes bool
}

// InventoryOptions are the inputs of `instactl inventory`.
type InventoryOptions struct {
	// Role limits the listing to one role; empty: every role.
	Role string
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

// InventoryReport is the stack's live hosts, by role then index.
type InventoryReport struct {
	Stack string           `json:"stack"`
	Hosts []provision.Host `json:"hosts"`
	// Missing are hosts the stack file declares that do not exist (yet).
	Missing []string `json:"missing,omitempty"`
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
			return provisionPlanRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Out, "out", "", "save the plan as JSON to `FILE` for 'instactl apply FILE'")
	cmd.Flags().BoolVar(&opts.DetailedExitcode, "detailed-exitcode", false, "exit 2 when changes are pending, 0 when there are none")
	cmd.Flags().StringArrayVar(&opts.Replace, "replace", nil, provisionReplaceHelp)
	return cmd
}

func provisionPlanRun(ctx context.Context, f *Factory, out Output, opts *PlanOptions) error {
	_, _, plan, err := provisionCompute(ctx, f, opts.Replace)
	if err != nil {
		return err
	}
	plan = provisionNonNil(plan)
	if err := render(f.IO, out, plan, plan.Render); err != nil {
		return err
	}
	if opts.Out != "" {
		if err := provisionSavePlan(opts.Out, plan); err != nil {
			return err
		}
		f.IO.Statusf("Saved the plan to %s. Apply exactly it with: instactl apply %s", opts.Out, opts.Out)
	}
	if opts.DetailedExitcode && plan.HasChanges() {
		return silentExit{ExitChanges}
	}
	return nil
}

// NewCmdApply makes the cloud match the stack file. runF replaces the run in tests.
func NewCmdApply(f *Factory, out func() Output, runF func(*ApplyOptions) error) *cobra.Command {
	opts := &ApplyOptions{}
	cmd := &cobra.Command{
		Use:   "apply [PLANFILE]",
		Short: "Create, change and delete cloud resources to match the stack file",
		Long: `Without PLANFILE: compute the plan, show it, ask for confirmation ("yes") and apply it. When
stdin is not a terminal apply cannot ask, so it refuses unless --yes is given.

With PLANFILE (saved by 'instactl plan --out'): apply exactly that plan, without asking again
(saving and reviewing it was the confirmation). If the cloud changed since the plan was made,
apply refuses and changes nothing: run plan again.

Changes run in dependency order, independent ones in parallel; each result is printed, then
the summary. A plan holding refused changes is not applied at all (exit 2). Every create is
idempotent, so after a failure or an interrupt, plan and apply again converge.`,
		Example: `  instactl apply
  instactl apply --yes                       # no prompt (CI, scripts)
  instactl plan --out plan.json && instactl apply plan.json
  instactl apply --replace 'instance.pg[1]'  # allow replacing a host whose type changed`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("apply takes at most one argument, a plan file saved by plan --out (got %q)", args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				opts.PlanFile = args[0]
				if len(opts.Replace) > 0 {
					return usageErrorf("--replace cannot change a saved plan; run instactl plan --replace ... --out %s again", opts.PlanFile)
				}
			}
			if runF != nil {
				return runF(opts)
			}
			return provisionApplyRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.Yes, "yes", "y", false, "apply without asking for confirmation")
	cmd.Flags().StringArrayVar(&opts.Replace, "replace", nil, provisionReplaceHelp)
	return cmd
}

func provisionApplyRun(ctx context.Context, f *Factory, out Output, opts *ApplyOptions) error {
	if opts.PlanFile != "" {
		st, err := f.Stack()
		if err != nil {
			return err
		}
		plan, err := provisionLoadPlan(opts.PlanFile, st.Name)
		if err != nil {
			return err
		}
		p, err := f.Provider(ctx)
		if err != nil {
			return err
		}
		return provisionExecute(ctx, f, out, p, plan, nil)
	}
	st, p, plan, err := provisionCompute(ctx, f, opts.Replace)
	if err != nil {
		return err
	}
	var confirm *provisionConfirm
	if !opts.Yes {
		confirm = &provisionConfirm{
			prompt: fmt.Sprintf("Apply these changes to stack %q? Only 'yes' is accepted: ", st.Name),
			answer: "yes",
			fix:    "review the plan and re-run with --yes, or save it with 'instactl plan --out plan.json' and apply it with 'instactl apply plan.json'",
		}
	}
	return provisionExecute(ctx, f, out, p, plan, confirm)
}

// NewCmdDestroy deletes everything the stack owns. runF replaces the run in tests.
func NewCmdDestroy(f *Factory, out func() Output, runF func(*DestroyOptions) error) *cobra.Command {
	opts := &DestroyOptions{}
	cmd := &cobra.Command{
		Use:   "destroy",
		Short: "Delete every cloud resource tagged with the stack, and nothing else",
		Long: `Plan the deletion of everything tagged with the stack's name: registrations, the load
balancer, instances, data volumes (and the data on them), security groups and the key pair.
Resources of other stacks and untagged resources are never touched. The plan is shown; on a
terminal you confirm by typing the stack's name, otherwise --yes is required.

Snapshots are kept. On the sandbox, 'instactl sandbox down' also stops moto and the LB.`,
		Example: `  instactl destroy
  instactl destroy --stack staging.yaml --yes`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return provisionDestroyRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.Yes, "yes", "y", false, "destroy without asking for confirmation")
	return cmd
}

func provisionDestroyRun(ctx context.Context, f *Factory, out Output, opts *DestroyOptions) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	p, err := f.Provider(ctx)
	if err != nil {
		return err
	}
	plan, err := provision.Destroy(ctx, p, st.Name)
	if err != nil {
		return err
	}
	var confirm *provisionConfirm
	if !opts.Yes {
		confirm = &provisionConfirm{
			prompt: fmt.Sprintf("Destroy everything of stack %q, data volumes included? There is no undo.\nType the stack name to confirm: ", st.Name),
			answer: st.Name,
			fix:    "review the plan and re-run with --yes",
		}
	}
	return provisionExecute(ctx, f, out, p, plan, confirm)
}

// NewCmdInventory lists the stack's live hosts. runF replaces the run in tests.
func NewCmdInventory(f *Factory, out func() Output, runF func(*InventoryOptions) error) *cobra.Command {
	opts := &InventoryOptions{}
	cmd := &cobra.Command{
		Use:   "inventory",
		Short: "List the stack's live hosts by role: ids, addresses, volumes, load balancer",
		Long: `List every host tagged with the stack, by role and index: instance id, private and public
address, SSH port, state, attached data volumes (device:id:size) and the load balancers it is
registered with. Hosts the stack file declares that do not exist are reported after the table.`,
		Example: `  instactl inventory
  instactl inventory --role pg
  instactl inventory -o json | jq -r '.hosts[] | select(.role == "app") | .private_address'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return provisionInventoryRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Role, "role", "", "list only the hosts of `ROLE`")
	return cmd
}

func provisionInventoryRun(ctx context.Context, f *Factory, out Output, opts *InventoryOptions) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	if opts.Role != "" && st.Role(opts.Role) == nil {
		var roles []string
		for _, r := range st.Roles {
			roles = append(roles, r.Name)
		}
		return usageErrorf("--role %q: stack %s has no such role (roles: %s)", opts.Role, st.Name, strings.Join(roles, ", "))
	}
	p, err := f.Provider(ctx)
	if err != nil {
		return err
	}
	hosts, err := provision.Inventory(ctx, p, st.Name)
	if err != nil {
		return err
	}
	rep := &InventoryReport{Stack: st.Name, Hosts: []provision.Host{}}
	live := map[stack.HostRef]bool{}
	for _, h := range hosts {
		if opts.Role == "" || h.Role == opts.Role {
			rep.Hosts = append(rep.Hosts, h)
			live[stack.HostRef{Role: h.Role, Index: h.Index}] = true
		}
	}
	for _, h := range st.Hosts() {
		if (opts.Role == "" || h.Role == opts.Role) && !live[h] {
			rep.Missing = append(rep.Missing, h.Name())
		}
	}
	return render(f.IO, out, rep, func(w io.Writer) error { return provisionRenderInventory(w, rep) })
}

func provisionRenderInventory(w io.Writer, rep *InventoryReport) error {
	if len(rep.Hosts) == 0 {
		fmt.Fprintf(w, "No hosts of stack %s exist.\n", rep.Stack)
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROLE\tHOST\tID\tPRIVATE\tPUBLIC\tSSH\tSTATE\tVOLUMES\tLB")
		for _, h := range rep.Hosts {
			var vols []string
			for _, v := range h.Volumes {
				vols = append(vols, fmt.Sprintf("%s:%s:%dG", strings.TrimPrefix(v.Device, "/dev/"), v.ID, v.SizeGiB))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", h.Role, stack.HostName(h.Role, h.Index), h.ID,
				orDash(h.PrivateAddress), orDash(h.PublicAddress), h.SSHPort, h.State,
				orDash(strings.Join(vols, ",")), orDash(strings.Join(h.LoadBalancers, ",")))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(rep.Missing) > 0 {
		fmt.Fprintf(w, "missing: %s declared in the stack file but not provisioned (run instactl plan)\n", strings.Join(rep.Missing, ", "))
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
	if err := provisionCheckReplace(desired, replace); err != nil {
		return nil, nil, provision.Plan{}, err
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
	for _, addr := range replace {
		if addr != "*" && !slices.ContainsFunc(plan.Changes, func(c provision.Change) bool { return c.Address == addr && c.ForceReplace }) {
			f.IO.Statusf("note: --replace %s: nothing forces its replacement, so it is kept", addr)
		}
	}
	return st, p, plan, nil
}

// provisionCheckReplace rejects --replace addresses the stack does not declare.
func provisionCheckReplace(d provision.DesiredState, replace []string) error {
	var valid []string
	for _, in := range d.Instances {
		valid = append(valid, in.Address())
	}
	if d.LoadBalancer != nil {
		valid = append(valid, "lb."+d.LoadBalancer.Name)
	}
	for _, addr := range replace {
		if addr != "*" && !slices.Contains(valid, addr) {
			return usageErrorf("--replace %q: stack %s has no such instance or load balancer; use one of %s, or * for all",
				addr, d.Stack, strings.Join(valid, ", "))
		}
	}
	return nil
}

func provisionSavePlan(path string, plan provision.Plan) error {
	b, err := json.MarshalIndent(plan, "", "  ")
	if err != nil {
		return err
	}
	// 0600: user-data in the plan carries the stack's internal addresses and settings.
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save the plan: %w", err)
	}
	return nil
}

func provisionLoadPlan(path, stackName string) (provision.Plan, error) {
	var plan provision.Plan
	b, err := os.ReadFile(path)
	if err != nil {
		return plan, usageErrorf("read plan file: %v (save one with: instactl plan --out %s)", err, path)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&plan); err != nil || plan.Stack == "" || plan.Fingerprint == "" {
		if err == nil {
			err = errors.New("no stack or fingerprint")
		}
		return plan, usageErrorf("%s is not a plan saved by instactl plan --out (%v)", path, err)
	}
	if plan.Stack != stackName {
		return plan, usageErrorf("%s is a plan for stack %q, but the stack file names %q; pass the matching --stack", path, plan.Stack, stackName)
	}
	return plan, nil
}

// provisionConfirm is how apply and destroy ask before changing anything.
type provisionConfirm struct {
	prompt string
	answer string // the exact reply that confirms
	fix    string // what to do when stdin is not a terminal
}

// ask returns nil when the operator confirmed, or the error that ends the command unchanged.
func (c *provisionConfirm) ask(io *IOStreams) error {
	if !io.InTTY {
		return usageErrorf("stdin is not a terminal, so instactl cannot ask for confirmation; nothing was changed: %s", c.fix)
	}
	fmt.Fprint(io.ErrOut, "\n"+c.prompt)
	line, err := bufio.NewReader(io.In).ReadString('\n')
	if err != nil && line == "" {
		return withCode(ExitError, fmt.Errorf("no answer (%v): cancelled, nothing was changed", err))
	}
	if strings.TrimSpace(line) != c.answer {
		return withCode(ExitError, fmt.Errorf("cancelled (the answer was not %q): nothing was changed", c.answer))
	}
	return nil
}

// provisionExecute shows plan, refuses it if it holds refused changes, asks confirm (nil: no
// question), applies it and reports every result.
func provisionExecute(ctx context.Context, f *Factory, out Output, p cloud.Provider, plan provision.Plan, confirm *provisionConfirm) error {
	plan = provisionNonNil(plan)
	rep := &ApplyReport{Stack: plan.Stack, Plan: plan, Results: []provision.Result{}, Summary: plan.Summary().String()}
	if out == OutputText {
		if err := plan.Render(f.IO.Out); err != nil {
			return err
		}
	}
	if !plan.HasChanges() {
		if out == OutputJSON {
			return render(f.IO, out, rep, nil)
		}
		return nil
	}
	if refused := plan.Refused(); len(refused) > 0 {
		if out == OutputJSON {
			if err := render(f.IO, out, rep, nil); err != nil {
				return err
			}
		}
		return provisionRefusedError(refused)
	}
	if confirm != nil {
		if out == OutputJSON && f.IO.InTTY {
			_ = plan.Render(f.IO.ErrOut)
		}
		if err := confirm.ask(f.IO); err != nil {
			return err
		}
	}
	var progress []provision.ApplyOption
	if f.IO.ErrTTY {
		progress = append(progress, provision.WithProgress(func(r provision.Result) {
			f.IO.Statusf("%3s %s: %s", r.Action.Symbol(), r.Address, provisionResultText(r, false))
		}))
	}
	results, err := provision.Apply(ctx, p, plan, progress...)
	switch {
	case errors.Is(err, provision.ErrStale):
		return withCode(ExitError, fmt.Errorf("%w; nothing was changed: run instactl plan again (and save it anew with --out)", err))
	case errors.Is(err, provision.ErrRefused):
		return provisionRefusedError(plan.Refused())
	case err != nil && results == nil:
		return err
	}
	rep.Applied = true
	rep.Results = results
	rep.Summary = provisionApplied(plan, results)
	if rerr := render(f.IO, out, rep, func(w io.Writer) error { return provisionRenderResults(w, plan, rep) }); rerr != nil {
		return rerr
	}
	if err != nil {
		return provisionFailure(plan, results, err)
	}
	return nil
}

// provisionFailure is the error that ends an apply that did not complete: one line per failed
// change with the provider's error (for AWS its error code and message), what was made before
// the failure, and the next step. Exit 5 when something was made, 1 when nothing was.
func provisionFailure(plan provision.Plan, results []provision.Result, err error) error {
	var failed, made []string
	skipped := 0
	for i, r := range results {
		switch {
		case r.Action == provision.NoOp:
		case r.Skipped:
			skipped++
		case r.Err != "":
			failed = append(failed, fmt.Sprintf("\n  %s: %s", r.Address, r.Err))
		default:
			made = append(made, strings.TrimSpace(r.Address+" "+provisionResultID(plan, i, r)))
		}
	}
	var b strings.Builder
	if len(failed) == 0 { // interrupted: nothing failed by itself
		b.WriteString(err.Error())
	} else {
		fmt.Fprintf(&b, "apply %s: %d change(s) failed, %d skipped because of them:%s", plan.Stack, len(failed), skipped, strings.Join(failed, ""))
	}
	// A failed apply exits 1 even when it made some resources: the stack is not what the file
	// says, and the re-run that finishes it is the next step either way.
	if len(made) > 0 {
		fmt.Fprintf(&b, "\nmade before the failure and kept (%d): %s", len(made), strings.Join(made, ", "))
	} else {
		b.WriteString("\nno change was completed")
	}
	b.WriteString("\nfix the cause and run instactl apply again: it picks up where this run stopped, without duplicates")
	return withCode(ExitError, errors.New(b.String()))
}

// provisionNonNil makes an empty plan's changes [] rather than null in JSON.
func provisionNonNil(plan provision.Plan) provision.Plan {
	if plan.Changes == nil {
		plan.Changes = []provision.Change{}
	}
	return plan
}

func provisionRefusedError(refused []provision.Change) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d refused change(s); nothing was applied:", len(refused))
	for _, c := range refused {
		fmt.Fprintf(&b, "\n  %s: %s", c.Address, c.Refuse)
	}
	b.WriteString("\nchange the stack file back, or allow the replacement with --replace ADDR")
	return withCode(ExitUsage, errors.New(b.String()))
}

// provisionApplied is the closing line: what was done, counted like the plan's summary.
func provisionApplied(plan provision.Plan, results []provision.Result) string {
	var add, change, destroy, failed int
	for i, r := range results {
		switch {
		case r.Action == provision.NoOp:
		case r.Err != "" || r.Skipped:
			failed++
		case i < len(plan.Changes) && plan.Changes[i].ForceReplace:
			add++
			destroy++
		case r.Action == provision.Create:
			add++
		case r.Action == provision.Update:
			change++
		case r.Action == provision.Delete:
			destroy++
		}
	}
	line := fmt.Sprintf("Apply complete: %d added, %d changed, %d destroyed.", add, change, destroy)
	if failed > 0 {
		line = fmt.Sprintf("Apply stopped: %d added, %d changed, %d destroyed, %d failed or skipped; run instactl plan and apply again to converge.",
			add, change, destroy, failed)
	}
	return line
}

func provisionRenderResults(w io.Writer, plan provision.Plan, rep *ApplyReport) error {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i, r := range rep.Results {
		if r.Action == provision.NoOp {
			continue
		}
		sym := r.Action.Symbol()
		if i < len(plan.Changes) && plan.Changes[i].ForceReplace {
			sym = "-/+"
		}
		fmt.Fprintf(tw, "%3s %s\t%s\t%s\n", sym, r.Address, orDash(provisionResultID(plan, i, r)), provisionResultText(r, true))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s\n", rep.Summary)
	return err
}

// provisionResultID is the id a result acted on, or the name of a key pair or load balancer
// (which have no other id).
func provisionResultID(plan provision.Plan, i int, r provision.Result) string {
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

func provisionResultText(r provision.Result, withDuration bool) string {
	var s string
	switch {
	case r.Skipped:
		return "skipped: " + strings.TrimPrefix(r.Err, "skipped: ")
	case r.Err != "":
		return "FAILED: " + r.Err
	case r.Action == provision.Create:
		s = "created"
	case r.Action == provision.Update:
		s = "updated"
	case r.Action == provision.Delete:
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
