package cli

import (
	"time"

	"github.com/instactl/instactl/deploy"
	"github.com/spf13/cobra"
)

// addDeployCommands adds deploy, rollback, releases, lock and run.
func addDeployCommands(root *cobra.Command, f *Factory, out func() Output) {
	lock := &cobra.Command{
		Use:   "lock",
		Short: "Show or release the stack-wide deploy lock",
		Long: `Every deploy and rollback takes a stack-wide lock: a directory created atomically on the
first host of the deploy role, recording who holds it, since when, what release and their
message. A second deploy is refused with exit code 4 and that information.`,
		Example: `  instactl lock status
  instactl lock release --force   # only after checking the holder's run is dead`,
	}
	lock.AddCommand(NewCmdLockStatus(f, out, nil), NewCmdLockRelease(f, nil))
	root.AddCommand(NewCmdDeploy(f, out, nil), NewCmdRollback(f, out, nil), NewCmdReleases(f, out, nil), lock,
		NewCmdRun(f, out, nil))
}

// DeployOptions are the flags of `instactl deploy`.
type DeployOptions struct {
	Artifact  string
	Version   string
	Source    string
	Batches   []string
	MaxFail   string
	Message   string
	DryRun    bool
	Resume    string
	AcceptNew bool
	Role      string
	// LockWait is how long to wait for a lock held by a live run (0: refuse at once).
	LockWait time.Duration
	// Staging overrides the stack's deploy.staging: deploy.StagingS3 or deploy.StagingSSH.
	Staging    string
	ChangedSet map[string]bool // flags given explicitly, so --resume can refuse them
}

