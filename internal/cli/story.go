package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/instactl/instactl/internal/story"
	"github.com/spf13/cobra"
)

// StoryOptions are the inputs of `instactl demo`.
type StoryOptions struct {
	Source  string
	WorkDir string
	Rate    float64
	Settle  time.Duration
	Moves   int
}

// NewCmdDemo runs the main job end to end on the sandbox.
func NewCmdDemo(f *Factory, out func() Output) *cobra.Command {
	opts := &StoryOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a day of the stack on the sandbox under live traffic and report it",
		Long: `Tell the whole story on the local sandbox, with the same commands an operator runs:
  1. sandbox up, apply (No changes.), inventory
  2. shard init, deploy v1, start the load generator through the load balancer
  3. a rolling deploy of v2 under load
  4. backup create of the Postgres and Redis replicas, backup verify (a restore drill)
  5. shard move of the busiest shards to the other node under load, shard map
  6. stop the load, verify every acknowledged write, print the summary
  7. write a self-contained HTML report (inline SVG) of latency and throughput with every
     operation on the timeline
The sandbox is left up for exploration.`,
		Example: `  instactl --stack examples/sandbox.yaml demo
  instactl --stack examples/sandbox.yaml demo --rate 50 --settle 10s --workdir /tmp/story
  instactl --stack examples/sandbox.yaml sandbox down     # afterwards`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Rate <= 0 || opts.Moves < 1 {
				return usageErrorf("--rate must be positive and --moves at least 1")
			}
			runner := func(ctx context.Context, args ...string) (string, string, int) {
				var o, e bytes.Buffer
				code := Run(ctx, &IOStreams{In: strings.NewReader(""), Out: &o, ErrOut: &e}, args)
				return o.String(), e.String(), code
			}
			sum, err := story.Run(cmd.Context(), story.Options{StackPath: f.StackPath(), ModuleDir: opts.Source,
				WorkDir: opts.WorkDir, Rate: opts.Rate, Settle: opts.Settle, Moves: opts.Moves,
				Progress: func(s string) { f.IO.Statusf("demo: %s", s) }}, runner)
			if err != nil {
				f.IO.Statusf("The sandbox is left as it is for inspection: instactl --stack %s sandbox status", f.StackPath())
				return err
			}
			if err := render(f.IO, out(), sum, func(w io.Writer) error { return storyRender(w, sum, f.StackPath()) }); err != nil {
				return err
			}
			if sum.FailedRequests > 0 || !sum.WritesVerified || !sum.BackupVerified {
				return silentExit{ExitError}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Source, "source", ".", "instactl source tree the app server is built from")
	fl.StringVar(&opts.WorkDir, "workdir", "instactl-demo", "where artifacts, the write record and report.html go")
	fl.Float64Var(&opts.Rate, "rate", 30, "load in requests per second")
	fl.DurationVar(&opts.Settle, "settle", 5*time.Second, "load time between operations")
	fl.IntVar(&opts.Moves, "moves", 2, "how many of the busiest shards to move")
	return cmd
}

func storyRender(w io.Writer, s *story.Summary, stackPath string) error {
	fmt.Fprintf(w, "\nThe story of %s, %s:\n", s.Stack, s.Elapsed)
	fmt.Fprintf(w, "  requests served          %d (%d failed)\n", s.Requests, s.FailedRequests)
	if s.NotSent > 0 {
		fmt.Fprintf(w, "  requests not sent        %d (the load generator was at its in-flight bound: slow answers or a busy machine)\n", s.NotSent)
	}
	fmt.Fprintf(w, "  acknowledged writes      %d, %d verified: %v\n", s.AcknowledgedWrite, s.WritesChecked, s.WritesVerified)
	fmt.Fprintf(w, "  rolling deploy           %s\n", s.DeployDuration)
	fmt.Fprintf(w, "  backup freeze window     %s; restore drill passed: %v\n", s.FreezeWindow.Round(time.Millisecond), s.BackupVerified)
	fmt.Fprintf(w, "  shard move write-blocked %s (worst move)\n", s.MoveWindow.Round(time.Millisecond))
	if s.SwitchoverBlock > 0 {
		fmt.Fprintf(w, "  switchover write block   %s (worst, held at the poolers: none failed)\n", s.SwitchoverBlock.Round(time.Millisecond))
	}
	if s.FailoverDuration > 0 {
		fmt.Fprintf(w, "  failover after a power cut %s, loss window %s; %d requests failed while the primary was dead\n",
			s.FailoverDuration.Round(time.Millisecond), s.FailoverLossWindow, s.FailoverFailedRequests)
	}
	fmt.Fprintf(w, "\n  %-28s %8s %6s %9s %9s\n", "latency", "requests", "failed", "p50", "p99")
	for _, p := range s.Phases {
		fmt.Fprintf(w, "  %-28s %8d %6d %7.1fms %7.1fms\n", p.Name, p.Requests, p.Errors, p.P50Ms, p.P99Ms)
	}
	abs, _ := filepath.Abs(s.ReportPath)
	_, err := fmt.Fprintf(w, "\nReport: file://%s\nThe sandbox is still up: explore with `instactl --stack %s sandbox status`;\ntear it down with `instactl --stack %s sandbox down` (or make demo-down).\n", abs, stackPath, stackPath)
	return err
}
