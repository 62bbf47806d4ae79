package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
)

// Tags written on every snapshot of a set, in the CreateSnapshots call itself.
const (
	// TagTarget is the backed-up role: "pg" or "redis".
	TagTarget = "instactl:backup-target"
	// TagHost is the host the set was taken from ("pg-1").
	TagHost = "instactl:backup-host"
	// TagState is the set's consistency when taken: StateComplete or StateCrashConsistent.
	TagState = "instactl:backup-state"
	// TagVolumes is how many volumes the set has; fewer snapshots means the set is partial.
	TagVolumes = "instactl:backup-volumes"
	// TagVerified records the last restore drill on the set's snapshots: its time (RFC 3339)
	// when it passed, "failed " and its time when it did not. It outranks the manifest, so
	// every machine sees the same state.
	TagVerified = "instactl:backup-verified"
	// TagPartial marks a set found unusable after its snapshots were taken (the freeze outlasted
	// its budget, a snapshot call failed); its value is the reason.
	TagPartial = "instactl:backup-partial"
)

// Set states as List reports them.
const (
	StatePending  = "pending"
	StateComplete = "complete"
	StatePartial  = "partial"
	StateVerified = "verified"
	// StateCrashConsistent is a set snapshotted without a freeze (AllowCrashConsistent). It is
	// listed as complete only if verified; retention treats it as complete.
	StateCrashConsistent = "crash-consistent"
)

// Targets.
const (
	TargetPostgres = "pg"
	TargetRedis    = "redis"
	TargetAll      = "all"
)

// Env is what every backup operation needs. The CLI builds it once from the stack file and its
// Factory.
type Env struct {
	// Stack is the parsed stack file: roles (replicas, ports, volume mounts), SSH user, backup
	// settings and retention.
	Stack *stack.Stack
	// Provider is the stack's cloud.
	Provider cloud.Provider
	// Dialer reaches hosts over SSH.
	Dialer remote.Dialer
	// StateDir holds one JSON manifest per set under StateDir/<stack>/. Required.
	StateDir string
	// Version is instactl's version, recorded in every manifest.
	Version string
	// DeviceDir is where attached volumes appear on a host (default "/run/instactl/dev" on the
	// sandbox, "/dev" elsewhere).
	DeviceDir string
	// PGBinDir holds the Postgres binaries on hosts (default /usr/lib/postgresql/15/bin).
	PGBinDir string
	// Progress, when set, receives one Event per step.
	Progress func(Event)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Event is one progress report.
type Event struct {
	Time time.Time `json:"time"`
	// Set is the set id, when the step belongs to one.
	Set  string `json:"set,omitempty"`
	Host string `json:"host,omitempty"`
	// Step names the step: lock, recover, gate, checkpoint, guardian, freeze, snapshot, thaw,
	// manifest, restore, verify, prune.
	Step    string `json:"step"`
	Message string `json:"message"`
}

func (e *Env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Env) emit(set, host, step, format string, args ...any) {
	if e.Progress != nil {
		e.Progress(Event{Time: e.now(), Set: set, Host: host, Step: step, Message: fmt.Sprintf(format, args...)})
	}
}

func (e *Env) check() error {
	switch {
	case e.Stack == nil:
		return errors.New("backup: stack is required")
	case e.Provider == nil:
		return errors.New("backup: provider is required")
	case e.StateDir == "":
		return errors.New("backup: state dir is required (manifests are kept there)")
	}
	return nil
}

func (e *Env) pgBin() string {
	if e.PGBinDir != "" {
		return e.PGBinDir
	}
	return "/usr/lib/postgresql/15/bin"
}

func (e *Env) deviceDir() string {
	if e.DeviceDir != "" {
		return e.DeviceDir
	}
	if e.Provider != nil && e.Provider.Name() == "sandbox" {
		return "/run/instactl/dev"
	}
	return "/dev"
}

func (e *Env) cmds() commands {
	return commands{sudo: e.Stack.SSH.User != "" && e.Stack.SSH.User != "root"}
}

// UnsafeError says the replica is not in a state a backup may be taken from (exit 3): the run
// was skipped and nothing was changed.
type UnsafeError struct {
	Host   string
	Target string
	Reason string
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("backup of %s %s skipped as unsafe: %s", e.Target, e.Host, e.Reason)
}

// LockedError says another backup run holds the host's lock (exit 4).
type LockedError struct {
	Host string
	// Holder is what the holding run recorded ("instactl pid 123 on ops-1 since ...").
	Holder string
}

func (e *LockedError) Error() string {
	h := e.Holder
	if h == "" {
		h = "another run"
	}
	return fmt.Sprintf("backup lock on %s is held by %s; wait for it or pass a lock wait", e.Host, h)
}

// PartialError says a set was recorded but is not a usable backup (exit 5): a snapshot call
// failed or outlasted the freeze budget. The set is marked partial and prune removes it.
type PartialError struct {
	Set    string
	Reason string
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("backup set %s is partial: %s", e.Set, e.Reason)
}

// host is one instance of the stack with what backup needs to reach and understand it.
type host struct {
	inst    cloud.Instance
	role    *stack.Role
	primary *cloud.Instance // the group's primary now, when it exists
	volumes []cloud.Volume  // attached data volumes, by device
	// group is the replication group the host is a standby of, as topology source had it.
	group  topology.Group
	source string
}

func (h host) name() string { return h.inst.Name }

func (e *Env) target(in cloud.Instance) remote.Target {
	addr := in.PublicAddress
	if addr == "" {
		addr = in.PrivateAddress
	}
	return remote.Target{Name: in.Name, Address: addr, Port: in.SSHPort, User: e.Stack.SSH.User}
}

func (e *Env) dial(ctx context.Context, in cloud.Instance) (*remote.Client, error) {
	if e.Dialer == nil {
		return nil, errors.New("backup: dialer is required")
	}
	c, err := e.Dialer.Dial(ctx, e.target(in))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", in.Name, err)
	}
	return c, nil
}