// NewCmdDeploy builds `instactl deploy`. runF replaces the run in tests.
func NewCmdDeploy(f *Factory, out func() Output, runF func(*DeployOptions) error) *cobra.Command {
	o := &DeployOptions{}
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Ship the app server to every app host, rolling, behind the load balancer",
		Long: `Build the bundled app server (cmd/instagram-app) for the hosts, or take --artifact FILE, and
roll it out in two phases:

  stage     put it into releases/<id>/ on every host (sha256 checked on the host);
            hosts that already hold the release get nothing. By default (--staging s3)
            it is uploaded once to the stack's bucket (skipped when the bucket holds it)
            and every host fetches it with a short-lived presigned URL; a host whose
            fetch fails gets it over SSH instead. --staging ssh streams it to every
            host from here. The summary says how many bytes left this machine.
  activate  batch by batch: take the batch out of the load balancer and drain, switch
            current atomically, restart, wait for the health check, put it back

The release id is derived from the artifact's content, so deploying the same build again is
a no-op. When more hosts fail than --max-fail allows, the deploy stops before the next batch
and rolls the failing batch back to the release each host ran before; a host that ran no
release before (a stack's first deploy) has its service stopped and no release current, the
new release staged for the next try.

With deploy.canary in the stack file, the first batch is also judged by its metrics: once
it is back behind the load balancer, instactl scrapes /metrics of its hosts and of as many
hosts of later batches (still on the previous release) at both ends of a window, and tests
whether the canary's 5xx ratio (two-proportion z-test) or latency (Mann-Whitney U on the
histogram) is worse than the baseline's by more than a tolerance, overall and per endpoint.
Fail (surely worse, at the configured confidence) rolls the first batch back like a failed
health check; inconclusive (too few requests, or not sure) extends the window up to
max_window, then goes on with a warning (or rolls back: on_inconclusive: rollback); the
report shows the comparison table (-o json: "canary").

Before touching any host, a deploy of the app role checks that the stack's shard map exists
(the app server cannot start without it) and refuses with exit 2 and the command to run
(instactl shard init) when it does not.

A stack-wide lock refuses a concurrent deploy (exit 4, naming the holder; --lock-wait waits
for it). A lock whose holder process on this machine is gone is reported as stale, with the
commands that finish or break it. Every run has a
run id and a local journal; an interrupted deploy keeps the lock and finishes with
--resume RUN. Every deploy appends one JSON line to the local audit log and to each host's.

The hosts are reached through an ssh keeper (instactl ssh-keeper): the first run starts it
and it keeps the connections open deploy.ssh_persist (5m) after the last run, so a deploy,
rollback, releases or lock command within that time opens sessions instead of handshakes.

Progress goes to stderr: one line per host event, and a line per batch as it completes.
The result (stdout) is a per-batch summary and, for failed hosts, their whole error;
-o json prints the whole report.

Exit codes: 0 ok, 2 bad flags or no shard map yet, 4 locked, 5 some hosts failed within
--max-fail, 1 max-fail breached or the canary analysis failed (the message says where each
host of the batch ended up) or the deploy could not run.`,
		Example: `  # Print the batches, hosts and exact commands; change nothing
  instactl deploy --dry-run

  # A canary, then 10%, then the rest; tolerate one failed host
  instactl deploy --batch 1,10%,100% --max-fail 1 --message "feed ranking v2"

  # Ship a binary built elsewhere, stamped as release v1.4.2 for the health check
  instactl deploy --artifact ./instagram-app --version v1.4.2

  # Finish a deploy that was interrupted (Ctrl-C, lost laptop)
  instactl deploy --resume 20240501T101500Z-3f2a

  # CI: machine-readable report
  instactl deploy -o json > deploy-report.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ChangedSet = map[string]bool{}
			for _, name := range deployPlanFlags {
				o.ChangedSet[name] = cmd.Flags().Changed(name)
			}
			if err := deployValidate(o); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return deployRun(cmd.Context(), f, out(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Artifact, "artifact", "", "ship this binary instead of building cmd/instagram-app")
	fl.StringVar(&o.Version, "version", "", "version stamped into the build (default: git describe); with --artifact, the version the health check must report")
	fl.StringVar(&o.Source, "source", "", "instactl source tree to build from (default: the checkout containing the current directory)")
	fl.StringSliceVar(&o.Batches, "batch", nil, "batch sizes, e.g. 1,10%,100% (default: the stack's deploy.batches)")
	fl.StringVar(&o.MaxFail, "max-fail", "", "hosts that may fail before the deploy stops: N or P% (default: the stack's deploy.max_fail)")
	fl.StringVarP(&o.Message, "message", "m", "", "note recorded in the lock and the audit log")
	fl.BoolVar(&o.DryRun, "dry-run", false, "print the plan (batches, hosts, commands) and change nothing")
	fl.StringVar(&o.Resume, "resume", "", "finish interrupted run `RUN`, touching only unfinished hosts")
	fl.BoolVar(&o.AcceptNew, "accept-new-host-keys", false, "record the keys of hosts known_hosts does not know yet (never changed keys)")
	fl.StringVar(&o.Role, "role", "", "role to deploy to (default: the stack's deploy.role)")
	fl.DurationVar(&o.LockWait, "lock-wait", 0, "wait up to `DURATION` for a lock held by a live run, then exit 4 (a stale lock is reported at once)")
	fl.StringVar(&o.Staging, "staging", "", "how hosts get the artifact: s3 (once to the stack's bucket, fetched by every host) or ssh (streamed to each host from here); default: the stack's deploy.staging, s3")
	return cmd
}

// deployPlanFlags are the flags that shape a plan; a resumed run keeps its journal's plan.
var deployPlanFlags = []string{"artifact", "version", "source", "batch", "max-fail", "message", "dry-run", "role", "staging"}

// deployValidate checks flags before anything is contacted (exit 2, nothing changed).
func deployValidate(o *DeployOptions) error {
	if o.Resume != "" {
		for _, name := range deployPlanFlags {
			if o.ChangedSet[name] {
				return usageErrorf("--resume finishes run %s exactly as it was planned; drop --%s", o.Resume, name)
			}
		}
		return nil
	}
	if len(o.Batches) > 0 {
		if _, err := deploy.ParseBatches(o.Batches); err != nil {
			return usageErrorf("--batch: %v (e.g. --batch 1,10%%,100%%)", err)
		}
	}
	if o.MaxFail != "" {
		if _, err := deploy.ParseMaxFail(o.MaxFail); err != nil {
			return usageErrorf("--max-fail: %v (e.g. --max-fail 2 or --max-fail 10%%)", err)
		}
	}
	if o.Staging != "" && o.Staging != deploy.StagingS3 && o.Staging != deploy.StagingSSH {
		return usageErrorf("--staging %q: use s3 or ssh", o.Staging)
	}
	if o.Artifact != "" && o.Source != "" {
		return usageErrorf("--artifact and --source exclude each other: --source is where to build from")
	}
	return nil
}

// RollbackOptions are the flags of `instactl rollback`.
type RollbackOptions struct {
	To        string
	Batches   []string
	MaxFail   string
	Message   string
	DryRun    bool
	AcceptNew bool
	Role      string
	// LockWait is how long to wait for a lock held by a live run (0: refuse at once).
	LockWait time.Duration
}

// NewCmdRollback builds `instactl rollback`.
func NewCmdRollback(f *Factory, out func() Output, runF func(*RollbackOptions) error) *cobra.Command {
	o := &RollbackOptions{}
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Switch every app host back to its previous (or a named) release",
		Long: `Switch every host of the deploy role back to the release it ran before the current one, or
to --to RELEASE, without uploading anything: the releases are still on the hosts (see
instactl releases). It runs in batches behind the load balancer with the same health gate,
lock and failure policy as a deploy. A second rollback goes one release further back.`,
		Example: `  instactl rollback
  instactl rollback --to 3f2a9c0d1e2b --message "v2 leaks memory"
  instactl rollback --dry-run`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(o.Batches) > 0 {
				if _, err := deploy.ParseBatches(o.Batches); err != nil {
					return usageErrorf("--batch: %v (e.g. --batch 1,100%%)", err)
				}
			}
			if o.MaxFail != "" {
				if _, err := deploy.ParseMaxFail(o.MaxFail); err != nil {
					return usageErrorf("--max-fail: %v (e.g. --max-fail 2 or --max-fail 10%%)", err)
				}
			}
			if runF != nil {
				return runF(o)
			}
			return deployRollbackRun(cmd.Context(), f, out(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.To, "to", "", "release id to switch to (default: each host's previous release)")
	fl.StringSliceVar(&o.Batches, "batch", nil, "batch sizes, e.g. 1,100% (default: the stack's deploy.batches)")
	fl.StringVar(&o.MaxFail, "max-fail", "", "hosts that may fail before the rollback stops: N or P%")
	fl.StringVarP(&o.Message, "message", "m", "", "note recorded in the lock and the audit log")
	fl.BoolVar(&o.DryRun, "dry-run", false, "print the plan and change nothing")
	fl.BoolVar(&o.AcceptNew, "accept-new-host-keys", false, "record the keys of hosts known_hosts does not know yet")
	fl.StringVar(&o.Role, "role", "", "role to roll back (default: the stack's deploy.role)")
	fl.DurationVar(&o.LockWait, "lock-wait", 0, "wait up to `DURATION` for a lock held by a live run, then exit 4 (a stale lock is reported at once)")
	return cmd
}

// ReleasesOptions are the flags of `instactl releases`.
type ReleasesOptions struct {
	Role      string
	AcceptNew bool
}

// NewCmdReleases builds `instactl releases`.
func NewCmdReleases(f *Factory, out func() Output, runF func(*ReleasesOptions) error) *cobra.Command {
	o := &ReleasesOptions{}
	cmd := &cobra.Command{
		Use:   "releases",
		Short: "List the releases staged on every app host, current one marked",
		Long: `List, per host of the deploy role, the releases under releases/ newest first: * marks the
current one, and "previous" the one instactl rollback would switch to. Releases beyond the
stack's deploy.keep_releases are pruned by every deploy.`,
		Example: `  instactl releases
  instactl releases -o json | jq -r '.[] | "\(.host) \(.current)"'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return deployReleasesRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.Role, "role", "", "role to list (default: the stack's deploy.role)")
	cmd.Flags().BoolVar(&o.AcceptNew, "accept-new-host-keys", false, "record the keys of hosts known_hosts does not know yet")
	return cmd
}

// LockOptions are the flags of `instactl lock status|release`.
type LockOptions struct {
	Force bool
	Run   string
	Role  string
}

// NewCmdLockStatus builds `instactl lock status`.
func NewCmdLockStatus(f *Factory, out func() Output, runF func(*LockOptions) error) *cobra.Command {
	o := &LockOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show who holds the deploy lock, since when and why",
		Long:  "Show the holder of the stack-wide deploy lock, or say it is free. Exits 4 when it is held.",
		Example: `  instactl lock status
  instactl lock status -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return deployLockStatusRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.Role, "role", "", "deploy role whose first host holds the lock (default: the stack's deploy.role)")
	return cmd
}

