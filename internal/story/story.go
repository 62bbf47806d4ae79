package story

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/stack"
)

// Runner executes one instactl command line and returns its stdout, stderr and exit code.
type Runner func(ctx context.Context, args ...string) (stdout, stderr string, code int)

// Options shape the story.
type Options struct {
	// StackPath is the sandbox stack file.
	StackPath string
	// ModuleDir is the instactl source tree the app server is built from.
	ModuleDir string
	// WorkDir receives artifacts, the write record and the report.
	WorkDir string
	// Rate is the load in requests per second; Settle is how long load runs between steps.
	Rate   float64
	Settle time.Duration
	// Moves is how many of the busiest shards move to the other node.
	Moves int
	// Progress receives one line per step.
	Progress func(string)
}

// story is one run's state.
type story struct {
	opts  Options
	run   Runner
	st    *stack.Stack
	sum   *Summary
	start time.Time // when the load started; ops are placed relative to it
	// failoverWindow is when a primary was dead: power cut to the end of the failover.
	failoverWindow [2]time.Duration
}

// Run tells the whole story and returns its summary; the HTML report is written to
// WorkDir/report.html. A failed step ends the story with an error naming the step; the sandbox
// is left up either way for exploration.
func Run(ctx context.Context, opts Options, run Runner) (*Summary, error) {
	if opts.Rate <= 0 {
		opts.Rate = 30
	}
	if opts.Settle <= 0 {
		opts.Settle = 5 * time.Second
	}
	if opts.Moves <= 0 {
		opts.Moves = 2
	}
	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
		return nil, fmt.Errorf("story work dir: %w", err)
	}
	st, err := stack.Load(opts.StackPath)
	if err != nil {
		return nil, err
	}
	s := &story{opts: opts, run: run, st: st, sum: &Summary{Stack: st.Name}}
	began := time.Now()
	if err := s.tell(ctx); err != nil {
		return s.sum, err
	}
	s.sum.Elapsed = time.Since(began).Round(time.Second)
	s.sum.Phases = Phases(s.sum.Buckets, s.sum.Ops)
	s.sum.ReportPath = filepath.Join(opts.WorkDir, "report.html")
	f, err := os.Create(s.sum.ReportPath)
	if err != nil {
		return s.sum, fmt.Errorf("write report: %w", err)
	}
	defer f.Close()
	if err := WriteHTML(f, s.sum); err != nil {
		return s.sum, fmt.Errorf("write report: %w", err)
	}
	return s.sum, f.Close()
}

func (s *story) say(format string, args ...any) {
	if s.opts.Progress != nil {
		s.opts.Progress(fmt.Sprintf(format, args...))
	}
}

