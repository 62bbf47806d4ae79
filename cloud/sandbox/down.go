package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Down removes the whole sandbox: it terminates every host (killing every process in their
// namespaces), detaches and deletes every volume, deletes every snapshot, stops nginx, removes
// the mount points it created on the machine, and removes Dir. Afterwards nothing of it runs and
// no loop device maps one of its images. It ignores stacks: everything in Dir goes. A mount point
// some other mount namespace still uses (another sandbox's host) is left in place, because
// removing it would unmount it there.
func (p *Provider) Down(ctx context.Context) error {
	var errs []error
	err := p.update(func(s *state) error {
		for _, in := range s.Instances {
			if in.State == "terminated" {
				continue
			}
			if _, err := p.terminate(s, in); err != nil {
				errs = append(errs, fmt.Errorf("terminate %s: %w", in.ID, err))
			}
		}
		s.LoadBalancers = nil
		if err := p.stopNginx(s); err != nil {
			errs = append(errs, err)
		}
		for _, v := range s.Volumes {
			if err := p.releaseLoop(v); err != nil {
				errs = append(errs, fmt.Errorf("volume %s: %w", v.ID, err))
			}
		}
		for i := len(s.CreatedDirs) - 1; i >= 0; i-- {
			d := s.CreatedDirs[i]
			if users := mountNamespacesUsing(d); users > 0 {
				continue
			}
			// A directory something else put files in (or a still-used child) is not ours to empty.
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
				errs = append(errs, fmt.Errorf("remove mount point %s: %w", d, err))
			}
		}
		s.CreatedDirs = nil
		return nil
	})
	if err != nil {
		return fmt.Errorf("sandbox down: %w", err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("sandbox down (left %s in place): %w", p.cfg.Dir, errors.Join(errs...))
	}
	if mp := mountUnder(p.cfg.Dir); mp != "" {
		return fmt.Errorf("sandbox down: %s is mounted inside %s; unmount it, then remove the directory", mp, p.cfg.Dir)
	}
	if err := os.RemoveAll(p.cfg.Dir); err != nil {
		return fmt.Errorf("sandbox down: remove %s: %w", p.cfg.Dir, err)
	}
	return nil
}

// mountNamespacesUsing counts the mount namespaces on the machine where dir is a mount point.
func mountNamespacesUsing(dir string) int {
	seen := map[string]bool{}
	n := 0
	for _, pid := range pids() {
		ns := nsOf(pid)
		if ns == "" || seen[ns] {
			continue
		}
		seen[ns] = true
		if mountpointIn(pid, func(mp string) bool { return mp == dir }) != "" {
			n++
		}
	}
	return n
}

// mountUnder returns a mount point of this process's namespace at or below dir, if any: removing
// dir recursively would then reach into that file system.
func mountUnder(dir string) string {
	return mountpointIn(os.Getpid(), func(mp string) bool { return mp == dir || strings.HasPrefix(mp, dir+"/") })
}

func mountpointIn(pid int, match func(string) bool) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && match(fields[4]) {
			return fields[4]
		}
	}
	return ""
}
