package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hostMarker is where every host's namespace bind-mounts its host directory (Dir/hosts/ID). A
// mount namespace belongs to host ID exactly when its mount table has that mount with a root
// ending in /hosts/ID: this, not a PID or a namespace inode (both are reused), is how the sandbox
// recognizes the processes it may kill.
const hostMarker = "/run/instactl/host"

// nsOf returns the mount namespace link of pid ("mnt:[4026532...]"), or "" if pid is gone or a
// zombie.
func nsOf(pid int) string {
	l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil {
		return ""
	}
	return l
}

// nsIsHost reports whether the mount namespace of pid is host id's.
func nsIsHost(pid int, id string) bool {
	match, _ := hostOfNS(pid, id)
	return match
}

// hostOfNS reads pid's mount table: match says whether it is host id's namespace; ok is false when
// the table could not be read (pid exited or is a zombie), so another member must be asked.
func hostOfNS(pid int, id string) (match, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil || len(b) == 0 {
		return false, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		// A removed host directory shows as ".../hosts/ID//deleted"; it is still that host.
		if len(fields) > 4 && fields[4] == hostMarker && strings.HasSuffix(strings.TrimSuffix(fields[3], "//deleted"), "/hosts/"+id) {
			return true, true
		}
	}
	return false, true
}

// protectedNS are the namespaces the sandbox never kills in: its own and PID 1's.
func protectedNS() map[string]bool {
	return map[string]bool{nsOf(os.Getpid()): true, nsOf(1): true}
}

// pids lists every process id on the machine.
func pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// hostProcs returns the processes living in host id's mount namespace.
func hostProcs(id string) []int {
	skip := protectedNS()
	byNS := map[string][]int{}
	for _, pid := range pids() {
		if ns := nsOf(pid); ns != "" && !skip[ns] {
			byNS[ns] = append(byNS[ns], pid)
		}
	}
	var out []int
	for _, members := range byNS {
		for _, pid := range members {
			if match, ok := hostOfNS(pid, id); ok {
				if match {
					out = append(out, members...)
				}
				break
			}
		}
	}
	return out
}

// killHost ends every process of host id: SIGTERM first (the sshd listener too), SIGKILL for
// whatever is left after a grace period. The namespace dies with its last process, and with it
// every mount inside it.
func killHost(id string, listener int) error {
	if listener > 0 {
		_ = syscall.Kill(listener, syscall.SIGTERM)
	}
	start := time.Now()
	termed := map[int]bool{}
	for {
		procs := hostProcs(id)
		if len(procs) == 0 {
			// Look twice: a process forked during the scan shows up in the next one.
			time.Sleep(20 * time.Millisecond)
			if procs = hostProcs(id); len(procs) == 0 {
				return nil
			}
		}
		hard := time.Since(start) > 3*time.Second
		for _, pid := range procs {
			switch {
			case hard:
				_ = syscall.Kill(pid, syscall.SIGKILL)
			case !termed[pid]:
				_ = syscall.Kill(pid, syscall.SIGTERM)
				termed[pid] = true
			}
		}
		if time.Since(start) > 15*time.Second {
			return fmt.Errorf("host %s: processes %v still alive after SIGKILL", id, procs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cmdline returns the command line of pid with NULs as spaces.
func cmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

// startDetached starts cmd in a session of its own, so it outlives instactl, and reaps it if it
// ends while this process still runs. It returns a channel closed when the process exits.
func startDetached(cmd *exec.Cmd, logPath string) (<-chan struct{}, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer log.Close()
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Env == nil {
		cmd.Env = baseEnv()
	}
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return done, nil
}

// baseEnv is the environment of processes the sandbox starts: a root login's, not the caller's
// (the machine's shell setup puts pyenv shims first on PATH).
func baseEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "USER=root", "LOGNAME=root"}
}

// run runs a command to completion and returns its combined output in the error.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = baseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