// controlUser is the database user backup reads the topology as, like the shard commands.
const controlUser = "postgres"

// topology returns the replication groups now (topology.Resolve): which member of each group
// is primary. Before `shard init` the control database does not exist (and with its node down
// it cannot be read): the stack file's groups are then the answer, as they were before the
// topology existed, and a progress event says so. The standby gates still refuse a host that
// is a primary in fact.
func (e *Env) topology(ctx context.Context) (topology.Topology, error) {
	topo, err := topology.Resolve(ctx, e.Stack, controlUser)
	if err != nil {
		if len(topo.Groups) == 0 {
			return topo, fmt.Errorf("backup: %w", err)
		}
		e.emit("", "", "topology", "the control database cannot be read, so the stack file's primaries are taken as current: %v", err)
	}
	return topo, nil
}

// groupKind is the topology's kind of group for a backup target.
func groupKind(st *stack.Stack, target string) (string, error) {
	switch {
	case target == TargetRedis:
		return topology.KindRedis, nil
	case target == TargetPostgres && st.Shards.Role == target:
		return topology.KindPostgres, nil
	case target == TargetPostgres:
		return "", fmt.Errorf("backup target %s: the topology's PostgreSQL groups are role %s (shards.role), not %s; set shards.role: %s",
			target, st.Shards.Role, target, target)
	}
	return "", fmt.Errorf("backup target %q: want pg or redis", target)
}

// pick is one host to back up as the topology has it now: a standby and its group's primary.
type pick struct {
	group   topology.Group
	standby string
}

