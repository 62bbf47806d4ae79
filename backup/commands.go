package backup

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/templates"
)

// Host-side paths. None of them is on a data volume: a frozen volume never blocks the backup's
// own bookkeeping.
const (
	// HostStateDir holds the lock, the lock holder and the guardian's pid and fired marker.
	HostStateDir = "/var/lib/instagram/backup"
	// LockFile is flock'ed for the whole run by a process that lives as long as the run's SSH
	// session.
	LockFile = HostStateDir + "/lock"
	// LockHolderFile describes the run holding LockFile.
	LockHolderFile = HostStateDir + "/lock.holder"
	// GuardianPIDFile records the thaw guardian's pid (its process group leader).
	GuardianPIDFile = HostStateDir + "/guardian.pid"
	// GuardianFiredFile is written by a guardian that ran out its budget and thawed.
	GuardianFiredFile = HostStateDir + "/guardian.fired"
	// GuardianLog receives the guardian's output.
	GuardianLog = "/var/log/instagram/backup-guardian.log"
	// guardianMarker is the guardian's $0, so its processes are recognisable in /proc.
	guardianMarker = "instactl-thaw-guardian"
	// lockConflictExit is flock's exit status when the lock is held (-E).
	lockConflictExit = 75
	// pgSocketDir is where every host's Postgres listens on a Unix socket.
	pgSocketDir = "/run/postgresql"
	// FreezeMarkerFile is the node exporter textfile (monitor.FreezeMetricsFile) that holds,
	// while a volume is frozen, instactl_volume_frozen_since_seconds{mountpoint=...}: the
	// monitoring alerts on a volume frozen past the budget. freeze adds the mount's line just
	// before xfs_freeze; thaw and the guardian remove the file once every mount is thawed.
	FreezeMarkerFile = templates.TextfileDir + "/instactl_freeze.prom"
)

// commands builds the remote commands of one host. They are pure functions of their inputs so
// the exact strings are unit-tested; sudo is used when the SSH user is not root.
type commands struct {
	sudo bool
	// freezeMarker replaces FreezeMarkerFile (tests).
	freezeMarker string
}

func (c commands) marker() string {
	if c.freezeMarker != "" {
		return c.freezeMarker
	}
	return FreezeMarkerFile
}

// root wraps a command that needs root.
func (c commands) root(cmd remote.Command) remote.Command {
	if !c.sudo {
		return cmd
	}
	return append(remote.Command{"sudo", "-n"}, cmd...)
}

// asPostgres runs cmd as the postgres OS user (peer authentication on the local socket).
func (c commands) asPostgres(cmd ...string) remote.Command {
	if c.sudo {
		return append(remote.Command{"sudo", "-n", "-u", "postgres", "--"}, cmd...)
	}
	return append(remote.Command{"runuser", "-u", "postgres", "--"}, cmd...)
}

// psql runs one SQL statement on the local cluster at port, unaligned, tuples only, fields
// separated by '|'.
func (c commands) psql(pgBin string, port int, db, sql string) remote.Command {
	return c.asPostgres(pgBin+"/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", pgSocketDir,
		"-p", strconv.Itoa(port), "-d", db, "-c", sql)
}

// lock holds LockFile until its stdin closes (the run ends or its connection drops: sshd then
// closes the session and the process exits, releasing the flock). It prints "acquired" once
// held and records holder in LockHolderFile; with wait > 0 it waits that long for the lock.
// When the lock stays held it exits lockConflictExit after printing the current holder.
func (c commands) lock(holder string, wait time.Duration) remote.Command {
	flock := []string{"flock", "-E", strconv.Itoa(lockConflictExit)}
	if wait > 0 {
		flock = append(flock, "-w", seconds(wait))
	} else {
		flock = append(flock, "-n")
	}
	inner := `printf '%s\n' "$1" >"$2.tmp" && mv "$2.tmp" "$2" && echo acquired && exec cat >/dev/null`
	script := "mkdir -p " + remote.Quote(HostStateDir) + " && " +
		remote.Quote(append(flock, LockFile, "sh", "-c", inner, "instactl-backup-lock", holder, LockHolderFile)...) +
		"; rc=$?; if [ $rc -eq " + strconv.Itoa(lockConflictExit) + " ]; then cat " + remote.Quote(LockHolderFile) +
		" 2>/dev/null; fi; exit $rc"
	return c.root(remote.Script(script))
}

