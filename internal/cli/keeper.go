package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/homedir"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/spf13/cobra"
)

// keeperChildEnv marks the process StartKeeper starts. The instactl binary does not need
// it (its arguments say what to do); a Go test binary does: its TestMain runs the CLI
// instead of the tests when it is set (see testBinaryServesKeeper).
const keeperChildEnv = "INSTACTL_KEEPER_CHILD"

// testBinaryServesKeeper is set by this package's TestMain, which serves the keeper when
// started as one. Any other test binary running the CLI in-process connects directly:
// started as a keeper, it would run its tests instead.
var testBinaryServesKeeper bool

func addKeeperCommands(root *cobra.Command, f *Factory, out func() Output) {
	cmd := &cobra.Command{
		Use:   "ssh-keeper",
		Short: "See or stop the process that keeps deploy's SSH connections open between runs",
		Long: `deploy, rollback, releases and lock connect to the hosts through a keeper: a background
instactl process (like OpenSSH's ControlPersist) that holds one SSH connection per host
and stays deploy.ssh_persist (default 5m) after its last session, then exits. A run
within that time opens a session on a kept connection instead of a new handshake, so an
unchanged redeploy of 50 hosts costs 50 sessions.

The keeper listens on a unix socket in a directory only you can enter
($XDG_RUNTIME_DIR/instactl-keeper, else /tmp/instactl-keeper-UID) and serves only your
uid. One keeper serves one way of connecting (user, keys, known_hosts and what it says):
a run with other settings, or after known_hosts changed, gets its own, so a key removed
from known_hosts is never trusted through a connection made before. A host that is
replaced drops its connection and the next run checks the new key.

Turn it off with deploy.ssh_persist: 0s in the stack file. ` + "`instactl sandbox down`" + ` stops the
sandbox's keepers.`,
		Example: `  instactl ssh-keeper status
  instactl ssh-keeper stop          # this stack's keepers
  instactl ssh-keeper stop --all    # every keeper of this user`,
		Args: noArgs,
	}
	cmd.AddCommand(newCmdKeeperServe(f), newCmdKeeperStatus(f, out), newCmdKeeperStop(f))
	root.AddCommand(cmd)
}

// newCmdKeeperServe is the keeper process itself; StartKeeper runs it.
func newCmdKeeperServe(f *Factory) *cobra.Command {
	var socket string
	var idle time.Duration
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "Serve as the ssh keeper (started by instactl; reads its SSH settings as JSON on stdin)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if socket == "" || idle <= 0 {
				return usageErrorf("ssh-keeper serve needs --socket and a positive --idle")
			}
			var cfg remote.Config
			if err := json.NewDecoder(io.LimitReader(f.IO.In, 1<<20)).Decode(&cfg); err != nil {
				return fmt.Errorf("ssh keeper: read its SSH settings from stdin: %w", err)
			}
			d, err := remote.NewDialer(cfg)
			if err != nil {
				return err
			}
			defer d.Close()
			ln, release, err := remote.ListenKeeper(socket)
			if errors.Is(err, remote.ErrKeeperRunning) {
				return nil // the other one serves
			}
			if err != nil {
				return err
			}
			defer release()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			signal.Ignore(syscall.SIGHUP)
			fmt.Fprintf(os.Stderr, "%s ssh keeper pid %d on %s: exits %s after its last session\n", time.Now().Format(time.RFC3339), os.Getpid(), socket, idle)
			err = remote.ServeKeeper(ctx, ln, d, idle)
			fmt.Fprintf(os.Stderr, "%s ssh keeper pid %d: exit (%v)\n", time.Now().Format(time.RFC3339), os.Getpid(), err)
			return err
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "unix socket to serve")
	cmd.Flags().DurationVar(&idle, "idle", stack.DefaultSSHPersist, "exit after this long without a session")
	return cmd
}

// keeperView is one running keeper in `ssh-keeper status`.
type keeperView struct {
	Socket string `json:"socket"`
	remote.KeeperStatus
}

func newCmdKeeperStatus(f *Factory, out func() Output) *cobra.Command {
	return &cobra.Command{
		Use:     "status",
		Short:   "List this user's running keepers and the hosts they hold connections to",
		Example: "  instactl ssh-keeper status\n  instactl ssh-keeper status -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			socks, err := keeperSockets()
			if err != nil {
				return err
			}
			views := []keeperView{}
			for _, s := range socks {
				st, err := (&remote.KeeperDialer{Socket: s}).Status(cmd.Context())
				if err != nil {
					continue // a socket a dead keeper left: the next keeper replaces it
				}
				views = append(views, keeperView{Socket: s, KeeperStatus: st})
			}
			return render(f.IO, out(), views, func(w io.Writer) error {
				if len(views) == 0 {
					_, err := fmt.Fprintln(w, "no ssh keeper is running")
					return err
				}
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "PID\tUP\tIDLE FOR\tEXITS AFTER\tSESSIONS\tHOSTS\tKNOWN HOSTS")
				for _, v := range views {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s idle\t%d\t%d%s\t%s\n", v.PID, time.Since(v.Started).Round(time.Second),
						time.Since(v.LastUse).Round(time.Second), v.Idle, v.Active, len(v.Hosts), keeperHostList(v.Hosts), v.KnownHosts)
				}
				return tw.Flush()
			})
		},
	}
}

