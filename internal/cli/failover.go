package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/topology"
)

// ExitIncomplete is what switchover, failover and rejoin return when they stopped half way:
// the journal says what `--resume` and `--abort` will do.
const ExitIncomplete = 6

// FailoverView is what switchover, failover and rejoin print: the library's report plus what
// the command measured from the client's side.
type FailoverView struct {
	failover.Report
	// Kind is postgres or redis.
	Kind string `json:"kind"`
	// ProbeBlock is the longest gap between two acknowledged probe writes through the write
	// path the app servers use, over the whole operation: the write block a client saw.
	ProbeBlock time.Duration `json:"probe_write_block,omitempty"`
	// ProbeFailed counts probe writes that failed (a switchover should fail none).
	ProbeFailed int `json:"probe_failed"`
	// Elapsed is the command's wall time.
	Elapsed time.Duration `json:"elapsed"`
}

// groupOpFlags are the flags switchover and failover share.
type groupOpFlags struct {
	to, from       string
	resume, abort  bool
	pauseTimeout   time.Duration
	catchUpTimeout time.Duration
	maxLag         int64
	force          bool
	lastKnownLSN   string
	probe          bool
}

func addFailoverCommands(root *cobra.Command, f *Factory, out func() Output) {
	root.AddCommand(newCmdSwitchover(f, out), newCmdFailover(f, out), newCmdRejoin(f, out))
}

func newCmdSwitchover(f *Factory, out func() Output) *cobra.Command {
	var fl groupOpFlags
	cmd := &cobra.Command{
		Use:   "switchover GROUP",
		Short: "Make a standby the primary of a replication group, planned, losing no write",
		Long: `Planned change of primary for a Postgres group (a shard node such as pg-0) or the Redis group
(redis-0). Postgres: preflight (the standby streams, lag under --max-lag, wal_log_hints or
checksums, no other operation holds the group), CHECKPOINT, PAUSE the group on every app host's
PgBouncer (bounded by --pause-timeout), fast shutdown of the old primary, wait until the standby
has received its shutdown checkpoint (bounded by --catch-up-timeout), promote, record the new
primary in the control database (epoch + 1, app servers follow), repoint and RESUME the poolers,
then the old primary follows the new one as its standby. Writes are held, not failed.

Any step before the promotion that fails or misses its deadline rolls back: the old primary
serves again and nothing changed (exit 1). A run killed half way leaves a journal in the state
directory: run the same command with --resume (finish) or --abort (undo if no promotion was
sent; otherwise finish).`,
		Example: `  instactl switchover pg-0
  instactl switchover pg-0 --to pg-1 --pause-timeout 2s
  instactl switchover redis-0
  instactl switchover pg-0 --resume     # after a killed run`,
		Args: exactlyOneGroup,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGroupOp(cmd.Context(), f, out(), "switchover", args[0], fl)
		},
	}
	addGroupOpFlags(cmd, &fl)
	cmd.Flags().Int64Var(&fl.maxLag, "max-lag", failover.DefaultMaxLag, "largest replay lag in bytes a standby may have to be promoted")
	cmd.Flags().DurationVar(&fl.pauseTimeout, "pause-timeout", time.Second, "bound on PAUSE at the poolers; past it the switchover rolls back")
	cmd.Flags().DurationVar(&fl.catchUpTimeout, "catch-up-timeout", 2*time.Second, "bound on the standby receiving the old primary's shutdown checkpoint; past it the switchover rolls back")
	return cmd
}

func newCmdFailover(f *Factory, out func() Output) *cobra.Command {
	var fl groupOpFlags
	cmd := &cobra.Command{
		Use:   "failover GROUP",
		Short: "Promote a standby of a group whose primary is gone, fencing the old one first",
		Long: `Unplanned change of primary: the primary of GROUP is lost. Fencing comes first and on two
layers: every app host's PgBouncer drops and holds the group's connections, and the provider
stops the old host (a power cut on the sandbox, StopInstances with Force on AWS); if the host
cannot be stopped the command refuses unless --force. Then the standby that received the most
WAL is promoted, recorded in the control database (epoch + 1), the poolers are repointed and
resumed. The report states the possible loss window: the old primary's last known WAL position
(--last-known-lsn, from monitoring, or what the journal knew) against what the new primary had
received. The old primary never takes writes again on its own: it stays stopped, and when it
boots its guard refuses to start it as a primary. Make it a standby with instactl rejoin HOST.`,
		Example: `  instactl failover pg-0
  instactl failover pg-0 --last-known-lsn 0/3A000060
  instactl failover redis-0
  instactl host start pg-0 && instactl rejoin pg-0   # later: the pair is whole again`,
		Args: exactlyOneGroup,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGroupOp(cmd.Context(), f, out(), "failover", args[0], fl)
		},
	}
	addGroupOpFlags(cmd, &fl)
	cmd.Flags().BoolVar(&fl.force, "force", false, "promote even when the old host could not be stopped (the pooler fence alone then keeps the app's writes away from it)")
	cmd.Flags().StringVar(&fl.lastKnownLSN, "last-known-lsn", "", "the old primary's last WAL position monitoring saw (for the loss window)")
	return cmd
}

