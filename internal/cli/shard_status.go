package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/shardmove"
)

// ShardStatusOptions are the arguments of `instactl shard status`.
type ShardStatusOptions struct {
	// Move, when not 0, shows that move with its steps.
	Move int64
}

// ShardMoveDetail is one move with its journaled steps.
type ShardMoveDetail struct {
	Move  shardmove.MoveStatus   `json:"move"`
	Steps []shardmove.StepRecord `json:"steps"`
	Next  []string               `json:"next,omitempty"`
}

// NewCmdShardStatus builds `instactl shard status`. runF replaces the run in tests.
func NewCmdShardStatus(f *Factory, out func() Output, runF func(*ShardStatusOptions) error) *cobra.Command {
	o := &ShardStatusOptions{}
	cmd := &cobra.Command{
		Use:   "status [MOVE]",
		Short: "List shard moves from the journal, or show one move step by step",
		Long: `Without MOVE, list every move in the journal, newest first, with its state, the step it is at
and what to run next. With MOVE, show that move and every journaled step with its timing,
error and details (the cutover's details hold the measured window).

States: running (a live process holds it; one marked "crashed" has no process and needs
resume or abort), failed (stopped before the cutover finished: resume or abort), moved (the
target serves the shard; complete after the grace period, or rollback), completed, aborted,
rolled_back.`,
		Example: `  instactl shard status
  instactl shard status 7
  instactl shard status 7 -o json | jq '.steps[] | select(.step == "cutover") | .details'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Move = 0
			if len(args) == 1 {
				id, err := shardParseMoveID(args[0])
				if err != nil {
					return err
				}
				o.Move = id
			}
			if runF != nil {
				return runF(o)
			}
			return shardStatusRun(cmd.Context(), f, out(), o)
		},
	}
	return cmd
}

// shardNext lists the commands that take a move further, for its state.
func shardNext(f *Factory, st shardmove.MoveStatus) []string {
	id := strconv.FormatInt(st.ID, 10)
	switch {
	case st.State == shardmove.StateRunning && st.Locked:
		return nil
	case st.State == shardmove.StateRunning || st.State == shardmove.StateFailed:
		return []string{shardCmdLine(f, "shard", "resume", id), shardCmdLine(f, "shard", "abort", id)}
	case st.State == shardmove.StateMoved:
		return []string{shardCmdLine(f, "shard", "complete", id), shardCmdLine(f, "shard", "rollback", id)}
	}
	return nil
}

func shardStateLabel(st shardmove.MoveStatus) string {
	if st.State == shardmove.StateRunning && !st.Locked {
		return "running (crashed: no process holds it)"
	}
	return st.State
}

func shardStatusRun(ctx context.Context, f *Factory, out Output, o *ShardStatusOptions) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	moves, err := e.mover.Status(ctx)
	if err != nil {
		return fmt.Errorf("%w (run `%s` first)", err, shardCmdLine(f, "shard", "init"))
	}
	if o.Move == 0 {
		if moves == nil {
			moves = []shardmove.MoveStatus{}
		}
		return render(f.IO, out, moves, func(w io.Writer) error { return shardRenderMoves(w, f, moves) })
	}
	i := slices.IndexFunc(moves, func(m shardmove.MoveStatus) bool { return m.ID == o.Move })
	if i < 0 {
		return usageErrorf("move %d not found in the journal (see `%s`)", o.Move, shardCmdLine(f, "shard", "status"))
	}
	steps, err := e.mover.Steps(ctx, o.Move)
	if err != nil {
		return err
	}
	d := ShardMoveDetail{Move: moves[i], Steps: steps, Next: shardNext(f, moves[i])}
	return render(f.IO, out, d, func(w io.Writer) error { return shardRenderDetail(w, d) })
}

func shardRenderMoves(w io.Writer, f *Factory, moves []shardmove.MoveStatus) error {
	if len(moves) == 0 {
		_, err := fmt.Fprintln(w, "No shard moves recorded.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MOVE\tSHARD\tFROM\tTO\tKIND\tSTATE\tSTEP\tWINDOW\tUPDATED\tNEXT")
	for _, m := range moves {
		window := "-"
		if m.Window > 0 {
			window = m.Window.Round(100 * time.Microsecond).String()
		}
		next := strings.Join(shardNext(f, m), " | ")
		if m.State == shardmove.StateRunning && m.Locked {
			next = "wait: a session holds it (" + shardCmdLine(f, "shard", "status", strconv.FormatInt(m.ID, 10)) + ")"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Shard, m.From, m.To, m.Kind,
			shardStateLabel(m), m.Step, window, m.UpdatedAt.UTC().Format(time.DateTime), orDash(next))
	}
	return tw.Flush()
}

func shardRenderDetail(w io.Writer, d ShardMoveDetail) error {
	m := d.Move
	fmt.Fprintf(w, "Move %d (%s): shard %d %s -> %s from epoch %d, %s at step %s\n", m.ID, m.Kind, m.Shard, m.From, m.To,
		m.FromEpoch, shardStateLabel(m), m.Step)
	if m.Error != "" {
		fmt.Fprintf(w, "Error: %s\n", m.Error)
	}
	if m.State == shardmove.StateRunning && m.Locked {
		// After a SIGKILL the killed process's session keeps the move's lock until the server
		// notices the closed connection, which can take seconds: say so rather than nothing.
		fmt.Fprintln(w, "A session holds this move's lock: a `shard move` or `shard resume` is running it, or one was killed\n"+
			"and the server has not yet seen its connection close (seconds). Run shard status again; once no session\n"+
			"holds it, the next command is printed here.")
	}
	if m.Window > 0 {
		fmt.Fprintf(w, "Write-blocked window: %s (cutover attempts: %d)\n", m.Window.Round(100*time.Microsecond), m.CutoverAttempts)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSTATUS\tSTARTED\tTOOK\tERROR / DETAILS")
	for _, s := range d.Steps {
		took := "-"
		if s.FinishedAt != nil {
			took = s.FinishedAt.Sub(s.StartedAt).Round(time.Millisecond).String()
		}
		info := s.Error
		if info == "" && len(s.Details) > 0 && string(s.Details) != "null" {
			info = string(s.Details)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Step, s.Status, s.StartedAt.UTC().Format("15:04:05.000"), took, orDash(info))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range d.Next {
		fmt.Fprintf(w, "next: %s\n", n)
	}
	return nil
}