// armGuardian starts the thaw guardian detached from the SSH session (its own session, no
// inherited descriptors) and prints its pid. After budget it writes GuardianFiredFile, thaws
// every mount and, when pgPort > 0, resumes WAL replay of the cluster at pgPort, so nothing stays
// frozen or paused even if instactl is killed or its connection drops, then removes its pid file
// (kept in a variable: the mounts are its positional arguments after shift). A normal run kills
// it (killGuardian) after its own thaw.
func (c commands) armGuardian(budget time.Duration, pgBin string, pgPort int, mounts []string) remote.Command {
	guard := `echo $$ >"$1.tmp" && mv "$1.tmp" "$1"; sleep "$2"; date -u +%FT%TZ >"$3"; ` +
		`pidfile=$1 port=$4 bin=$5 marker=$6; shift 6; for m in "$@"; do xfs_freeze -u "$m" && echo "guardian thawed $m"; done; rm -f "$marker"; ` +
		`if [ "$port" -gt 0 ]; then runuser -u postgres -- "$bin/psql" -X -q -h ` + pgSocketDir +
		` -p "$port" -d postgres -c "SELECT pg_wal_replay_resume()" && echo "guardian resumed wal replay"; fi; ` +
		`rm -f "$pidfile"`
	args := append([]string{"setsid", "sh", "-c", guard, guardianMarker, GuardianPIDFile, seconds(budget),
		GuardianFiredFile, strconv.Itoa(pgPort), pgBin, c.marker()}, mounts...)
	script := "mkdir -p " + remote.Quote(HostStateDir) + " " + remote.Quote("/var/log/instagram") +
		" && rm -f " + remote.Quote(GuardianPIDFile) + " " + remote.Quote(GuardianFiredFile) + " && " +
		remote.Quote(args...) + " </dev/null >>" + remote.Quote(GuardianLog) + " 2>&1 & " +
		"i=0; while [ ! -s " + remote.Quote(GuardianPIDFile) + " ]; do i=$((i+1)); " +
		"if [ $i -gt 200 ]; then echo 'thaw guardian did not start' >&2; exit 1; fi; sleep 0.01; done; cat " +
		remote.Quote(GuardianPIDFile)
	return c.root(remote.Script(script))
}

// killGuardian stops the guardian recorded in GuardianPIDFile (its whole process group, sleep
// included) when the pid still belongs to a guardian, and prints "fired" when it had already
// run out its budget. It prints "killed PID" when it stopped one.
func (c commands) killGuardian() remote.Command {
	script := `pid=$(cat ` + remote.Quote(GuardianPIDFile) + ` 2>/dev/null); ` +
		`if [ -n "$pid" ] && tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null | grep -q ` + guardianMarker + `; then ` +
		`kill -TERM -$pid 2>/dev/null && echo "killed $pid"; fi; rm -f ` + remote.Quote(GuardianPIDFile) + `; ` +
		`if [ -e ` + remote.Quote(GuardianFiredFile) + ` ]; then echo fired; rm -f ` + remote.Quote(GuardianFiredFile) + `; fi; true`
	return c.root(remote.Script(script))
}

// freeze freezes one mount, after adding its line to the freeze marker (best effort, written
// atomically: a marker that cannot be written never stops a backup).
func (c commands) freeze(mount string) remote.Command {
	script := `m=$1 f=$2; { mkdir -p "$(dirname "$f")" && ` +
		`{ grep -vF "mountpoint=\"$m\"}" "$f" 2>/dev/null; ` +
		`printf 'instactl_volume_frozen_since_seconds{mountpoint="%s"} %s\n' "$m" "$(date +%s)"; } >"$f.tmp" && ` +
		`mv "$f.tmp" "$f"; } 2>/dev/null; exec xfs_freeze -f "$m"`
	return c.root(remote.Command{"sh", "-c", script, "instactl-freeze", mount, c.marker()})
}

// thaw thaws mounts and prints "thawed MOUNT" for each that was frozen; one that was not frozen
// (xfs_freeze says EINVAL) is skipped silently. Any other failure exits non-zero.
func (c commands) thaw(mounts []string) remote.Command {
	script := `f=$1; shift; rc=0; for m in "$@"; do if out=$(xfs_freeze -u "$m" 2>&1); then echo "thawed $m"; ` +
		`else case $out in *"Invalid argument"*) ;; *) echo "$out" >&2; rc=1;; esac; fi; done; ` +
		`if [ $rc -eq 0 ]; then rm -f "$f"; fi; exit $rc`
	return c.root(append(remote.Command{"sh", "-c", script, "instactl-thaw", c.marker()}, mounts...))
}

// syncMounts flushes every mount's file system.
func (c commands) syncMounts(mounts []string) remote.Command {
	return c.root(append(remote.Command{"sync", "-f"}, mounts...))
}

// fsInfo prints, for each mount (the topmost file system mounted there), a line "MOUNT|SOURCE|FSTYPE|UUID" followed by xfs_info's output
// between BEGIN and END markers.
func (c commands) fsInfo(mounts []string) remote.Command {
	script := `for m in "$@"; do src=$(findmnt -rno SOURCE -M "$m" | tail -n 1); [ -n "$src" ] || { echo "$m is not a mount point" >&2; exit 1; }; ` +
		`echo "$m|$src|$(findmnt -rno FSTYPE -M "$m" | tail -n 1)|$(blkid -o value -s UUID "$src")"; ` +
		`echo BEGIN; xfs_info "$m"; echo END; done`
	return c.root(append(remote.Command{"sh", "-c", script, "instactl-fsinfo"}, mounts...))
}

// redisCLI runs one redis command against addr:port.
func redisCLI(addr string, port int, args ...string) remote.Command {
	return append(remote.Command{"redis-cli", "--no-raw", "-h", addr, "-p", strconv.Itoa(port)}, args...)
}

// checkRDB runs redis-check-rdb on path and prints its sha256 on the last line.
func (c commands) checkRDB(path string) remote.Command {
	return c.root(remote.Script("redis-check-rdb " + remote.Quote(path) + " && sha256sum " + remote.Quote(path)))
}

// seconds formats d for sleep(1) and flock -w: seconds with up to three decimals.
func seconds(d time.Duration) string {
	s := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" {
		return "0"
	}
	return s
}

// sqlLiteral quotes s as a SQL string literal.
func sqlLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// lines splits command output into trimmed non-empty lines.
func lines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// parseLSN parses a Postgres LSN "16/B374D848" into a byte position.
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("parse lsn %q: no slash", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	return h<<32 | l, nil
}
