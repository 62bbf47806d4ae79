package sandbox

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// StopInstances stops hosts as an EC2 stop does: every process of the host's mount namespace
// dies, and with the namespace its mounts go. With force they die at once (SIGKILL, like a power
// cut: postgres gets no chance to checkpoint); without force they get SIGTERM first and SIGKILL
// after a grace period. Frozen file systems are thawed first, as for TerminateInstances. What
// an EC2 instance keeps, the host keeps: its record (state "stopped"), address, host key and
// known_hosts line, private directories, its volumes (in-use, with their loop devices and
// images) and its load balancer registrations (it fails its health checks). StartStopped leaves
// a stopped host alone; StartInstances brings it back. Stopping a stopped host succeeds (and
// kills anything left in its namespace); a terminated one is refused.
func (p *Provider) StopInstances(ctx context.Context, ids []string, force bool) error {
	return p.updateAlways(func(s *state) error {
		recs, err := liveInstances(s, "stop", ids)
		if err != nil {
			return err
		}
		var errs []error
		for _, in := range recs {
			if err := ctx.Err(); err != nil {
				errs = append(errs, fmt.Errorf("stop %s: %w", in.ID, err))
				break
			}
			p.thawVolumes(s, in)
			if force {
				err = powerOff(in.ID)
			} else {
				err = killHost(in.ID, p.sshdPID(in))
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("stop %s: %w", in.ID, err))
				continue
			}
			in.State, in.PID = "stopped", 0
		}
		return errors.Join(errs...)
	})
}

// StartInstances boots stopped hosts as StartStopped boots hosts after a reboot (a new
// namespace and sshd with the same address and host key, the volumes' loop devices and device
// links, the mounts of FstabPath, then RCLocalPath, which starts the host's services) and records
// them "running". It returns once each host's sshd accepts connections. A running host is left
// as it is; a host recorded running whose sshd is gone (Describe says "stopped") is booted too.
// A host that fails to boot is killed again and keeps its state.
func (p *Provider) StartInstances(ctx context.Context, ids []string) error {
	return p.updateAlways(func(s *state) error {
		recs, err := liveInstances(s, "start", ids)
		if err != nil {
			return err
		}
		var errs []error
		for _, in := range recs {
			if in.State == "running" && p.sshdPID(in) != 0 {
				continue
			}
			if err := ctx.Err(); err != nil {
				errs = append(errs, fmt.Errorf("start %s: %w", in.ID, err))
				break
			}
			if err := p.restartHost(s, in); err != nil {
				_ = killHost(in.ID, 0)
				in.PID = 0
				errs = append(errs, fmt.Errorf("start %s: %w", in.ID, err))
				continue
			}
			in.State = "running"
		}
		return errors.Join(errs...)
	})
}

// liveInstances looks ids up for op, refusing (before anything changes) a missing instance
// (cloud.ErrNotFound), one no stack owns, and a terminated one.
func liveInstances(s *state, op string, ids []string) ([]*instanceRec, error) {
	var recs []*instanceRec
	for _, id := range ids {
		in, err := s.instance(id)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		if _, err := stackOf("instance", id, in.Tags); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		if in.State == "terminated" {
			return nil, fmt.Errorf("%s: instance %s is terminated", op, id)
		}
		recs = append(recs, in)
	}
	return recs, nil
}

// powerOff ends every process of host id at once, like a power cut. Each process is stopped
// (SIGSTOP) as soon as a scan sees it, so that none can react to the death of another (a
// postmaster whose child died would start a shutdown of its own), until a scan finds nothing new
// twice in a row (a fork under way during one scan shows in the next); then all get SIGKILL.
func powerOff(id string) error {
	deadline := time.Now().Add(15 * time.Second)
	seen := map[int]bool{}
	for quiet := 0; quiet < 2 && time.Now().Before(deadline); {
		quiet++
		for _, pid := range hostProcs(id) {
			if !seen[pid] {
				_ = syscall.Kill(pid, syscall.SIGSTOP)
				seen[pid] = true
				quiet = 0
			}
		}
	}
	for {
		procs := hostProcs(id)
		if len(procs) == 0 {
			// Look twice: a process forked during the scan shows up in the next one.
			time.Sleep(20 * time.Millisecond)
			if procs = hostProcs(id); len(procs) == 0 {
				return nil
			}
		}
		for _, pid := range procs {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("host %s: processes %v still alive after SIGKILL", id, procs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
