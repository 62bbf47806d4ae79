package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/instactl/instactl/cloud"
)

func isNotFound(err error) bool { return errors.Is(err, cloud.ErrNotFound) || notFound(err) }

func toSnapshot(s ec2types.Snapshot) cloud.Snapshot {
	return cloud.Snapshot{ID: aws.ToString(s.SnapshotId), VolumeID: aws.ToString(s.VolumeId),
		SizeGiB: int(aws.ToInt32(s.VolumeSize)), State: string(s.State), StartTime: aws.ToTime(s.StartTime),
		Tags: fromEC2Tags(s.Tags)}
}

// CreateSnapshots implements cloud.Provider with one CreateSnapshots call (a crash-consistent
// set across the instance's volumes), tags in the call and no tags copied from the volumes.
// moto ignores ExcludeDataVolumeIds; snapshots of volumes outside the set are deleted again so
// the set is exactly what was asked for, on AWS and moto alike.
func (p *Provider) CreateSnapshots(ctx context.Context, instanceID string, volumeIDs []string, tags map[string]string) ([]cloud.Snapshot, error) {
	m, err := p.instancesByID(ctx, []string{instanceID})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	in := m[instanceID]
	stack := fromEC2Tags(in.Tags)[cloud.TagStack]
	if stack == "" {
		return nil, refuse("instance %s is not tagged %s: instactl does not own it", instanceID, cloud.TagStack)
	}
	tags = maps.Clone(tags)
	if tags == nil {
		tags = map[string]string{}
	}
	if s, ok := tags[cloud.TagStack]; ok && s != stack {
		return nil, refuse("snapshot tags name stack %q, instance %s is in %q", s, instanceID, stack)
	}
	tags[cloud.TagStack] = stack
	root := aws.ToString(in.RootDeviceName)
	attached := map[string]bool{}
	var exclude []string
	includeRoot := false
	for _, bdm := range in.BlockDeviceMappings {
		if bdm.Ebs == nil {
			continue
		}
		id := aws.ToString(bdm.Ebs.VolumeId)
		attached[id] = true
		isRoot := aws.ToString(bdm.DeviceName) == root
		if slices.Contains(volumeIDs, id) {
			includeRoot = includeRoot || isRoot
		} else if !isRoot {
			exclude = append(exclude, id)
		}
	}
	for _, id := range volumeIDs {
		if !attached[id] {
			return nil, refuse("volume %s is not attached to %s: a snapshot set covers one instance's volumes", id, instanceID)
		}
	}
	out, err := p.ec2.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
		InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: aws.String(instanceID),
			ExcludeBootVolume: aws.Bool(!includeRoot), ExcludeDataVolumeIds: exclude},
		TagSpecifications: tagSpec(ec2types.ResourceTypeSnapshot, tags),
		Description:       aws.String("instactl " + stack + " " + tags[cloud.TagSet]),
	})
	if err != nil {
		return nil, wrap(err, "create snapshots of %s", instanceID)
	}
	var snaps []cloud.Snapshot
	var extra []error
	for _, s := range out.Snapshots {
		vid := aws.ToString(s.VolumeId)
		if !slices.Contains(volumeIDs, vid) {
			if _, err := p.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: s.SnapshotId}); err != nil {
				extra = append(extra, wrap(err, "delete snapshot %s of %s, outside the set", aws.ToString(s.SnapshotId), vid))
			}
			continue
		}
		snaps = append(snaps, cloud.Snapshot{ID: aws.ToString(s.SnapshotId), VolumeID: vid,
			SizeGiB: int(aws.ToInt32(s.VolumeSize)), State: string(s.State), StartTime: aws.ToTime(s.StartTime), Tags: maps.Clone(tags)})
	}
	if err := errors.Join(extra...); err != nil {
		return snaps, err
	}
	if len(snaps) != len(volumeIDs) {
		return snaps, fmt.Errorf("create snapshots of %s: got %d snapshots for %d volumes", instanceID, len(snaps), len(volumeIDs))
	}
	slices.SortFunc(snaps, func(a, b cloud.Snapshot) int {
		return slices.Index(volumeIDs, a.VolumeID) - slices.Index(volumeIDs, b.VolumeID)
	})
	return snaps, nil
}

// DescribeSnapshots implements cloud.Provider: the account's own snapshots tagged with stack.
func (p *Provider) DescribeSnapshots(ctx context.Context, stack string) ([]cloud.Snapshot, error) {
	var out []cloud.Snapshot
	pg := ec2.NewDescribeSnapshotsPaginator(p.ec2, &ec2.DescribeSnapshotsInput{
		OwnerIds: []string{"self"}, Filters: []ec2types.Filter{stackFilter(stack)}})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "describe snapshots of %s", stack)
		}
		for _, s := range page.Snapshots {
			out = append(out, toSnapshot(s))
		}
	}
	slices.SortFunc(out, func(a, b cloud.Snapshot) int { return cmpStr(a.ID, b.ID) })
	return out, nil
}

// DeleteSnapshot implements cloud.Provider; it refuses snapshots no stack owns.
func (p *Provider) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	out, err := p.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{snapshotID}})
	if notFound(err) || (err == nil && len(out.Snapshots) == 0) {
		return nil
	}
	if err != nil {
		return wrap(err, "describe snapshot %s", snapshotID)
	}
	if fromEC2Tags(out.Snapshots[0].Tags)[cloud.TagStack] == "" {
		return refuse("snapshot %s is not tagged %s: instactl does not own it", snapshotID, cloud.TagStack)
	}
	if _, err := p.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(snapshotID)}); err != nil && !notFound(err) {
		return wrap(err, "delete snapshot %s", snapshotID)
	}
	return nil
}

// tagBatch bounds the resources of one CreateTags or DescribeSnapshots call (AWS allows 1,000
// resource ids to CreateTags and recommends smaller batches).
const tagBatch = 200

// TagSnapshots implements cloud.Provider: it checks every snapshot exists and belongs to a
// stack, then tags them with CreateTags, in batches.
func (p *Provider) TagSnapshots(ctx context.Context, snapshotIDs []string, tags map[string]string) error {
	if len(snapshotIDs) == 0 || len(tags) == 0 {
		return nil
	}
	for ids := range slices.Chunk(snapshotIDs, tagBatch) {
		out, err := p.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
		if err != nil {
			return wrap(err, "tag snapshots: describe %s", ids[0])
		}
		found := map[string]ec2types.Snapshot{}
		for _, s := range out.Snapshots {
			found[aws.ToString(s.SnapshotId)] = s
		}
		for _, id := range ids {
			s, ok := found[id]
			if !ok {
				return fmt.Errorf("tag snapshots: snapshot %s: %w", id, cloud.ErrNotFound)
			}
			stack := fromEC2Tags(s.Tags)[cloud.TagStack]
			if stack == "" {
				return refuse("snapshot %s is not tagged %s: instactl does not own it", id, cloud.TagStack)
			}
			if v, ok := tags[cloud.TagStack]; ok && v != stack {
				return refuse("snapshot %s belongs to stack %q; tags may not move it to %q", id, stack, v)
			}
		}
	}
	for ids := range slices.Chunk(snapshotIDs, tagBatch) {
		if _, err := p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: ids, Tags: ec2Tags(tags)}); err != nil {
			return wrap(err, "tag snapshots %s", ids[0])
		}
	}
	return nil
}
