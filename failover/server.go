package failover

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
)

// Runner runs a command on one host; *remote.Client is the production one.
type Runner interface {
	Run(ctx context.Context, cmd remote.Command, stdin io.Reader) (remote.Result, error)
}

// SSHServer is the production Server: one pg host's PostgreSQL, driven over SSH with the
// service manager for start and stop and PostgreSQL's own tools, run as user postgres, for
// the rest. Its commands are data (see the *Command methods), unit-tested as strings.
type SSHServer struct {
	// Run reaches the host.
	Run Runner
	// Host is the member's host name: the application_name it streams under.
	Host string
	// PGData is the cluster directory; PGBinDir holds pg_controldata and pg_rewind.
	PGData, PGBinDir string
	// StartCmd and StopCmd start and stop the postgres service and wait for it
	// (templates.StartCommand / StopCommand for the host's service manager).
	StartCmd, StopCmd remote.Command
	// ReplicationUser and ReplicationPassword go into primary_conninfo (default user
	// replicator; the password may be empty where pg_hba trusts the network, as in the
	// sandbox).
	ReplicationUser, ReplicationPassword string
	// RewindUser and RewindPassword connect pg_rewind to the source (default postgres: it
	// needs a superuser or the pg_rewind function grants).
	RewindUser, RewindPassword string
}

// NewSSHServer returns the Server of host, a pg host bootstrapped from d (templates.Data:
// PGData, PGBinDir, ServiceManager), reached through run.
func NewSSHServer(run Runner, host string, d templates.Data) *SSHServer {
	pgdata := d.PGData() // Mount/VERSION/main, defaults applied
	bin := d.PGBinDir
	if bin == "" {
		bin = "/usr/lib/postgresql/" + path.Base(path.Dir(pgdata)) + "/bin"
	}
	return &SSHServer{
		Run: run, Host: host, PGData: pgdata, PGBinDir: bin,
		StartCmd:        remote.Command(templates.StartCommand(d.ServiceManager, "postgres")),
		StopCmd:         remote.Command(templates.StopCommand(d.ServiceManager, "postgres")),
		ReplicationUser: "replicator", ReplicationPassword: d.ReplicationPassword,
	}
}

func (s *SSHServer) run(ctx context.Context, what string, cmd remote.Command) (string, error) {
	if len(cmd) == 0 {
		return "", fmt.Errorf("%s on %s: no command (unknown service manager?)", what, s.Host)
	}
	res, err := s.Run.Run(ctx, cmd, nil)
	if err != nil {
		return "", fmt.Errorf("%s on %s: %w", what, s.Host, err)
	}
	if err := res.Err(); err != nil {
		return string(res.Stdout), fmt.Errorf("%s on %s: %w", what, s.Host, err)
	}
	return string(res.Stdout), nil
}

// asPostgres runs args as the postgres OS user in the C locale (pg_controldata's labels are
// translated otherwise).
func asPostgres(args ...string) remote.Command {
	return remote.Command(append([]string{"runuser", "-u", "postgres", "--", "env", "LC_ALL=C"}, args...))
}

// WalsenderGrace is how long a fast shutdown may wait for its walsenders before Stop ends
// them: a walsender stays until its standby has confirmed the shutdown checkpoint, so a standby
// that stopped receiving (a cut link, a hung walreceiver) would hold the shutdown, and with it
// the paused writes, forever. Ending it lets the shutdown finish; the catch-up check then sees
// that the standby lacks the checkpoint and the switchover rolls back.
const WalsenderGrace = time.Second

// StopCommand is the command Stop runs: SIGINT (fast shutdown) to the postmaster, a 10 ms poll
// until it exits (the service managers poll every 100 ms or slower), walsenders ended after
// WalsenderGrace, then the service manager's stop, which finds it stopped and tidies up.
func (s *SSHServer) StopCommand() remote.Command {
	script := `pidfile=$1/postmaster.pid; shift
pid=$(head -n 1 "$pidfile" 2>/dev/null || true)
# alive: the process exists and is not a zombie (an orphan waits for its reaper a while).
alive() { s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [ "${s%% *}" != Z ]; }
if [ -n "$pid" ] && alive "$pid"; then
	kill -INT "$pid"
	n=0
	while alive "$pid"; do
		sleep 0.01
		n=$((n + 1))
		if [ "$n" -eq ` + fmt.Sprint(int(WalsenderGrace/(10*time.Millisecond))) + ` ]; then
			for c in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
				case $(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null) in *walsender*) kill -TERM "$c" 2>/dev/null || true ;; esac
			done
		fi
	done
fi
exec "$@"`
	return remote.Command(append([]string{"sh", "-c", script, "instactl-stop", s.PGData}, s.StopCmd...))
}

// Stop implements Server.
func (s *SSHServer) Stop(ctx context.Context) error {
	_, err := s.run(ctx, "stop postgres", s.StopCommand())
	return err
}

