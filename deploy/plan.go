package deploy

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Kind is what a run does.
type Kind string

const (
	// KindDeploy stages an artifact and activates it.
	KindDeploy Kind = "deploy"
	// KindRollback activates a release already on the hosts (the previous one, or a named one).
	KindRollback Kind = "rollback"
)

// Plan is a run as a value: hosts, batches, the failure policy and the exact remote commands
// of every step. It is printable (Render), JSON-encodable, and is what the run journal stores,
// so a resumed run does exactly what was planned.
type Plan struct {
	Kind   Kind   `json:"kind"`
	RunID  string `json:"run_id"`
	Config Config `json:"config"`
	// Artifact is the release a deploy ships (zero for a rollback).
	Artifact Artifact `json:"artifact,omitempty"`
	// Release is the release activated: the artifact's id, a named rollback target, or ""
	// for "each host's previous release".
	Release string `json:"release"`
	Hosts   []Host `json:"hosts"`
	// LockHost holds the stack-wide lock.
	LockHost string  `json:"lock_host"`
	Batches  []Batch `json:"batches"`
	// MaxFailAllowed is how many hosts may fail (Config.MaxFail resolved against the hosts).
	MaxFailAllowed int `json:"max_fail_allowed"`
	// Steps are the per-host steps in order, with the exact command each runs.
	Steps []Step `json:"steps"`
}

// Batch is one group of hosts activated together.
type Batch struct {
	Index int      `json:"index"`
	Hosts []string `json:"hosts"`
}

// Step is one step of the plan: what it does and, for remote steps, the exact command.
type Step struct {
	Name    string `json:"name"`
	Where   string `json:"where"`
	Command string `json:"command,omitempty"`
	Note    string `json:"note,omitempty"`
}

// NewRunID returns a sortable, unique run id: UTC time plus random hex.
func NewRunID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}

// NewPlan plans a deploy of a (Kind deploy) or a rollback to release (Kind rollback; ""
// means each host's previous release). It is pure: nothing is contacted.
func NewPlan(kind Kind, cfg Config, hosts []Host, a Artifact, release string, runID string) (*Plan, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("no hosts to %s: role %q has no instances", kind, cfg.Role)
	}
	if err := checkHosts(hosts); err != nil {
		return nil, err
	}
	if err := checkID("run id", runID); err != nil {
		return nil, err
	}
	switch kind {
	case KindDeploy:
		if err := checkID("release id", a.ID); err != nil {
			return nil, err
		}
		release = a.ID
	case KindRollback:
		if release != "" {
			if err := checkID("release", release); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("unknown run kind %q", kind)
	}
	specs, _ := ParseBatches(cfg.Batches)
	mf, _ := ParseMaxFail(cfg.MaxFail)
	p := &Plan{Kind: kind, RunID: runID, Config: cfg, Artifact: a, Release: release, Hosts: hosts,
		MaxFailAllowed: mf.Allowed(len(hosts))}
	p.LockHost = lockHost(cfg, hosts)
	for i, b := range SplitBatches(hosts, specs) {
		batch := Batch{Index: i + 1}
		for _, h := range b {
			batch.Hosts = append(batch.Hosts, h.Name)
		}
		p.Batches = append(p.Batches, batch)
	}
	p.Steps = p.steps()
	return p, nil
}

func checkHosts(hosts []Host) error {
	seen := map[string]bool{}
	for _, h := range hosts {
		if h.Name == "" || h.Address == "" {
			return fmt.Errorf("host %+v needs a name and an address", h)
		}
		if seen[h.Name] {
			return fmt.Errorf("host %s is listed twice", h.Name)
		}
		seen[h.Name] = true
	}
	return nil
}

