package aws

import (
	"context"
	"slices"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// maxBatch bounds the ids of one coalesced describe call.
const maxBatch = 100

// idResult is one id's answer in a coalesced describe: the item, or the error AWS gave for it.
type idResult[T any] struct {
	item  T
	found bool
	err   error
}

// batcher coalesces concurrent describes by id into one call ("group commit"): the first caller
// sends its ids at once; callers arriving while that call is in flight queue their ids, which go
// out together as soon as it returns. An idle provider adds no latency; thirty instances waiting
// to run cost one DescribeInstances per round instead of thirty.
type batcher[T any] struct {
	describe func(ctx context.Context, ids []string) (map[string]T, error)

	mu       sync.Mutex
	inflight bool
	next     *batch[T]
}

type batch[T any] struct {
	ids  []string
	done chan struct{}
	res  map[string]idResult[T]
}

// get describes ids; every id gets its own result, so one unknown id fails only its callers.
func (b *batcher[T]) get(ctx context.Context, ids []string) (map[string]idResult[T], error) {
	b.mu.Lock()
	if b.next == nil {
		b.next = &batch[T]{done: make(chan struct{})}
	}
	bt := b.next
	for _, id := range ids {
		if !slices.Contains(bt.ids, id) {
			bt.ids = append(bt.ids, id)
		}
	}
	if !b.inflight {
		b.inflight = true
		b.next = nil
		b.mu.Unlock()
		// The call serves other callers too: it must not end with this caller's context.
		go b.fire(context.WithoutCancel(ctx), bt)
	} else {
		b.mu.Unlock()
	}
	select {
	case <-bt.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	out := make(map[string]idResult[T], len(ids))
	for _, id := range ids {
		out[id] = bt.res[id]
	}
	return out, nil
}

// fire runs bt, then every batch queued meanwhile, until none is left.
func (b *batcher[T]) fire(ctx context.Context, bt *batch[T]) {
	for bt != nil {
		bt.res = b.run(ctx, bt.ids)
		close(bt.done)
		b.mu.Lock()
		bt, b.next = b.next, nil
		if bt == nil {
			b.inflight = false
		}
		b.mu.Unlock()
	}
}

// run describes ids in chunks; a chunk that fails (EC2 fails a whole call for one unknown id) is
// retried id by id so that each id gets its own answer.
func (b *batcher[T]) run(ctx context.Context, ids []string) map[string]idResult[T] {
	res := make(map[string]idResult[T], len(ids))
	var mu sync.Mutex
	var wg sync.WaitGroup
	one := func(chunk []string) {
		m, err := b.describe(ctx, chunk)
		if err != nil && len(chunk) > 1 {
			for _, id := range chunk {
				wg.Go(func() {
					m, err := b.describe(ctx, []string{id})
					mu.Lock()
					v, ok := m[id]
					res[id] = idResult[T]{item: v, found: ok, err: err}
					mu.Unlock()
				})
			}
			return
		}
		mu.Lock()
		for _, id := range chunk {
			v, ok := m[id]
			res[id] = idResult[T]{item: v, found: ok, err: err}
		}
		mu.Unlock()
	}
	for chunk := range slices.Chunk(ids, maxBatch) {
		wg.Go(func() { one(chunk) })
	}
	wg.Wait()
	return res
}

// describeClient answers the provider's and the SDK waiters' describes of instances and volumes
// by id through the batchers; any other describe (filters, paging) goes to EC2 as is.
type describeClient struct {
	ec2       *ec2.Client
	instances *batcher[ec2types.Instance]
	volumes   *batcher[ec2types.Volume]
}

func newDescribeClient(c *ec2.Client) *describeClient {
	d := &describeClient{ec2: c}
	d.instances = &batcher[ec2types.Instance]{describe: func(ctx context.Context, ids []string) (map[string]ec2types.Instance, error) {
		out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids})
		if err != nil {
			return nil, err
		}
		m := map[string]ec2types.Instance{}
		for _, r := range out.Reservations {
			for _, i := range r.Instances {
				m[aws.ToString(i.InstanceId)] = i
			}
		}
		return m, nil
	}}
	d.volumes = &batcher[ec2types.Volume]{describe: func(ctx context.Context, ids []string) (map[string]ec2types.Volume, error) {
		out, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: ids})
		if err != nil {
			return nil, err
		}
		m := map[string]ec2types.Volume{}
		for _, v := range out.Volumes {
			m[aws.ToString(v.VolumeId)] = v
		}
		return m, nil
	}}
	return d
}

// DescribeInstances implements ec2.DescribeInstancesAPIClient. On the batched path opts (the
// waiters' user agent) are dropped: one call serves many callers.
func (d *describeClient) DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	if len(in.InstanceIds) == 0 || len(in.Filters) > 0 || in.NextToken != nil || in.MaxResults != nil || in.DryRun != nil {
		return d.ec2.DescribeInstances(ctx, in, opts...)
	}
	res, err := d.instances.get(ctx, in.InstanceIds)
	if err != nil {
		return nil, err
	}
	out := &ec2.DescribeInstancesOutput{}
	for _, id := range in.InstanceIds {
		r := res[id]
		if r.err != nil {
			return nil, r.err
		}
		if r.found {
			out.Reservations = append(out.Reservations, ec2types.Reservation{Instances: []ec2types.Instance{r.item}})
		}
	}
	return out, nil
}

// DescribeVolumes implements ec2.DescribeVolumesAPIClient.
func (d *describeClient) DescribeVolumes(ctx context.Context, in *ec2.DescribeVolumesInput, opts ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error) {
	if len(in.VolumeIds) == 0 || len(in.Filters) > 0 || in.NextToken != nil || in.MaxResults != nil || in.DryRun != nil {
		return d.ec2.DescribeVolumes(ctx, in, opts...)
	}
	res, err := d.volumes.get(ctx, in.VolumeIds)
	if err != nil {
		return nil, err
	}
	out := &ec2.DescribeVolumesOutput{}
	for _, id := range in.VolumeIds {
		r := res[id]
		if r.err != nil {
			return nil, r.err
		}
		if r.found {
			out.Volumes = append(out.Volumes, r.item)
		}
	}
	return out, nil
}
