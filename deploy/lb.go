package deploy

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// usesLB reports whether the run has load balancer steps.
func (r *run) usesLB() bool { return r.d.LB != nil && r.cfg.LoadBalancer != "" }

// instanceIDs maps host names to their instance ids (hosts without one are skipped).
func (r *run) instanceIDs(names []string) []string {
	var ids []string
	for _, n := range names {
		if id := r.hosts[n].InstanceID; id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// deregister takes the batch out of the LB and waits until the LB reports the hosts out, or
// DrainTimeout. If that fails nothing has changed on the hosts, so the run stops here.
func (r *run) deregister(ctx context.Context, b Batch, names []string) error {
	ids := r.instanceIDs(names)
	if !r.usesLB() || len(ids) == 0 {
		return nil
	}
	r.ev.emit(Event{Batch: b.Index, Stage: StageDeregister, Status: StatusStart, Message: fmt.Sprintf("%d hosts", len(ids))})
	if err := r.d.LB.DeregisterInstances(ctx, r.cfg.LoadBalancer, ids); err != nil {
		err = fmt.Errorf("deregister batch %d from load balancer %s: %w", b.Index, r.cfg.LoadBalancer, err)
		r.ev.emit(Event{Batch: b.Index, Stage: StageDeregister, Status: StatusFail, Err: err})
		return err
	}
	start := time.Now()
	r.ev.emit(Event{Batch: b.Index, Stage: StageDrain, Status: StatusStart})
	err := r.waitDrained(ctx, ids)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	msg := fmt.Sprintf("out after %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		msg = fmt.Sprintf("drain timeout %v reached (%v)", r.cfg.DrainTimeout, err)
	}
	r.ev.emit(Event{Batch: b.Index, Stage: StageDrain, Status: StatusOK, Message: msg})
	return nil
}

// waitDrained polls the LB until none of ids is in service, at most DrainTimeout.
func (r *run) waitDrained(ctx context.Context, ids []string) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DrainTimeout)
	defer cancel()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for {
		hs, err := r.d.LB.InstanceHealth(ctx, r.cfg.LoadBalancer)
		in := 0
		for _, h := range hs {
			if want[h.InstanceID] && h.State != "OutOfService" {
				in++
			}
		}
		if err == nil && in == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("%d hosts still reported in service", in)
			}
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// register puts the batch's healthy hosts back: those activated or rolled back, and those
// that failed before anything was switched on them but still answer their health check
// (an unreachable SSH daemon does not mean the app is down).
func (r *run) register(ctx context.Context, b Batch, names []string) error {
	if !r.usesLB() {
		return nil
	}
	var back []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		r.mu.Lock()
		hr := *r.byName[n]
		r.mu.Unlock()
		switch {
		case hr.State == OutcomeActivated || hr.State == OutcomeRolledBack:
			back = append(back, n)
		case !hr.Flipped:
			wg.Go(func() {
				if r.healthGate(ctx, r.hosts[n], "") == nil {
					mu.Lock()
					back = append(back, n)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	ids := r.instanceIDs(back)
	if len(ids) == 0 {
		return nil
	}
	r.ev.emit(Event{Batch: b.Index, Stage: StageRegister, Status: StatusStart, Message: fmt.Sprintf("%d hosts", len(ids))})
	if err := r.d.LB.RegisterInstances(ctx, r.cfg.LoadBalancer, ids); err != nil {
		err = fmt.Errorf("register batch %d with load balancer %s: %w", b.Index, r.cfg.LoadBalancer, err)
		r.ev.emit(Event{Batch: b.Index, Stage: StageRegister, Status: StatusFail, Err: err})
		return err
	}
	r.ev.emit(Event{Batch: b.Index, Stage: StageRegister, Status: StatusOK})
	return nil
}