// lockHost is Config.LockHost, or the first host by name.
func lockHost(cfg Config, hosts []Host) string {
	if cfg.LockHost != "" {
		return cfg.LockHost
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	sort.Strings(names)
	return names[0]
}

// steps lists what happens to every host, with the commands as sent.
func (p *Plan) steps() []Step {
	c := p.Config
	restart, _ := c.restartCommand()
	var s []Step
	if p.Kind == KindDeploy {
		a := p.Artifact
		s = append(s, Step{Name: "probe", Where: "every host", Command: ProbeCommand(c.Path, a.ID, c.Binary, a.SHA256).String(),
			Note: "on " + p.LockHost + " with the lock's state; when every host already runs the release and the lock is free, the run ends here without the lock"})
	}
	s = append(s, Step{Name: "lock", Where: p.LockHost, Command: LockCommand(c.Path, []byte(`{...}`)).String(),
		Note: "mkdir is atomic; a second deploy is refused with the holder"})
	if p.Kind == KindDeploy && c.stagingMethod() == StagingS3 {
		s = append(s, p.s3Steps()...)
	} else if p.Kind == KindDeploy {
		a := p.Artifact
		s = append(s,
			Step{Name: "upload", Where: "hosts without the release", Command: uploadSealCommand(c, a).String(),
				Note: fmt.Sprintf("%d bytes on stdin, then the sha256 line; verified and the release sealed on the host", a.Size)})
	}
	if c.LoadBalancer != "" {
		s = append(s, Step{Name: "deregister", Where: "load balancer " + c.LoadBalancer,
			Note: fmt.Sprintf("per batch; wait until the LB reports the hosts out, at most %v", c.DrainTimeout)})
	}
	flip := ActivateCommand(c.Path, p.Release, c.Binary)
	if p.Kind == KindRollback {
		flip = RollbackCommand(c.Path, p.Release, c.Binary)
	}
	s = append(s,
		Step{Name: "flip", Where: "every host", Command: flip.String()},
		Step{Name: "restart", Where: "every host", Command: restart.String()},
		Step{Name: "health", Where: "instactl", Note: healthNote(c)})
	if c.LoadBalancer != "" {
		s = append(s, Step{Name: "register", Where: "load balancer " + c.LoadBalancer, Note: "the batch's healthy hosts"})
	}
	s = append(s, Step{Name: "mark", Where: "every host", Command: MarkCommand(c.Path, p.RunID, p.Release).String()})
	if p.Kind == KindDeploy {
		s = append(s, Step{Name: "prune", Where: "every host, after the last batch",
			Command: PruneCommand(c.Path, c.Binary, c.KeepReleases).String()})
	}
	s = append(s,
		Step{Name: "audit", Where: "every host and " + c.StateDir, Command: AppendCommand(c.AuditPath).String(), Note: "one JSON line on stdin"},
		Step{Name: "unlock", Where: p.LockHost, Command: UnlockCommand(c.Path, p.RunID).String()})
	return s
}

// Render writes the plan for humans: the summary, the batches (collapsed when long) and every
// step's command.
func (p *Plan) Render(w io.Writer) error {
	var b strings.Builder
	c := p.Config
	switch p.Kind {
	case KindDeploy:
		a := p.Artifact
		fmt.Fprintf(&b, "deploy release %s (%s, sha256 %s, %s) to %d hosts of role %s\n", a.ID,
			orDash(a.Version), a.SHA256, humanBytes(a.Size), len(p.Hosts), c.Role)
	case KindRollback:
		fmt.Fprintf(&b, "rollback %d hosts of role %s to %s\n", len(p.Hosts), c.Role, orText(p.Release, "each host's previous release"))
	}
	fmt.Fprintf(&b, "run %s by %s; lock on %s:%s\n", p.RunID, c.Operator, p.LockHost, LockDir(c.Path))
	fmt.Fprintf(&b, "max-fail %s: %d of %d hosts may fail; on breach the failing batch is rolled back\n",
		c.MaxFail, p.MaxFailAllowed, len(p.Hosts))
	if p.Kind == KindDeploy {
		for _, l := range p.stagingLines() {
			b.WriteString(l + "\n")
		}
	}
	b.WriteString(p.canaryPlanLine())
	for _, bt := range p.Batches {
		fmt.Fprintf(&b, "batch %d (%d): %s\n", bt.Index, len(bt.Hosts), listNames(bt.Hosts, 8))
	}
	b.WriteString("steps:\n")
	for i, s := range p.Steps {
		fmt.Fprintf(&b, "%2d. %s on %s", i+1, s.Name, s.Where)
		if s.Note != "" {
			fmt.Fprintf(&b, " (%s)", s.Note)
		}
		b.WriteString("\n")
		if s.Command != "" {
			for _, line := range strings.Split(s.Command, "\n") {
				fmt.Fprintf(&b, "      %s\n", line)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func listNames(names []string, max int) string {
	if len(names) <= max {
		return strings.Join(names, " ")
	}
	return strings.Join(names[:max-2], " ") + fmt.Sprintf(" ... (%d more) ", len(names)-max+1) + names[len(names)-1]
}

func orDash(s string) string { return orText(s, "-") }

func orText(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// writeFileAtomic writes data to path via a temporary file and rename.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func healthNote(c Config) string {
	if c.SkipHealthGate {
		return "skipped: a restart that exits 0 counts as healthy"
	}
	return fmt.Sprintf("GET http://<host>:%d%s, %d consecutive 200s within %v", c.HealthPort, c.HealthPath, c.HealthPasses, c.HealthTimeout)
}
