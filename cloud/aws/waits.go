package aws

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The provider's waits for instance and volume states. They go through the pollers (poll.go)
// rather than the SDK's waiters: the SDK's waiters poll each caller on its own jittered
// schedule, so thirty instances waiting to run cost thirty describes per round; here they cost
// one. Each wait has a deadline (WaitTimeout), and its error says what it waited for and the
// last state it saw.

// errWrongState ends a wait whose resource reached a state it cannot leave for the one waited
// for (an instance terminated while pending, a volume in error).
var errWrongState = errors.New("reached a state it will not leave")

// waitState polls ids (instances or volumes, through pl) until state says each is there. state
// gets one id's answer and returns "" when it is in the wanted state, else what it is now; an
// error from it ends the wait. An id not found is "not visible yet" within the consistency
// window, then gone (or, with goneOK, there: a deleted volume, a terminated instance aged out).
func waitState[T any](ctx context.Context, p *Provider, pl *poller[T], what string, ids []string, goneOK bool,
	state func(id string, item T) (string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.WaitTimeout)
	defer cancel()
	deadline := time.Now().Add(p.consistencyWindow())
	last := map[string]string{}
	err := pl.wait(ctx, ids, func(res map[string]idResult[T]) (bool, error) {
		done := true
		for _, id := range ids {
			r := res[id]
			switch {
			case r.err != nil && notFound(r.err), r.err == nil && !r.found:
				if goneOK {
					last[id] = ""
					continue
				}
				if time.Now().After(deadline) {
					return false, fmt.Errorf("%s: not found for %s: %w", id, p.consistencyWindow(), errNotVisible(r.err))
				}
				last[id], done = "not visible yet", false
			case r.err != nil:
				return false, r.err
			default:
				now, err := state(id, r.item)
				if err != nil {
					return false, err
				}
				if last[id] = now; now != "" {
					done = false
				}
			}
		}
		return done, nil
	})
	if err != nil {
		var still []string
		for _, id := range ids {
			if last[id] != "" {
				still = append(still, id+" "+last[id])
			}
		}
		if len(still) > 0 {
			return wrap(err, "wait for %s (at most %s; still: %s)", what, p.opts.WaitTimeout, strings.Join(still, ", "))
		}
		return wrap(err, "wait for %s (at most %s)", what, p.opts.WaitTimeout)
	}
	return nil
}

func errNotVisible(err error) error {
	if err != nil {
		return err
	}
	return errors.New("describe does not list it")
}

// waitInstanceState waits until every instance in ids is in want (running, stopped, terminated).
// Running fails on shutting-down, terminated and stopping; stopped fails on pending and
// terminated, as the SDK's waiters do. Terminated takes a missing instance as terminated.
func (p *Provider) waitInstanceState(ctx context.Context, ids []string, want ec2types.InstanceStateName) (map[string]ec2types.Instance, error) {
	got := map[string]ec2types.Instance{}
	var fail []ec2types.InstanceStateName
	switch want {
	case ec2types.InstanceStateNameRunning:
		fail = []ec2types.InstanceStateName{ec2types.InstanceStateNameShuttingDown, ec2types.InstanceStateNameTerminated, ec2types.InstanceStateNameStopping}
	case ec2types.InstanceStateNameStopped:
		fail = []ec2types.InstanceStateName{ec2types.InstanceStateNamePending, ec2types.InstanceStateNameTerminated}
	}
	what := fmt.Sprintf("%s to be %s", strings.Join(ids, ", "), want)
	if len(ids) == 1 {
		what = fmt.Sprintf("instance %s to be %s", ids[0], want)
	}
	err := waitState(ctx, p, p.instWait, what, ids, want == ec2types.InstanceStateNameTerminated,
		func(id string, i ec2types.Instance) (string, error) {
			got[id] = i
			st := instanceState(i)
			for _, f := range fail {
				if st == f {
					return string(st), fmt.Errorf("instance %s is %s: %w", id, st, errWrongState)
				}
			}
			if st == want {
				return "", nil
			}
			return string(st), nil
		})
	return got, err
}

// waitVolume waits until volume id is available (created, or detached).
func (p *Provider) waitVolumeAvailable(ctx context.Context, id, what string) (ec2types.Volume, error) {
	var got ec2types.Volume
	err := waitState(ctx, p, p.volWait, what, []string{id}, false, func(_ string, v ec2types.Volume) (string, error) {
		got = v
		switch v.State {
		case ec2types.VolumeStateAvailable:
			return "", nil
		case ec2types.VolumeStateError, ec2types.VolumeStateDeleted, ec2types.VolumeStateDeleting:
			return string(v.State), fmt.Errorf("volume %s is %s: %w", id, v.State, errWrongState)
		}
		return string(v.State), nil
	})
	return got, err
}

// waitVolumeDeleted waits until volume id is gone (deleted or no longer listed).
func (p *Provider) waitVolumeDeleted(ctx context.Context, id string) error {
	return waitState(ctx, p, p.volWait, "volume "+id+" to be deleted", []string{id}, true, func(_ string, v ec2types.Volume) (string, error) {
		if v.State == ec2types.VolumeStateDeleted {
			return "", nil
		}
		return string(v.State), nil
	})
}

// waitAttached waits until the volume's attachment to instanceID is "attached": the volume's own
// state is in-use while it is still attaching.
func (p *Provider) waitAttached(ctx context.Context, volumeID, instanceID string) error {
	return waitState(ctx, p, p.volWait, fmt.Sprintf("%s to be attached to %s", volumeID, instanceID), []string{volumeID}, false,
		func(_ string, v ec2types.Volume) (string, error) {
			for _, a := range v.Attachments {
				if aws.ToString(a.InstanceId) == instanceID {
					if a.State == ec2types.VolumeAttachmentStateAttached {
						return "", nil
					}
					return string(a.State), nil
				}
			}
			return "not attached", nil
		})
}