func keeperHostList(hosts []string) string {
	if len(hosts) == 0 {
		return ""
	}
	if len(hosts) > 3 {
		return " (" + strings.Join(hosts[:3], ", ") + ", ...)"
	}
	return " (" + strings.Join(hosts, ", ") + ")"
}

func newCmdKeeperStop(f *Factory) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Close the kept SSH connections of this stack (--all: of every stack) and end their keepers",
		Long: `Stop this stack's keepers: they close every connection they hold and exit. A deploy
running through one sees its sessions fail as if the hosts had dropped them; stop keepers
between runs. The next run starts a new keeper.`,
		Example: "  instactl ssh-keeper stop\n  instactl ssh-keeper stop --all",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var socks []string
			if all {
				var err error
				if socks, err = keeperSockets(); err != nil {
					return err
				}
			} else {
				st, err := f.Stack()
				if err != nil {
					return err
				}
				if socks, err = stackKeeperSockets(cmd.Context(), st); err != nil {
					return err
				}
			}
			n, err := stopKeepers(cmd.Context(), socks)
			f.IO.Statusf("stopped %d ssh keeper(s)", n)
			return err
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "stop every keeper of this user, of any stack")
	return cmd
}

// stopKeepers stops the keepers serving socks; it returns how many were running.
func stopKeepers(ctx context.Context, socks []string) (int, error) {
	n := 0
	var errs []error
	for _, s := range socks {
		k := &remote.KeeperDialer{Socket: s}
		if _, err := k.Status(ctx); err != nil {
			continue
		}
		if err := k.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop the ssh keeper at %s: %w", s, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// keeperSockets lists the sockets in this user's keeper directory.
func keeperSockets() ([]string, error) {
	dir, err := remote.KeeperDir()
	if err != nil {
		return nil, err
	}
	return filepath.Glob(filepath.Join(dir, "*.sock"))
}

// stackKeeperSockets returns the sockets of st's running keepers: those whose
// connections were made with st's known_hosts file.
func stackKeeperSockets(ctx context.Context, st *stack.Stack) ([]string, error) {
	all, err := keeperSockets()
	if err != nil {
		return nil, err
	}
	kh := keeperConfig(st, false).KnownHostsFile
	var socks []string
	for _, s := range all {
		if ks, err := (&remote.KeeperDialer{Socket: s}).Status(ctx); err == nil && ks.KnownHosts == kh {
			socks = append(socks, s)
		}
	}
	return socks, nil
}

// keeperConfig is sshConfig with absolute paths: the keeper's name is a hash of it, and
// two runs from different directories must not share a keeper for different files.
func keeperConfig(st *stack.Stack, acceptNew bool) remote.Config {
	cfg := sshConfig(st, acceptNew)
	abs := func(p string) string {
		if p == "" {
			return p
		}
		if a, err := filepath.Abs(homedir.Expand(p)); err == nil {
			return a
		}
		return p
	}
	for i, p := range cfg.IdentityFiles {
		cfg.IdentityFiles[i] = abs(p)
	}
	cfg.KnownHostsFile, cfg.SSHConfigFile = abs(cfg.KnownHostsFile), abs(cfg.SSHConfigFile)
	return cfg
}

// deployPool returns the connection pool of a deploy, rollback or lock command: through
// the stack's keeper when deploy.ssh_persist is on, so the next run within it skips the
// handshakes; directly when it is off, or when no keeper can be had (said on stderr).
func deployPool(ctx context.Context, f *Factory, acceptNew bool) (*remote.Pool, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	persist := st.Deploy.Persist()
	if persist <= 0 {
		return f.SSH(acceptNew)
	}
	k, err := keeperDialer(st, acceptNew, persist)
	if err == nil {
		err = k.Ensure(ctx)
	}
	if err != nil {
		f.IO.Statusf("warning: connecting directly, not through the ssh keeper: %v", err)
		return f.SSH(acceptNew)
	}
	return remote.NewPool(k), nil
}

// keeperDialer returns the dialer through st's keeper, which it starts (this binary,
// `ssh-keeper serve`) when none answers.
func keeperDialer(st *stack.Stack, acceptNew bool, persist time.Duration) (*remote.KeeperDialer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this instactl binary: %w", err)
	}
	if strings.HasSuffix(filepath.Base(exe), ".test") && !testBinaryServesKeeper {
		return nil, fmt.Errorf("%s is a test binary that cannot serve as the keeper", exe)
	}
	cfg := keeperConfig(st, acceptNew)
	d, err := remote.NewDialer(cfg)
	if err != nil {
		return nil, err // the same error the direct dialer gives, before any process starts
	}
	d.Close()
	sock, err := remote.KeeperSocket(cfg, exe)
	if err != nil {
		return nil, err
	}
	return &remote.KeeperDialer{Socket: sock, Start: func(ctx context.Context) error {
		cmd := exec.Command(exe, "ssh-keeper", "serve", "--socket", sock, "--idle", persist.String())
		cmd.Env = append(os.Environ(), keeperChildEnv+"=1")
		return remote.StartKeeper(ctx, sock, cfg, cmd)
	}}, nil
}
