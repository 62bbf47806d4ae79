package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/internal/status"
	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
	"github.com/spf13/cobra"
)

// StackStatus is the one screen of `instactl status`. Each section is collected on its own: a
// section that cannot be read says why, and the rest still shows.
type StackStatus struct {
	*status.Report
	Lock        *deploy.LockInfo `json:"deploy_lock,omitempty"`
	LockError   string           `json:"deploy_lock_error,omitempty"`
	Backups     []StatusBackup   `json:"backups,omitempty"`
	BackupError string           `json:"backup_error,omitempty"`
	Shards      []StatusShards   `json:"shards,omitempty"`
	ShardError  string           `json:"shard_error,omitempty"`
	Groups      []StatusGroup    `json:"groups,omitempty"`
	GroupError  string           `json:"group_error,omitempty"`
	// Recovery is per group backup age and "recoverable to", from Prometheus (stacks with a
	// monitor role).
	Recovery      *StatusRecovery `json:"recovery,omitempty"`
	RecoveryError string          `json:"recovery_error,omitempty"`
}

// StatusBackup is the newest backup set of one target and the newest verified one.
type StatusBackup struct {
	Target       string    `json:"target"`
	Last         string    `json:"last_set"`
	LastTime     time.Time `json:"last_time"`
	LastState    string    `json:"last_state"`
	Verified     string    `json:"last_verified_set,omitempty"`
	VerifiedTime time.Time `json:"last_verified_time,omitempty"`
}

// StatusShards is one physical node's share of the logical shards.
type StatusShards struct {
	Node   string `json:"node"`
	Shards int    `json:"shards"`
	Moving int    `json:"moving"`
}

