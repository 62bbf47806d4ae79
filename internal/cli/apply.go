package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
	"github.com/spf13/cobra"
)

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
			provisionVerbose(f, opts.Verbose)
			return provisionApplyRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.Yes, "yes", "y", false, "apply without asking for confirmation")
	cmd.Flags().StringArrayVar(&opts.Replace, "replace", nil, provisionReplaceHelp)
	cmd.Flags().BoolVarP(&opts.Verbose, "verbose", "v", false, provisionVerboseHelp)
	return cmd
}

func provisionApplyRun(ctx context.Context, f *Factory, out Output, opts *ApplyOptions) error {
	if opts.PlanFile != "" {
		st, err := f.Stack()
		if err != nil {
			return err
		}
		plan, err := provision.LoadPlan(opts.PlanFile, st.Name)
		if err != nil {
			return withCode(ExitUsage, err) // wraps provision.ErrBadPlanFile
		}
		p, err := f.Provider(ctx)
		if err != nil {
			return err
		}
		return applyHints(f, st, plan, provisionExecute(ctx, f, out, p, plan, nil))
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
	return applyHints(f, st, plan, provisionExecute(ctx, f, out, p, plan, confirm))
}

// applyHints tells, after an apply that created something, what the stack still needs before
// it runs as its file says; it returns err unchanged. With backup.wal_archive the Postgres
// hosts archive WAL only once `wal install` put the archiver on them (apply does not: the
// hosts may still boot, and the binary must fit their architecture); until then pg_wal grows.
func applyHints(f *Factory, st *stack.Stack, plan provision.Plan, err error) error {
	if err != nil || plan.Summary().Add == 0 || !st.Backup.WALArchive {
		return err
	}
	f.IO.Statusf("next: instactl wal install, once the hosts have booted: backup.wal_archive is on, and the Postgres hosts keep their WAL in pg_wal until the archiver is on them (instactl backup verify --archive checks it)")
	return nil
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

On AWS the edge goes too: the DNS records the stack file names, the CDN, the app hosts' IAM
role and the photo bucket. A bucket that holds objects is refused, with their count, unless
--force-delete-data, which deletes every version of every object first.

Snapshots are kept. On the sandbox, 'instactl sandbox down' also stops moto and the LB.`,
		Example: `  instactl destroy
  instactl destroy --stack staging.yaml --yes
  instactl destroy --yes --force-delete-data   # the photo bucket holds photos: delete them too`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			provisionVerbose(f, opts.Verbose)
			return provisionDestroyRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.Yes, "yes", "y", false, "destroy without asking for confirmation")
	cmd.Flags().BoolVarP(&opts.Verbose, "verbose", "v", false, provisionVerboseHelp)
	cmd.Flags().BoolVar(&opts.ForceDeleteData, "force-delete-data", false, "also delete a photo bucket that holds objects (every version; without it such a bucket is refused)")
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
	var dopts []provision.DestroyOption
	if opts.ForceDeleteData {
		dopts = append(dopts, provision.ForceDeleteData())
	}
	plan, err := provision.Destroy(ctx, p, st.Name, dopts...)
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
	plan = plan.NonNil()
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
		return withCode(ExitUsage, provision.RefusedError(refused))
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
			f.IO.Statusf("%3s %s: %s", r.Action.Symbol(), r.Address, r.Text(false))
		}))
	}
	results, err := provision.Apply(ctx, p, plan, progress...)
	switch {
	case errors.Is(err, provision.ErrStale):
		return withCode(ExitError, fmt.Errorf("%w; nothing was changed: run instactl plan again (and save it anew with --out)", err))
	case errors.Is(err, provision.ErrRefused):
		return withCode(ExitUsage, provision.RefusedError(plan.Refused()))
	case err != nil && results == nil:
		return err
	}
	rep.Applied = true
	rep.Results = results
	rep.Summary = provision.Outcome(plan, results)
	if rerr := render(f.IO, out, rep, func(w io.Writer) error { return provisionRenderResults(w, plan, rep) }); rerr != nil {
		return rerr
	}
	if err != nil {
		// A failed apply exits 1 even when it made some resources: the stack is not what the
		// file says, and the re-run that finishes it is the next step either way.
		return withCode(ExitError, provision.FailureError(plan, results, err))
	}
	return nil
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
		fmt.Fprintf(tw, "%3s %s\t%s\t%s\n", sym, r.Address, orDash(provision.ResultID(plan, i, r)), r.Text(true))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s\n", rep.Summary)
	return err
}