// Start implements Server.
func (s *SSHServer) Start(ctx context.Context) error {
	_, err := s.run(ctx, "start postgres", s.StartCmd)
	return err
}

// ControlDataCommand is the command ControlData runs.
func (s *SSHServer) ControlDataCommand() remote.Command {
	return asPostgres(path.Join(s.PGBinDir, "pg_controldata"), "-D", s.PGData)
}

// ControlData implements Server.
func (s *SSHServer) ControlData(ctx context.Context) (ControlData, error) {
	out, err := s.run(ctx, "pg_controldata", s.ControlDataCommand())
	if err != nil {
		return ControlData{}, err
	}
	cd, err := ParseControlData(out)
	if err != nil {
		return ControlData{}, fmt.Errorf("%s: %w", s.Host, err)
	}
	return cd, nil
}

// FollowCommand is the command Follow runs: as postgres, it replaces primary_conninfo in
// postgresql.auto.conf (atomically, by rename) and creates standby.signal.
func (s *SSHServer) FollowCommand(primary topology.Member) remote.Command {
	conninfo := fmt.Sprintf("host=%s port=%d user=%s application_name=%s",
		primary.Addr.Addr(), primary.Addr.Port(), conninfoValue(defaultString(s.ReplicationUser, "replicator")), conninfoValue(s.Host))
	if s.ReplicationPassword != "" {
		conninfo += " password=" + conninfoValue(s.ReplicationPassword)
	}
	// Quoted as ALTER SYSTEM writes it: the configuration file parser reads backslash escapes.
	line := "primary_conninfo = '" + strings.NewReplacer(`'`, `''`, `\`, `\\`).Replace(conninfo) + "'"
	auto := path.Join(s.PGData, "postgresql.auto.conf")
	script := strings.Join([]string{
		"set -e",
		"f=" + remote.Quote(auto),
		`touch "$f"`,
		`grep -v -E '^[[:space:]]*primary_conninfo[[:space:]]*=' "$f" > "$f.instactl" || true`,
		"printf '%s\\n' " + remote.Quote(line) + ` >> "$f.instactl"`,
		`mv "$f.instactl" "$f"`,
		"touch " + remote.Quote(path.Join(s.PGData, "standby.signal")),
	}, "\n")
	return remote.Command{"runuser", "-u", "postgres", "--", "sh", "-c", script}
}

// conninfoValue quotes v for a libpq key=value connection string.
func conninfoValue(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Follow implements Server.
func (s *SSHServer) Follow(ctx context.Context, primary topology.Member) error {
	_, err := s.run(ctx, "configure as a standby of "+primary.Host, s.FollowCommand(primary))
	return err
}

// RewindCommand is the command Rewind runs: pg_rewind as postgres against source. pg_rewind
// copies the source's configuration files too, so the host's own (listen address, cluster
// name, pg_hba) are kept aside and put back.
func (s *SSHServer) RewindCommand(source topology.Member) remote.Command {
	conninfo := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", source.Addr.Addr(), source.Addr.Port(),
		conninfoValue(defaultString(s.RewindUser, "postgres")))
	if s.RewindPassword != "" {
		conninfo += " password=" + conninfoValue(s.RewindPassword)
	}
	script := strings.Join([]string{
		"set -e",
		"d=" + remote.Quote(s.PGData),
		staleLockScript,
		`keep=$(mktemp -d)`,
		`for f in postgresql.conf pg_hba.conf pg_ident.conf; do if [ -f "$d/$f" ]; then cp -p "$d/$f" "$keep/"; fi; done`,
		"rc=0",
		remote.Quote(path.Join(s.PGBinDir, "pg_rewind"), "-D", s.PGData, "--source-server="+conninfo) + " || rc=$?",
		`for f in postgresql.conf pg_hba.conf pg_ident.conf; do if [ -f "$keep/$f" ]; then cp -p "$keep/$f" "$d/$f"; fi; done`,
		`rm -rf "$keep"`,
		`exit $rc`,
	}, "\n")
	return remote.Command{"runuser", "-u", "postgres", "--", "env", "LC_ALL=C", "sh", "-c", script}
}

// staleLockScript removes $d/postmaster.pid when no postgres holds it: after a power cut the
// lock file stays, and once the host's pids have wrapped its pid may be another process, which
// PostgreSQL (and pg_rewind's single-user crash recovery) would take for a live postmaster.
const staleLockScript = `if [ -f "$d/postmaster.pid" ]; then
	lp=$(head -n 1 "$d/postmaster.pid")
	case $(tr '\0' ' ' <"/proc/$lp/cmdline" 2>/dev/null) in
	*postgres*) ;;
	*) rm -f "$d/postmaster.pid" ;;
	esac
fi`

// Rewind implements Server.
func (s *SSHServer) Rewind(ctx context.Context, source topology.Member) error {
	_, err := s.run(ctx, "pg_rewind from "+source.Host, s.RewindCommand(source))
	return err
}

var _ Server = (*SSHServer)(nil)