// standbys returns the host to back up in every group of target's kind: the group's first
// standby now, in stack order. On a stack as declared that is the first replica of every
// physical node; after a recorded failover it is the former primary, and the new primary is
// never chosen. A group without a standby (a trailing lone node) is left out.
func standbys(st *stack.Stack, topo topology.Topology, target string) ([]pick, error) {
	role := st.Role(target)
	if role == nil {
		return nil, fmt.Errorf("backup target %s: the stack has no role %s", target, target)
	}
	if role.Replicas < 1 {
		return nil, fmt.Errorf("backup target %s: role %s has no replicas; backups are taken from replicas only", target, target)
	}
	kind, err := groupKind(st, target)
	if err != nil {
		return nil, err
	}
	var out []pick
	for _, g := range topo.OfKind(kind) {
		if _, err := g.PrimaryMember(); err != nil {
			return nil, fmt.Errorf("backup target %s: %w", target, err)
		}
		if sb := g.Standbys(); len(sb) > 0 {
			out = append(out, pick{group: g, standby: sb[0].Host})
		}
	}
	return out, nil
}

// replicas returns the hosts to back up for target, as topo has them: the first standby of
// every replication group, with its primary now and its attached volumes.
func (e *Env) replicas(ctx context.Context, target string, topo topology.Topology) ([]host, error) {
	picks, err := standbys(e.Stack, topo, target)
	if err != nil {
		return nil, err
	}
	res, err := e.Provider.Describe(ctx, e.Stack.Name)
	if err != nil {
		return nil, fmt.Errorf("describe stack %s: %w", e.Stack.Name, err)
	}
	// Instances by their stack host name ("pg-1"): the topology's names, not the cloud's.
	byHost := map[string]cloud.Instance{}
	for _, in := range res.Instances {
		if in.Role == target && in.State != "terminated" {
			byHost[stack.HostName(in.Role, in.Index)] = in
		}
	}
	role := e.Stack.Role(target)
	var out []host
	for _, p := range picks {
		in, ok := byHost[p.standby]
		if !ok {
			return nil, fmt.Errorf("backup target %s: standby %s of %s does not exist (run instactl apply)", target, p.standby, p.group.Name)
		}
		h := host{inst: in, role: role, group: p.group, source: topo.Source}
		if pi, ok := byHost[p.group.Primary]; ok {
			h.primary = &pi
		}
		h.volumes = attachedVolumes(res.Volumes, in.ID)
		out = append(out, h)
	}
	return out, nil
}

// attachedVolumes lists the volumes attached to instance id, ordered by device.
func attachedVolumes(vols []cloud.Volume, id string) []cloud.Volume {
	var out []cloud.Volume
	for _, v := range vols {
		if v.InstanceID == id {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// expandTargets turns "all" (or "") into the stack's backup targets.
func (e *Env) expandTargets(t string) ([]string, error) {
	switch t {
	case "", TargetAll:
		ts := e.Stack.Backup.Targets
		if len(ts) == 0 {
			ts = []string{TargetPostgres, TargetRedis}
		}
		return ts, nil
	case TargetPostgres, TargetRedis:
		return []string{t}, nil
	}
	return nil, fmt.Errorf("backup target %q: want pg, redis or all", t)
}

// kind says whether a role is backed up as Postgres or Redis.
func kind(role string) string {
	switch role {
	case templates.RolePostgres:
		return TargetPostgres
	case templates.RoleRedis:
		return TargetRedis
	}
	return role
}

// runCmd runs cmd and turns a non-zero exit into an error.
func runCmd(ctx context.Context, c executor, cmd remote.Command) (remote.Result, error) {
	res, err := c.Run(ctx, cmd, nil)
	if err != nil {
		return res, err
	}
	if err := res.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// executor runs commands on one host; *remote.Client is one.
type executor interface {
	Run(ctx context.Context, cmd remote.Command, stdin io.Reader) (remote.Result, error)
}

// trimOut returns stdout as a trimmed string.
func trimOut(r remote.Result) string { return strings.TrimSpace(string(r.Stdout)) }