func newCmdRejoin(f *Factory, out func() Output) *cobra.Command {
	var probe bool
	cmd := &cobra.Command{
		Use:   "rejoin HOST",
		Short: "Make a former primary a standby of its group's primary now",
		Long: `A former primary (after a switchover or a failover) becomes a streaming standby of the primary
the control database records now, so the pair is whole again. After a clean switchover it only
follows; when its WAL forked from the new timeline (a failover), pg_rewind runs first. When
pg_rewind cannot work the command says so: rebuild the host from the newest snapshot set
(instactl backup restore). A stopped host must be started first (instactl host start HOST).`,
		Example: `  instactl host start pg-0
  instactl rejoin pg-0
  instactl rejoin redis-0`,
		Args: exactlyOneHost,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGroupOp(cmd.Context(), f, out(), "rejoin", args[0], groupOpFlags{probe: probe})
		},
	}
	return cmd
}

func addGroupOpFlags(cmd *cobra.Command, fl *groupOpFlags) {
	cmd.Flags().StringVar(&fl.to, "to", "", "the standby to promote (default: the most advanced streaming standby)")
	cmd.Flags().StringVar(&fl.from, "from", "", "the host you take for the primary now; anything else is refused (a guard for scripts)")
	cmd.Flags().BoolVar(&fl.resume, "resume", false, "finish the operation a killed run left in the journal")
	cmd.Flags().BoolVar(&fl.abort, "abort", false, "undo the operation a killed run left, if no promotion was sent (else finish it)")
	cmd.Flags().BoolVar(&fl.probe, "probe", true, "measure the write block from the client side with probe writes through an app host's pooler")
	cmd.MarkFlagsMutuallyExclusive("resume", "abort")
}

func exactlyOneGroup(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageErrorf("%s takes one replication group, such as pg-0 or redis-0 (got %d arguments)", cmd.CommandPath(), len(args))
	}
	return nil
}

// runGroupOp runs switchover, failover or rejoin (name is a group, or a host for rejoin).
func runGroupOp(ctx context.Context, f *Factory, o Output, op, name string, fl groupOpFlags) error {
	start := time.Now()
	env, err := newFoEnv(ctx, f)
	if err != nil {
		return err
	}
	defer env.Close()
	g, err := resolveGroup(env.topo, op, name)
	if err != nil {
		return err
	}
	v := FailoverView{Kind: g.Kind}
	if g.Kind != topology.KindPostgres && g.Kind != topology.KindRedis {
		return usageErrorf("group %s is of kind %q; switchover, failover and rejoin know postgres and redis", g.Name, g.Kind)
	}
	err = silenceOperation(ctx, f, groupOpSilence(op, g.Name), "instactl "+op+" "+g.Name, func() error {
		var oerr error
		if g.Kind == topology.KindPostgres {
			v.Report, oerr = runPostgresOp(ctx, env, op, g, name, fl, &v)
		} else {
			v.Report, oerr = runRedisOp(ctx, env, op, g, name, fl, &v)
		}
		return oerr
	})
	v.Elapsed = time.Since(start)
	if v.Group == "" {
		v.Group = g.Name // an operation refused before it began reports no group
	}
	if v.Op == "" {
		v.Op = op
	}
	if err == nil && v.NewPrimary != "" && op != "rejoin" {
		recordEvent(ctx, env, op, v)
	}
	// Keep the copy of the topology current: the next failover of the control group may have
	// nothing else to go on.
	if _, rerr := topology.ResolveCached(ctx, env.st, "postgres", topologyCacheFile(filepath.Dir(env.jdir))); rerr != nil {
		env.status("note: the topology after the %s could not be read back: %v", op, rerr)
	}
	if rerr := render(f.IO, o, v, func(w io.Writer) error { return renderFailover(w, op, v, err) }); rerr != nil {
		return rerr
	}
	return failoverExit(err)
}

// resolveGroup finds the group of a switchover/failover (by group name) or of a rejoin (by
// member host). An unknown name is bad input that lists the known ones.
func resolveGroup(t topology.Topology, op, name string) (topology.Group, error) {
	if op == "rejoin" {
		if g, ok := t.GroupOf(name); ok {
			return g, nil
		}
		return topology.Group{}, usageErrorf("no replication group has a member %q (groups: %s)", name, groupList(t))
	}
	if g, ok := t.Group(name); ok {
		return g, nil
	}
	if g, ok := t.GroupOf(name); ok {
		return topology.Group{}, usageErrorf("%q is a host of group %s; name the group: instactl %s %s", name, g.Name, op, g.Name)
	}
	return topology.Group{}, usageErrorf("no replication group %q (groups: %s)", name, groupList(t))
}