// NewCmdLockRelease builds `instactl lock release`.
func NewCmdLockRelease(f *Factory, runF func(*LockOptions) error) *cobra.Command {
	o := &LockOptions{}
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Drop the deploy lock of a run that died",
		Long: `Drop the stack-wide deploy lock. With --run RUN it drops the lock only if that run holds it.
With --force it drops whoever holds it: first make sure the holder's deploy is really dead
(instactl lock status names it), or finish it instead with instactl deploy --resume RUN.`,
		Example: `  instactl lock release --run 20240501T101500Z-3f2a
  instactl lock release --force`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !o.Force && o.Run == "" {
				return usageErrorf("lock release needs --run RUN (the run holding it) or --force; see instactl lock status")
			}
			if runF != nil {
				return runF(o)
			}
			return deployLockReleaseRun(cmd.Context(), f, o)
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "drop the lock whoever holds it")
	cmd.Flags().StringVar(&o.Run, "run", "", "drop the lock only if run `RUN` holds it")
	cmd.Flags().StringVar(&o.Role, "role", "", "deploy role whose first host holds the lock (default: the stack's deploy.role)")
	return cmd
}

// RunOptions are the flags and command of `instactl run`.
type RunOptions struct {
	Role      string
	Hosts     []string
	Parallel  int
	AcceptNew bool
	Command   []string
}

