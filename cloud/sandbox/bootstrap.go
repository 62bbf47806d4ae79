package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Paths inside a host that bootstrap uses (as on an AWS host, where the templates write the
// same files).
const (
	userDataPath  = "/var/lib/instagram/user-data"
	bootstrapDone = "/var/lib/instagram/bootstrap.done"
	bootstrapFail = "/var/lib/instagram/bootstrap.failed"
	bootstrapLog  = "/var/log/instagram/bootstrap.log"
	// FstabPath is the host's fstab: StartStopped mounts what it lists after a restart, as the
	// boot of a stopped EC2 instance mounts /etc/fstab. User-data that mounts volumes writes it.
	FstabPath = "/etc/instagram/fstab"
	// RCLocalPath, if present in a host, runs after every restart by StartStopped (not at
	// creation), logging to /var/log/instagram/rc.local.log.
	RCLocalPath = "/var/lib/instagram/rc.local"
)

// bootstrapWrapper runs the user-data and, if the script wrote neither marker, writes the one its
// exit status says, so a crashed script is never mistaken for one still running.
const bootstrapWrapper = `cd /
/bin/bash "$1"
rc=$?
if [ ! -e "$2" ] && [ ! -e "$3" ]; then
    if [ "$rc" -eq 0 ]; then date -u +%Y-%m-%dT%H:%M:%SZ >"$2"; else echo "user-data exited with status $rc" >"$3"; fi
fi
`

// runInHost starts a script detached inside a running host's mount namespace (nsenter), logging
// to logPath inside the host, with the host's metadata in the environment.
func (p *Provider) runInHost(in *instanceRec, logPath string, args ...string) (*exec.Cmd, error) {
	pid := p.sshdPID(in)
	if pid == 0 {
		return nil, fmt.Errorf("instance %s is not running", in.ID)
	}
	cmd := exec.Command("nsenter", append([]string{"--target", strconv.Itoa(pid), "--mount", "--"}, args...)...)
	cmd.Env = append(baseEnv(), "INSTACTL_INSTANCE_ID="+in.ID, "INSTACTL_LOCAL_IPV4="+in.PrivateAddress,
		"INSTACTL_NAME="+in.Name, "INSTACTL_ROLE="+in.Role, "INSTACTL_INDEX="+strconv.Itoa(in.Index), "INSTACTL_SANDBOX=1")
	done, err := startDetached(cmd, procRoot(pid, logPath))
	if err != nil {
		return nil, err
	}
	// Return once the process is inside the host (or already finished), so that "its pid lives in
	// the host's namespace" tells a running script from an interrupted one.
	hostNS := nsOf(pid)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		select {
		case <-done:
			return cmd, nil
		default:
		}
		if nsOf(cmd.Process.Pid) == hostNS {
			return cmd, nil
		}
	}
	return cmd, fmt.Errorf("nsenter into %s did not enter the host within 5s", in.ID)
}

func procRoot(pid int, path string) string {
	return filepath.Join("/proc", strconv.Itoa(pid), "root", path)
}

// startBootstrap stores the user-data at /var/lib/instagram/user-data inside the host and runs
// it once, as root, inside the host's namespace, detached (it survives instactl), output in
// /var/log/instagram/bootstrap.log.
func (p *Provider) startBootstrap(in *instanceRec, userData string) error {
	pid := p.sshdPID(in)
	if pid == 0 {
		return fmt.Errorf("bootstrap: instance %s is not running", in.ID)
	}
	if err := os.WriteFile(procRoot(pid, userDataPath), []byte(userData), 0o700); err != nil {
		return fmt.Errorf("bootstrap: store user-data: %w", err)
	}
	cmd, err := p.runInHost(in, bootstrapLog, "/bin/bash", "-c", bootstrapWrapper, "bootstrap", userDataPath, bootstrapDone, bootstrapFail)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	in.BootstrapStarted, in.BootstrapPID = true, cmd.Process.Pid
	return nil
}

