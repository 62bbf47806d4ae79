package provision

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/cloudtest"
)

// pendingFake is a provider whose instances stay "pending" inside CreateInstance until their
// volumes have been asked for: CreateInstance reports the new instance (cloud.Created), says
// it waits (cloud.Waiting), and holds until a CreateVolume for its host began or a deadline
// passed.
type pendingFake struct {
	*cloudtest.Fake
	mu       sync.Mutex
	cond     *sync.Cond
	volumes  map[string]bool // host "role/index" -> a CreateVolume began
	overlaps int             // instances that saw their volume begin while pending
}

func (f *pendingFake) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (cloud.Instance, error) {
	in, err := f.Fake.CreateInstance(ctx, spec)
	if err != nil {
		return in, err
	}
	cloud.Created(ctx, in)
	resume := cloud.Waiting(ctx)
	defer resume()
	host := spec.Role + "/" + strconv.Itoa(spec.Index)
	if spec.Role == "app" || spec.Role == "memcached" {
		return in, nil // no volumes
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	giveUp := time.Now().Add(10 * time.Second)
	time.AfterFunc(10*time.Second, func() { f.mu.Lock(); f.cond.Broadcast(); f.mu.Unlock() })
	for !f.volumes[host] && time.Now().Before(giveUp) {
		f.cond.Wait()
	}
	if f.volumes[host] {
		f.overlaps++
	}
	return in, nil
}

func (f *pendingFake) CreateVolume(ctx context.Context, spec cloud.VolumeSpec) (cloud.Volume, error) {
	f.mu.Lock()
	f.volumes[spec.Tags[cloud.TagRole]+"/"+spec.Tags[cloud.TagIndex]] = true
	f.cond.Broadcast()
	f.mu.Unlock()
	return f.Fake.CreateVolume(ctx, spec)
}

// TestApplyVolumesWhileInstancesPending: with one slot (parallelism 1), a pending instance gives
// its slot away while it waits, and its volumes are made meanwhile, for every host with volumes;
// the apply converges.
func TestApplyVolumesWhileInstancesPending(t *testing.T) {
	f := &pendingFake{Fake: cloudtest.NewFake(), volumes: map[string]bool{}}
	f.cond = sync.NewCond(&f.mu)
	converge(t, f, mustDesired(t, testStack(2)), WithParallelism(1))
	if f.overlaps != 4 { // pg 2 + redis 2 hosts have volumes
		t.Errorf("%d of 4 hosts with volumes had them made while the instance was pending, want all", f.overlaps)
	}
}