// NewCmdRun builds `instactl run`.
func NewCmdRun(f *Factory, out func() Output, runF func(*RunOptions) error) *cobra.Command {
	o := &RunOptions{}
	cmd := &cobra.Command{
		Use:   "run [--role R | --hosts a,b] [--parallel N] -- COMMAND [ARG...]",
		Short: "Run a command on many hosts in parallel, output prefixed per host",
		Long: `Run a command on every matching host at once over SSH (host keys checked against
known_hosts), stream each host's output as it arrives with a "host | " prefix, and end with
a summary of exit codes. Without --role or --hosts it runs on every host of the stack.

A single COMMAND argument is a shell script (pipes, && and $VARS work); several arguments are
one command whose arguments are passed exactly as given.

Exit codes: 0 when every host exited 0, 5 when some failed, 1 when all failed.`,
		Example: `  instactl run --role app -- uptime
  instactl run --role pg -- 'df -h /var/lib/postgresql | tail -1'
  instactl run --hosts app-0,app-1 -- systemctl status app
  instactl run --role app -o json -- readlink /opt/instagram/current`,
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash < 0 || len(args) == 0 {
				return usageErrorf("give the command after --: instactl run --role app -- uptime")
			}
			if dash > 0 {
				return usageErrorf("unexpected arguments %q before --; put the command after --", args[:dash])
			}
			if o.Role != "" && len(o.Hosts) > 0 {
				return usageErrorf("--role and --hosts exclude each other")
			}
			if o.Parallel < 0 {
				return usageErrorf("--parallel must be >= 0 (got %d)", o.Parallel)
			}
			o.Command = args
			if runF != nil {
				return runF(o)
			}
			return deployRunCmdRun(cmd.Context(), f, out(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Role, "role", "", "run on every host of this role")
	fl.StringSliceVar(&o.Hosts, "hosts", nil, "run on these hosts, by name (app-0,pg-1)")
	fl.IntVar(&o.Parallel, "parallel", 0, "hosts at once (0: all)")
	fl.BoolVar(&o.AcceptNew, "accept-new-host-keys", false, "record the keys of hosts known_hosts does not know yet (never changed keys)")
	return cmd
}
