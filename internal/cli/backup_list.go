package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/instactl/instactl/backup"
	"github.com/spf13/cobra"
)

// BackupListOptions are the flags of `instactl backup list`.
type BackupListOptions struct {
	Target string
}

// NewCmdBackupList builds `instactl backup list`. runF replaces the run in tests.
func NewCmdBackupList(f *Factory, out func() Output, runF func(*BackupListOptions) error) *cobra.Command {
	o := &BackupListOptions{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the stack's backup sets, newest first",
		Long: `List every backup set of this stack, newest first, from the snapshots' tags: when it was
taken, the target and host, its state and size.

States: pending (snapshots still being copied), complete, partial (a snapshot is missing or
failed, or the freeze outlasted its budget: not restorable, prune removes it), verified (a
restore drill passed). "crash-consistent" marks a set taken without a freeze.`,
		Example: `  instactl backup list
  instactl backup list --target pg
  instactl backup list -o json | jq -r '.[] | select(.state == "verified") | .id'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Target != "" {
				if err := backupCheckTarget("--target", o.Target, false); err != nil {
					return err
				}
			}
			if runF != nil {
				return runF(o)
			}
			return backupListRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.Target, "target", "", "only sets of this target: pg or redis")
	return cmd
}

func backupListRun(ctx context.Context, f *Factory, out Output, o *BackupListOptions) error {
	d, err := backupSetup(ctx, f, false)
	if err != nil {
		return err
	}
	defer d.close()
	sets, err := backup.List(ctx, d.env)
	if err != nil {
		return err
	}
	shown := backup.OfTarget(sets, o.Target)
	return render(f.IO, out, shown, func(w io.Writer) error {
		if len(shown) == 0 {
			_, err := fmt.Fprintf(w, "No backup sets of stack %s. Take one with: instactl backup create\n", d.env.Stack.Name)
			return err
		}
		return backupRenderSets(w, shown)
	})
}

func backupRenderSets(w io.Writer, sets []backup.Set) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tTARGET\tHOST\tSTATE\tSIZE\tSET")
	for _, s := range sets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d GiB\t%s\n", s.Time.UTC().Format("2006-01-02 15:04:05Z"), s.Target,
			s.Host, backupStateText(s), s.SizeGiB, s.ID)
	}
	return tw.Flush()
}

func backupStateText(s backup.Set) string {
	if s.CrashConsistent {
		return s.State + " (crash-consistent)"
	}
	return s.State
}