func groupList(t topology.Topology) string {
	var out []string
	for _, g := range t.Groups {
		out = append(out, g.Name)
	}
	if len(out) == 0 {
		return "none: the stack has no Postgres or Redis replicas"
	}
	return strings.Join(out, ", ")
}

// recordEvent appends the finished operation to the group's history (what status shows); a
// failure to record is said, not fatal: the operation itself is done.
func recordEvent(ctx context.Context, env *foEnv, op string, v FailoverView) {
	dsn, err := topology.ControlDSN(env.topo, "postgres", env.st.Shards.ControlDatabase)
	if err == nil {
		err = withControl(ctx, dsn, func(db topology.DB) error {
			block := v.WriteBlock
			if v.ProbeBlock > 0 {
				block = v.ProbeBlock
			}
			loss := int64(-1)
			if v.LossWindowKnown || op == "switchover" {
				loss = v.LossWindowBytes
			}
			return topology.RecordEvent(ctx, db, topology.Event{Group: v.Group, Op: op, OldPrimary: v.OldPrimary,
				NewPrimary: v.NewPrimary, Epoch: v.NewEpoch, WriteBlock: block, LossBytes: loss})
		})
	}
	if err != nil {
		env.status("note: the %s is done but was not recorded in the group's history: %v", op, err)
	}
}

// failoverExit maps the library's sentinel errors to exit codes.
func failoverExit(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, failover.ErrBadInput), errors.Is(err, failover.RedisErrBadInput):
		return silentExit{ExitUsage}
	case errors.Is(err, failover.ErrPrecondition), errors.Is(err, failover.RedisErrPrecondition):
		return silentExit{ExitUnsafe}
	case errors.Is(err, failover.ErrBusy), errors.Is(err, failover.RedisErrBusy):
		return silentExit{ExitLocked}
	case errors.Is(err, failover.ErrHalfDone), errors.Is(err, failover.RedisErrHalfway):
		return silentExit{ExitIncomplete}
	default:
		return silentExit{ExitError}
	}
}

func renderFailover(w io.Writer, op string, v FailoverView, opErr error) error {
	var b strings.Builder
	switch {
	case opErr == nil && op == "rejoin":
		how := "following"
		if v.Rewound {
			how = "rewound with pg_rewind, then following"
		}
		fmt.Fprintf(&b, "Rejoined: %s is a streaming standby of %s (%s).\n", v.OldPrimary, v.NewPrimary, how)
	case opErr == nil:
		fmt.Fprintf(&b, "%s of %s done: %s -> %s, epoch %d -> %d, in %s.\n", titleWord(op), v.Group,
			v.OldPrimary, v.NewPrimary, v.OldEpoch, v.NewEpoch, v.Elapsed.Round(time.Millisecond))
		fmt.Fprintf(&b, "Write block: %s at the poolers", v.WriteBlock.Round(time.Millisecond))
		if v.ProbeBlock > 0 {
			fmt.Fprintf(&b, ", %s seen by a client (%d probe writes failed)", v.ProbeBlock.Round(time.Millisecond), v.ProbeFailed)
		}
		b.WriteString(".\n")
		if op == "failover" {
			if v.LossWindowKnown {
				fmt.Fprintf(&b, "Possible loss window: %d bytes (old primary last known at %s, new primary had received %s).\n",
					v.LossWindowBytes, v.LastKnownLSN, v.ReceiveLSN)
			} else {
				fmt.Fprintf(&b, "Possible loss window: unknown: the old primary's last WAL position was not known (pass --last-known-lsn from monitoring); the new primary had received %s.\n", v.ReceiveLSN)
			}
			fmt.Fprintf(&b, "The old primary %s is fenced. Next: instactl host start %s && instactl rejoin %s\n", v.OldPrimary, v.OldPrimary, v.OldPrimary)
		}
	default:
		fmt.Fprintf(&b, "%s of %s FAILED: %s\n", titleWord(op), v.Group, opErr)
		switch {
		case errors.Is(opErr, failover.ErrRolledBack), errors.Is(opErr, failover.RedisErrRolledBack):
			fmt.Fprintf(&b, "Rolled back: %s is still the primary and serves; nothing changed.\n", v.OldPrimary)
		case errors.Is(opErr, failover.ErrHalfDone), errors.Is(opErr, failover.RedisErrHalfway):
			fmt.Fprintf(&b, "Stopped half way. Finish with: instactl %s %s --resume (or --abort)\n", op, v.Group)
		case errors.Is(opErr, failover.ErrRebuildNeeded):
			fmt.Fprintf(&b, "Rebuild the host from the newest snapshot set: instactl backup restore --help\n")
		}
	}
	for _, s := range v.Steps {
		line := fmt.Sprintf("  %-22s %8s", s.Name, s.Duration.Round(time.Millisecond))
		if s.Err != "" {
			line += "  " + s.Err
		}
		b.WriteString(line + "\n")
	}
	for _, n := range v.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func titleWord(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