// NewCmdStatus shows the whole stack on one screen.
func NewCmdStatus(f *Factory, out func() Output) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "One screen for the whole stack: hosts, releases, replication, backups, shards, lock",
		Long: `Show, for the whole stack: every host per role with its health and services, the release
each app host runs, how far each replica is behind its primary, the newest backup of each target
and the newest verified one, how the logical shards spread over the physical nodes, and the
deploy lock if someone holds it. With a monitor role, per replication group the newest backup
and the point a restore reaches now ("recoverable to": archived WAL past the backup), from
Prometheus (or $INSTACTL_PROMETHEUS). Exits 1 when a host is unhealthy.`,
		Example: `  instactl status
  instactl status -o json | jq '.hosts[] | select(.replication.lag_bytes > 1000000)'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := statusCollect(cmd.Context(), f)
			if err != nil {
				return err
			}
			if err := render(f.IO, out(), s, func(w io.Writer) error { return statusRender(w, s) }); err != nil {
				return err
			}
			if !s.Healthy {
				return silentExit{ExitError}
			}
			return nil
		},
	}
}

func statusCollect(ctx context.Context, f *Factory) (*StackStatus, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	prov, err := f.Provider(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := f.SSH(false)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	topo, err := statusTopology(ctx, f, st)
	if err != nil {
		return nil, err
	}
	rep, err := status.Collect(ctx, st, topo, prov, pool)
	if err != nil {
		return nil, err
	}
	s := &StackStatus{Report: rep}
	if len(rep.Hosts) == 0 {
		return s, nil
	}
	s.Groups, err = statusGroups(ctx, st, topo, rep)
	if err != nil {
		s.GroupError = errtext.OneLine(err.Error())
	}
	if env, err := deployLoad(ctx, f, ""); err == nil {
		info, _, err := (&deploy.Deployer{Dialer: pool}).LockStatus(ctx, env.cfg, env.hosts)
		s.Lock = info
		if err != nil {
			s.LockError = errtext.OneLine(err.Error())
		}
	} else {
		s.LockError = errtext.OneLine(err.Error())
	}
	if len(st.Backup.Targets) > 0 {
		s.Backups, err = statusBackups(ctx, f)
		if err != nil {
			s.BackupError = errtext.OneLine(err.Error())
		}
	}
	if st.Role(monitor.Role) != nil {
		s.Recovery, err = statusRecovery(ctx, st, topo)
		if err != nil {
			s.RecoveryError = errtext.OneLine(err.Error())
		}
	}
	if st.Role(st.Shards.Role) != nil {
		s.Shards, err = statusShards(ctx, f, st, topo)
		if err != nil {
			s.ShardError = errtext.OneLine(err.Error())
		}
	}
	return s, nil
}

// statusTopology asks the control database for the primaries now; before `shard init` (or
// with its node down) the stack file's topology is the best answer there is.
func statusTopology(ctx context.Context, f *Factory, st *stack.Stack) (topology.Topology, error) {
	dir, err := f.StateDir()
	if err != nil {
		return topology.Topology{}, err
	}
	topo, err := topology.ResolveCached(ctx, st, "postgres", topologyCacheFile(dir))
	if err != nil && len(topo.Groups) == 0 {
		return topo, err
	}
	return topo, nil
}

func statusBackups(ctx context.Context, f *Factory) ([]StatusBackup, error) {
	deps, err := backupSetup(ctx, f, false)
	if err != nil {
		return nil, err
	}
	defer deps.close()
	sets, err := backup.List(ctx, deps.env)
	if err != nil {
		return nil, err
	}
	by := map[string]*StatusBackup{}
	var order []string
	for _, set := range sets { // newest first
		b, ok := by[set.Target]
		if !ok {
			b = &StatusBackup{Target: set.Target, Last: set.ID, LastTime: set.Time, LastState: set.State}
			by[set.Target] = b
			order = append(order, set.Target)
		}
		if set.State == "verified" && b.Verified == "" {
			b.Verified, b.VerifiedTime = set.ID, set.Time
		}
	}
	sort.Strings(order)
	var out []StatusBackup
	for _, t := range order {
		out = append(out, *by[t])
	}
	return out, nil
}

func statusShards(ctx context.Context, f *Factory, st *stack.Stack, topo topology.Topology) ([]StatusShards, error) {
	e, err := newShardEnvWith(f, st, topo)
	if err != nil {
		return nil, err
	}
	defer e.close()
	mp, err := shardLoadMap(ctx, e)
	if err != nil {
		return nil, err
	}
	counts := map[string]*StatusShards{}
	for _, name := range e.site.NodeNames() {
		counts[name] = &StatusShards{Node: name}
	}
	for _, a := range mp.Shards {
		c, ok := counts[a.Node]
		if !ok {
			c = &StatusShards{Node: a.Node}
			counts[a.Node] = c
		}
		c.Shards++
		if a.State != "" && a.State != "active" {
			c.Moving++
		}
	}
	var out []StatusShards
	for _, c := range counts {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

func statusRender(w io.Writer, s *StackStatus) error {
	if err := renderStatus(w, s.Report); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var repl []string
	for _, h := range s.Hosts {
		if r := h.Replication; r != nil {
			repl = append(repl, fmt.Sprintf("%s\t<- %s\t%s\t%d bytes\t%.1fs", h.Name, r.Primary, r.State, r.LagBytes, r.LagSeconds))
		}
	}
	if len(repl) > 0 {
		fmt.Fprintln(w, "\nReplication:")
		fmt.Fprintln(tw, "REPLICA\tPRIMARY\tSTATE\tBEHIND\tLAG")
		fmt.Fprintln(tw, strings.Join(repl, "\n"))
		tw.Flush()
	}
	renderGroups(w, s.Groups, s.GroupError)
	fmt.Fprintln(w, "\nBackups:")
	switch {
	case s.BackupError != "":
		fmt.Fprintf(w, "  unavailable: %s\n", s.BackupError)
	case len(s.Backups) == 0:
		fmt.Fprintln(w, "  none yet (instactl backup create)")
	default:
		fmt.Fprintln(tw, "TARGET\tLAST SET\tTAKEN\tSTATE\tLAST VERIFIED")
		for _, b := range s.Backups {
			ver := "never (instactl backup verify)"
			if b.Verified != "" {
				ver = b.Verified + " " + b.VerifiedTime.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Target, b.Last, b.LastTime.Format(time.RFC3339), b.LastState, ver)
		}
		tw.Flush()
	}
	renderRecovery(w, s.Recovery, s.RecoveryError, time.Now())
	fmt.Fprintln(w, "\nShards:")
	switch {
	case s.ShardError != "":
		fmt.Fprintf(w, "  unavailable: %s\n", s.ShardError)
	case len(s.Shards) == 0:
		fmt.Fprintln(w, "  not initialised (instactl shard init)")
	default:
		for _, n := range s.Shards {
			fmt.Fprintf(w, "  %-12s %4d shards", n.Node, n.Shards)
			if n.Moving > 0 {
				fmt.Fprintf(w, " (%d moving)", n.Moving)
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintln(w, "\nDeploy lock:")
	switch {
	case s.Lock != nil:
		_, err := fmt.Fprintf(w, "  HELD by %s since %s: %s\n", s.Lock.Holder, s.Lock.Time.Format(time.RFC3339), s.Lock.Message)
		return err
	case s.LockError != "":
		_, err := fmt.Fprintf(w, "  unknown: %s\n", s.LockError)
		return err
	}
	_, err := fmt.Fprintln(w, "  free")
	return err
}
