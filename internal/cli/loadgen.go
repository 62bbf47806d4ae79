package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/internal/loadgen"
	"github.com/spf13/cobra"
)

// LoadgenOptions are the inputs of `instactl loadgen`.
type LoadgenOptions struct {
	URL      string
	Rate     float64
	Duration time.Duration
	Record   string
	Mix      loadgen.Mix
	Timeout  time.Duration
}

// addLoadgenCommands adds `instactl loadgen` and `instactl loadgen verify`.
func addLoadgenCommands(root *cobra.Command, f *Factory, out func() Output) {
	opts := &LoadgenOptions{}
	cmd := &cobra.Command{
		Use:   "loadgen",
		Short: "Drive Instagram traffic at the load balancer and record every acknowledged write",
		Long: `Send a mix of sign-ups, follows, photo uploads, likes, comments and feed reads at a fixed
rate (open loop) for a duration. Every write the server acknowledged is recorded (kind, id,
payload sha256) to --record, so that after a deploy, backup or shard move
` + "`instactl loadgen verify`" + ` can prove none was lost. The URL defaults to the sandbox load balancer.`,
		Example: `  instactl loadgen --rate 50 --duration 2m --record writes.jsonl
  instactl loadgen verify --record writes.jsonl
  instactl loadgen --url http://lb.example.com --signups 1 --uploads 2 --feeds 10 -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := loadgenURL(f, opts); err != nil {
				return err
			}
			if opts.Rate <= 0 || opts.Duration <= 0 {
				return usageErrorf("--rate and --duration must be positive (got %g, %s)", opts.Rate, opts.Duration)
			}
			f.IO.Statusf("loadgen: %g req/s for %s against %s", opts.Rate, opts.Duration, opts.URL)
			res, err := loadgen.Run(cmd.Context(), loadgen.Config{BaseURL: opts.URL, Rate: opts.Rate,
				Duration: opts.Duration, Mix: opts.Mix, Timeout: opts.Timeout, RecordFile: opts.Record})
			if err != nil {
				return err
			}
			if err := render(f.IO, out(), res, func(w io.Writer) error { return loadgenRender(w, res) }); err != nil {
				return err
			}
			if res.Errors > 0 || res.Dropped > 0 {
				return silentExit{ExitPartial}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.URL, "url", "", "base URL (default: the stack's load balancer)")
	fl.Float64Var(&opts.Rate, "rate", 20, "requests per second")
	fl.DurationVar(&opts.Duration, "duration", 30*time.Second, "how long to send")
	fl.StringVar(&opts.Record, "record", "loadgen-writes.jsonl", "file recording every acknowledged write")
	fl.DurationVar(&opts.Timeout, "timeout", 5*time.Second, "per-request timeout")
	fl.IntVar(&opts.Mix.SignUp, "signups", 1, "weight of sign-ups in the mix")
	fl.IntVar(&opts.Mix.Follow, "follows", 2, "weight of follows")
	fl.IntVar(&opts.Mix.Upload, "uploads", 2, "weight of photo uploads")
	fl.IntVar(&opts.Mix.Like, "likes", 3, "weight of likes")
	fl.IntVar(&opts.Mix.Comment, "comments", 1, "weight of comments")
	fl.IntVar(&opts.Mix.Feed, "feeds", 6, "weight of feed reads")

	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check that every acknowledged write is stored exactly once, unchanged",
		Example: `  instactl loadgen verify --record writes.jsonl
  instactl loadgen verify --record writes.jsonl -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := loadgenURL(f, opts); err != nil {
				return err
			}
			res, err := loadgen.Verify(cmd.Context(), opts.URL, opts.Record)
			if err != nil {
				return err
			}
			if err := render(f.IO, out(), res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "verified %d acknowledged writes: %d ok, %d missing, %d mismatched, %d duplicated, %d errors\n",
					res.Checked, res.OK, res.Missing, res.Mismatched, res.Duplicated, res.Errors)
				for _, p := range res.Problems {
					fmt.Fprintf(w, "  %s %d: %s\n", p.Record.Kind, p.Record.ID, p.Reason)
				}
				return err
			}); err != nil {
				return err
			}
			if !res.Clean() {
				return silentExit{ExitError}
			}
			return nil
		},
	}
	verify.Flags().StringVar(&opts.URL, "url", "", "base URL (default: the stack's load balancer)")
	verify.Flags().StringVar(&opts.Record, "record", "loadgen-writes.jsonl", "file of acknowledged writes to check")
	cmd.AddCommand(verify)
	root.AddCommand(cmd)
}

// loadgenURL fills the URL from the stack's load balancer when not given.
func loadgenURL(f *Factory, opts *LoadgenOptions) error {
	if opts.URL != "" {
		return nil
	}
	st, err := f.Stack()
	if err != nil {
		return err
	}
	if st.Provider != "sandbox" {
		return usageErrorf("--url is required for provider %s (the load balancer's DNS name)", st.Provider)
	}
	opts.URL = fmt.Sprintf("http://127.0.0.1:%d", st.Sandbox.LBPort)
	return nil
}

// loadgenRender prints throughput, a latency table per operation and overall, and errors by
// cause with the first distinct messages.
func loadgenRender(w io.Writer, res loadgen.Result) error {
	fmt.Fprintf(w, "%d requests in %s (%.1f req/s answered), %d failed, %d dropped, %d acknowledged writes\n",
		res.Requests, res.Elapsed.Round(time.Millisecond), res.Throughput, res.Errors, res.Dropped, res.Writes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OPERATION\tREQUESTS\tERRORS\tP50 MS\tP99 MS\tMAX MS")
	row := func(name string, n, errs int, l loadgen.Latency) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.1f\n", name, n, errs, l.P50Ms, l.P99Ms, l.MaxMs)
	}
	for _, op := range slices.Sorted(maps.Keys(res.ByKind)) {
		ks := res.ByKind[op]
		row(op, ks.Requests, ks.Errors, ks.Latency)
	}
	row("all", res.Requests-res.Dropped, res.Errors, res.Latency)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(res.ErrorKinds) > 0 {
		var kinds []string
		for _, k := range slices.Sorted(maps.Keys(res.ErrorKinds)) {
			kinds = append(kinds, fmt.Sprintf("%s: %d", k, res.ErrorKinds[k]))
		}
		fmt.Fprintf(w, "errors by cause: %s\n", strings.Join(kinds, ", "))
	}
	for _, e := range res.FirstErrors {
		fmt.Fprintln(w, "  "+e)
	}
	return nil
}