// BootstrapStatus reports how the instance's user-data went: done once it wrote
// /var/lib/instagram/bootstrap.done; failed is the content of bootstrap.failed (or why the
// script cannot finish, e.g. the host was stopped while it ran); neither while it runs. An
// instance without user-data is done.
func (p *Provider) BootstrapStatus(ctx context.Context, instanceID string) (done bool, failed string, err error) {
	err = p.view(func(s *state) error {
		in, err := s.instance(instanceID)
		if err != nil {
			return err
		}
		if !in.HasUserData {
			done = true
			return nil
		}
		pid := p.sshdPID(in)
		if pid == 0 {
			return fmt.Errorf("bootstrap status: instance %s is not running", instanceID)
		}
		for attempt := 0; attempt < 2; attempt++ {
			if b, err := os.ReadFile(procRoot(pid, bootstrapFail)); err == nil {
				failed = strings.TrimSpace(string(b))
				if failed == "" {
					failed = "bootstrap failed"
				}
				return nil
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("bootstrap status: %w", err)
			}
			if _, err := os.Stat(procRoot(pid, bootstrapDone)); err == nil {
				done = true
				return nil
			}
			if in.BootstrapPID > 0 && nsOf(in.BootstrapPID) == nsOf(pid) {
				return nil // still running
			}
			// The script may have finished between the checks: look once more.
		}
		failed = fmt.Sprintf("user-data did not finish (the host was stopped or the script killed); see %s", bootstrapLog)
		return nil
	})
	return done, failed, err
}

// WaitBootstrap polls BootstrapStatus until the user-data is done (nil), failed (an error with
// the end of bootstrap.log), or ctx ends.
func (p *Provider) WaitBootstrap(ctx context.Context, instanceID string) error {
	for {
		done, failed, err := p.BootstrapStatus(ctx, instanceID)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if failed != "" {
			logTail := ""
			if path, err := p.HostPath(ctx, instanceID, bootstrapLog); err == nil {
				logTail = tail(path, 2000)
			}
			return fmt.Errorf("bootstrap of %s failed: %s\n%s", instanceID, failed, logTail)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for bootstrap of %s: %w", instanceID, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StartStopped brings back hosts recorded as running whose sshd is gone: after a reboot or a new
// machine session, or when their processes were killed. Hosts stopped by StopInstances stay
// stopped (a fenced primary must not come back by itself); StartInstances starts those. For each it kills whatever is left in the
// host's old namespace, starts a new sshd in a new namespace (same address, host key and private
// directories, so known_hosts stays valid), re-attaches the loop devices of its volumes (reusing
// a device that still maps the image) and recreates their /run/instactl/dev links, mounts what
// the host's FstabPath lists, then runs its RCLocalPath if any. User-data does not run again.
// It also restarts nginx if load balancers exist. It returns the ids of the hosts it restarted.
func (p *Provider) StartStopped(ctx context.Context) ([]string, error) {
	var restarted []string
	var errs []error
	err := p.update(func(s *state) error {
		for _, in := range s.Instances {
			if in.State != "running" || p.sshdPID(in) != 0 {
				continue
			}
			if err := p.restartHost(s, in); err != nil {
				errs = append(errs, fmt.Errorf("restart %s: %w", in.ID, err))
				continue
			}
			restarted = append(restarted, in.ID)
		}
		if len(s.LoadBalancers) > 0 && !p.nginxAlive(s) {
			if err := p.applyNginx(s); err != nil {
				errs = append(errs, err)
			}
		}
		return nil // save what was restarted even when something failed
	})
	if err != nil {
		return restarted, err
	}
	return restarted, errors.Join(errs...)
}

func (p *Provider) restartHost(s *state, in *instanceRec) error {
	if err := killHost(in.ID, 0); err != nil {
		return err
	}
	in.PID = 0
	if err := p.bootHost(s, in); err != nil {
		_ = killHost(in.ID, 0)
		in.PID = 0
		return err
	}
	for _, v := range s.Volumes {
		if v.InstanceID != in.ID {
			continue
		}
		if v.Loop == "" || loopBacking(v.Loop) != p.imagePath(v.ID) {
			loop, err := attachLoop(p.imagePath(v.ID))
			if err != nil {
				return fmt.Errorf("volume %s: %w", v.ID, err)
			}
			v.Loop = loop
		}
		if err := p.linkDevice(in, v); err != nil {
			return err
		}
	}
	pid := p.sshdPID(in)
	if _, err := os.Stat(procRoot(pid, FstabPath)); err == nil {
		if _, err := run("nsenter", "--target", strconv.Itoa(pid), "--mount", "--", "mount", "-a", "--fstab", FstabPath); err != nil {
			return fmt.Errorf("mount %s: %w", FstabPath, err)
		}
	}
	if _, err := os.Stat(procRoot(pid, RCLocalPath)); err == nil {
		if _, err := p.runInHost(in, "/var/log/instagram/rc.local.log", "/bin/bash", RCLocalPath); err != nil {
			return fmt.Errorf("rc.local: %w", err)
		}
	}
	return nil
}