// cmd runs an instactl command and fails the story on a non-zero exit.
func (s *story) cmd(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--stack", s.opts.StackPath}, args...)
	s.say("$ instactl %s", strings.Join(args, " "))
	stdout, stderr, code := s.run(ctx, full...)
	if code != 0 {
		return stdout, fmt.Errorf("instactl %s exited %d:\n%s%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout, nil
}

// op runs fn as a named operation on the timeline.
func (s *story) op(name string, fn func() (string, error)) error {
	o := Op{Name: name, Start: time.Since(s.start)}
	detail, err := fn()
	o.End, o.Detail, o.OK = time.Since(s.start), detail, err == nil
	if err != nil {
		o.Detail = errtext.OneLine(err.Error()) // the whole error: its cause is rarely on the first line
	}
	s.sum.Ops = append(s.sum.Ops, o)
	return err
}

func (s *story) tell(ctx context.Context) error {
	// 1. The stack, as AWS would get it.
	if _, err := s.cmd(ctx, "sandbox", "up"); err != nil {
		return err
	}
	if _, err := s.cmd(ctx, "apply", "--yes"); err != nil {
		return err
	}
	if _, err := s.cmd(ctx, "inventory"); err != nil {
		return err
	}
	// 2. Shards, version 1, then live traffic.
	if _, err := s.cmd(ctx, "shard", "init"); err != nil {
		return err
	}
	v1, err := s.build(ctx, "v1")
	if err != nil {
		return err
	}
	if _, err := s.cmd(ctx, "deploy", "--artifact", v1.Path, "--message", "story: first deploy"); err != nil {
		return err
	}
	record := filepath.Join(s.opts.WorkDir, "writes.jsonl")
	_ = os.Remove(record)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	lb := fmt.Sprintf("http://127.0.0.1:%d", s.st.Sandbox.LBPort)
	type loadOut struct {
		res loadgen.Result
		err error
	}
	loadDone := make(chan loadOut, 1)
	s.start = time.Now()
	s.say("load: %g req/s through %s, recording acknowledged writes to %s", s.opts.Rate, lb, record)
	go func() {
		res, err := loadgen.Run(loadCtx, loadgen.Config{BaseURL: lb, Rate: s.opts.Rate, Duration: time.Hour, RecordFile: record})
		loadDone <- loadOut{res, err}
	}()
	settle := func() { sleepCtx(ctx, s.opts.Settle) }
	settle()

	// 3. A rolling deploy of version 2 under load.
	v2, err := s.build(ctx, "v2")
	if err != nil {
		return err
	}
	if err := s.op("deploy v2", func() (string, error) {
		t0 := time.Now()
		_, err := s.cmd(ctx, "deploy", "--artifact", v2.Path, "--message", "story: rolling deploy under load")
		s.sum.DeployDuration = time.Since(t0).Round(100 * time.Millisecond)
		return "release " + v2.ID, err
	}); err != nil {
		return err
	}
	settle()

	// 4. Backups of the replicas, then a restore drill.
	if err := s.op("backup", func() (string, error) {
		out, err := s.cmd(ctx, "backup", "create", "--target", "all", "-o", "json")
		if ms, ok := findDurationMs(out, "freeze_duration_ns"); ok {
			s.sum.FreezeWindow = ms
		}
		return fmt.Sprintf("freeze %s", s.sum.FreezeWindow.Round(time.Millisecond)), err
	}); err != nil {
		return err
	}
	for _, target := range s.st.Backup.Targets {
		if err := s.op("verify "+target+" backup", func() (string, error) {
			_, err := s.cmd(ctx, "backup", "verify", "--target", target)
			s.sum.BackupVerified = err == nil
			return "restore drill passed", err
		}); err != nil {
			return err
		}
	}
	settle()

	// 5. Move the busiest shards to the other node under load.
	shards, to, err := s.busiest(ctx)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		if err := s.op(fmt.Sprintf("move shard %d", sh), func() (string, error) {
			out, err := s.cmd(ctx, "shard", "move", fmt.Sprint(sh), "--to", to, "-o", "json")
			if ms, ok := findDurationMs(out, "window_ns", "window_ms"); ok {
				s.sum.MoveWindow = max(s.sum.MoveWindow, ms)
			}
			return fmt.Sprintf("to %s, window %s", to, s.sum.MoveWindow.Round(time.Millisecond)), err
		}); err != nil {
			return err
		}
	}
	if _, err := s.cmd(ctx, "shard", "map"); err != nil {
		return err
	}
	settle()

	// 6. Planned switchovers under load: a shard node and Redis change primary, writes are
	// held at the poolers, not failed.
	for _, g := range s.groups(ctx, true) {
		if err := s.op("switchover "+g.name, func() (string, error) {
			out, err := s.cmd(ctx, "switchover", g.name, "-o", "json")
			v := parseGroupOp(out)
			block := max(v.WriteBlock, v.ProbeBlock)
			s.sum.SwitchoverBlock = max(s.sum.SwitchoverBlock, block)
			return fmt.Sprintf("%s -> %s, write block %s", v.OldPrimary, v.NewPrimary, block.Round(time.Millisecond)), err
		}); err != nil {
			return err
		}
		settle()
	}

	// 7. A power cut of a shard node's primary, the failover, and the old primary's return as
	// a standby.
	if gs := s.groups(ctx, false); len(gs) > 0 {
		g := gs[len(gs)-1]
		if err := s.op("power cut of "+g.primary, func() (string, error) {
			_, err := s.cmd(ctx, "host", "stop", g.primary, "--force")
			return "every process of the host killed at once", err
		}); err != nil {
			return err
		}
		failStart := time.Since(s.start)
		if err := s.op("failover "+g.name, func() (string, error) {
			out, err := s.cmd(ctx, "failover", g.name, "-o", "json")
			v := parseGroupOp(out)
			s.sum.FailoverDuration = v.Elapsed
			loss := "unknown"
			if v.LossWindowKnown {
				loss = fmt.Sprintf("%d bytes", v.LossWindowBytes)
			}
			s.sum.FailoverLossWindow = loss
			return fmt.Sprintf("%s -> %s in %s, loss window %s", v.OldPrimary, v.NewPrimary, v.Elapsed.Round(time.Millisecond), loss), err
		}); err != nil {
			return err
		}
		s.failoverWindow = [2]time.Duration{failStart, time.Since(s.start)}
		settle()
		if err := s.op("rejoin "+g.primary, func() (string, error) {
			if _, err := s.cmd(ctx, "host", "start", g.primary); err != nil {
				return "", err
			}
			_, err := s.cmd(ctx, "rejoin", g.primary)
			return g.primary + " is a standby again", err
		}); err != nil {
			return err
		}
		settle()
	}

	// 8. Stop the load and prove every acknowledged write.
	stopLoad()
	lo := <-loadDone
	if lo.err != nil {
		return fmt.Errorf("load generator: %w", lo.err)
	}
	s.sum.Requests, s.sum.FailedRequests, s.sum.AcknowledgedWrite = lo.res.Requests-lo.res.Dropped, lo.res.Errors, lo.res.Writes
	// Requests that failed while a primary was dead (from the power cut to the end of the
	// failover, plus a second for answers in flight) are the failover's, counted apart: every
	// other operation must fail none.
	if w := s.failoverWindow; w[1] > 0 {
		for _, b := range lo.res.Buckets {
			at := time.Duration(b.Second) * time.Second
			if at >= w[0]-5*time.Second && at <= w[1]+time.Second {
				s.sum.FailoverFailedRequests += b.Errors
			}
		}
		s.sum.FailedRequests -= s.sum.FailoverFailedRequests
	}
	s.sum.NotSent = lo.res.Dropped
	for _, b := range lo.res.Buckets {
		if b.Requests > 0 || time.Duration(b.Second)*time.Second < lo.res.Elapsed {
			s.sum.Buckets = append(s.sum.Buckets, b)
		}
	}
	vr, err := loadgen.Verify(ctx, lb, record)
	if err != nil {
		return fmt.Errorf("verify acknowledged writes: %w", err)
	}
	s.sum.WritesChecked, s.sum.WritesVerified = vr.Checked, vr.Clean() && vr.Checked == lo.res.Writes
	if len(lo.res.FirstErrors) > 0 {
		s.say("first failed requests: %s", strings.Join(lo.res.FirstErrors, "; "))
	}
	return nil
}

// build compiles the bundled app server stamped with version.
func (s *story) build(ctx context.Context, version string) (deploy.Artifact, error) {
	s.say("building the app server %s", version)
	a, err := deploy.Build(ctx, deploy.BuildOptions{ModuleDir: s.opts.ModuleDir, Version: version,
		Output: filepath.Join(s.opts.WorkDir, "instagram-app-"+version)})
	if err != nil {
		return a, fmt.Errorf("build app %s: %w", version, err)
	}
	return a, nil
}

// busiest picks the shards holding the most rows on the fullest node and the node to move them
// to, from `shard map -o json`.
func (s *story) busiest(ctx context.Context) ([]int, string, error) {
	out, err := s.cmd(ctx, "shard", "map", "-o", "json")
	if err != nil {
		return nil, "", err
	}
	owners := shardOwners(out)
	if len(owners) == 0 {
		return nil, "", fmt.Errorf("shard map -o json listed no shards:\n%s", out)
	}
	// A shard whose earlier move is still open (moved, old copy kept for rollback) cannot move
	// again until that move completes; a re-run of the story moves others.
	moves, err := s.cmd(ctx, "shard", "status", "-o", "json")
	if err != nil {
		return nil, "", err
	}
	for sh := range openMoves(moves) {
		delete(owners, sh)
	}
	count := map[string][]int{}
	for sh, node := range owners {
		count[node] = append(count[node], sh)
	}
	var nodes []string
	for n := range count {
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool {
		return len(count[nodes[i]]) > len(count[nodes[j]]) || len(count[nodes[i]]) == len(count[nodes[j]]) && nodes[i] < nodes[j]
	})
	from := nodes[0]
	to := ""
	r := s.st.Role(s.st.Shards.Role)
	for i := 0; i < r.Count; i++ {
		if name := stack.HostName(r.Name, i); r.IsPrimary(i) && name != from {
			to = name
			break
		}
	}
	if to == "" {
		return nil, "", fmt.Errorf("the stack has one shard node; nowhere to move shards to")
	}
	shards := count[from]
	sort.Ints(shards)
	// Under uniform load the lowest-numbered shards are as busy as any; take them for a
	// reproducible story.
	return shards[:min(s.opts.Moves, len(shards))], to, nil
}

// shardOwners reads {shard: node} from the JSON of `shard map`, whatever its nesting: any object
// with a numeric "shard" and a string "node".
func shardOwners(js string) map[int]string {
	var v any
	if json.Unmarshal([]byte(js), &v) != nil {
		return nil
	}
	out := map[int]string{}
	var walk func(any)
	walk = func(x any) {
		switch t := x.(type) {
		case map[string]any:
			sh, ok1 := t["shard"].(float64)
			node, ok2 := t["node"].(string)
			if ok1 && ok2 {
				out[int(sh)] = node
			}
			for _, c := range t {
				walk(c)
			}
		case []any:
			for _, c := range t {
				walk(c)
			}
		}
	}
	walk(v)
	return out
}

// openMoves returns the shards with a move that is not finished, from `shard status -o json`.
func openMoves(js string) map[int]bool {
	var moves []struct {
		Shard int    `json:"shard"`
		State string `json:"state"`
	}
	open := map[int]bool{}
	if json.Unmarshal([]byte(js), &moves) != nil {
		return open
	}
	for _, m := range moves {
		switch m.State {
		case "completed", "aborted", "rolled_back":
		default:
			open[m.Shard] = true
		}
	}
	return open
}

// findDurationMs finds the largest value of any of keys in a JSON document: numbers named *_ms
// are milliseconds, other numbers nanoseconds (Go durations, *_ns), strings are parsed as
// durations.
func findDurationMs(js string, keys ...string) (time.Duration, bool) {
	var v any
	if json.Unmarshal([]byte(js), &v) != nil {
		return 0, false
	}
	var best time.Duration
	found := false
	var walk func(any)
	walk = func(x any) {
		switch t := x.(type) {
		case map[string]any:
			for k, c := range t {
				for _, want := range keys {
					if k != want {
						continue
					}
					var d time.Duration
					switch n := c.(type) {
					case float64:
						if strings.HasSuffix(k, "_ms") {
							d = time.Duration(n * float64(time.Millisecond))
						} else {
							d = time.Duration(n)
						}
					case string:
						d, _ = time.ParseDuration(n)
					}
					if d > 0 {
						best, found = max(best, d), true
					}
				}
				walk(c)
			}
		case []any:
			for _, c := range t {
				walk(c)
			}
		}
	}
	walk(v)
	return best, found
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// groupInfo is a replication group as `instactl status -o json` shows it.
type groupInfo struct {
	name, kind, primary string
}

// groups returns the replication groups from `instactl status -o json`: for planned switchovers
// the first Postgres group and the Redis group; otherwise every Postgres group.
func (s *story) groups(ctx context.Context, planned bool) []groupInfo {
	out, err := s.cmd(ctx, "status", "-o", "json")
	var st struct {
		Groups []struct {
			Name    string `json:"name"`
			Kind    string `json:"kind"`
			Primary string `json:"primary"`
		} `json:"groups"`
	}
	if json.Unmarshal([]byte(out), &st) != nil && err != nil {
		s.say("status: %v", err)
		return nil
	}
	var gs []groupInfo
	seen := map[string]bool{}
	for _, g := range st.Groups {
		if planned && seen[g.Kind] {
			continue
		}
		if !planned && g.Kind != "postgres" {
			continue
		}
		seen[g.Kind] = true
		gs = append(gs, groupInfo{name: g.Name, kind: g.Kind, primary: g.Primary})
	}
	return gs
}

// groupOp is the part of a switchover's or failover's JSON the story shows.
type groupOp struct {
	OldPrimary      string        `json:"old_primary"`
	NewPrimary      string        `json:"new_primary"`
	WriteBlock      time.Duration `json:"write_block"`
	ProbeBlock      time.Duration `json:"probe_write_block"`
	LossWindowBytes int64         `json:"loss_window_bytes"`
	LossWindowKnown bool          `json:"loss_window_known"`
	Elapsed         time.Duration `json:"elapsed"`
}

func parseGroupOp(js string) groupOp {
	var v groupOp
	_ = json.Unmarshal([]byte(js), &v) // a failed command's error says what happened
	return v
}
