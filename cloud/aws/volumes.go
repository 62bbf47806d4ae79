package aws

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/instactl/instactl/cloud"
)

func toVolume(v ec2types.Volume) cloud.Volume {
	out := cloud.Volume{
		ID: aws.ToString(v.VolumeId), Zone: aws.ToString(v.AvailabilityZone), SizeGiB: int(aws.ToInt32(v.Size)),
		Type: string(v.VolumeType), State: string(v.State), SnapshotID: aws.ToString(v.SnapshotId),
		Tags: fromEC2Tags(v.Tags),
	}
	for _, a := range v.Attachments {
		if a.State == ec2types.VolumeAttachmentStateAttached || a.State == ec2types.VolumeAttachmentStateAttaching {
			out.InstanceID, out.Device = aws.ToString(a.InstanceId), aws.ToString(a.Device)
		}
	}
	return out
}

func (p *Provider) describeVolumes(ctx context.Context, filters ...ec2types.Filter) ([]cloud.Volume, error) {
	var out []cloud.Volume
	pg := ec2.NewDescribeVolumesPaginator(p.ec2, &ec2.DescribeVolumesInput{Filters: filters})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "describe volumes")
		}
		for _, v := range page.Volumes {
			out = append(out, toVolume(v))
		}
	}
	slices.SortFunc(out, func(a, b cloud.Volume) int { return cmpStr(a.ID, b.ID) })
	return out, nil
}

func (p *Provider) volume(ctx context.Context, id string) (cloud.Volume, error) {
	out, err := p.desc.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	if err != nil {
		return cloud.Volume{}, wrap(err, "describe volume %s", id)
	}
	if len(out.Volumes) == 0 {
		return cloud.Volume{}, fmt.Errorf("volume %s: %w", id, cloud.ErrNotFound)
	}
	return toVolume(out.Volumes[0]), nil
}

// CreateVolume implements cloud.Provider and waits until the volume is available.
func (p *Provider) CreateVolume(ctx context.Context, spec cloud.VolumeSpec) (cloud.Volume, error) {
	if spec.Tags[cloud.TagStack] == "" {
		return cloud.Volume{}, refuse("volume has no %s tag", cloud.TagStack)
	}
	in := &ec2.CreateVolumeInput{
		AvailabilityZone:  aws.String(spec.Zone),
		TagSpecifications: tagSpec(ec2types.ResourceTypeVolume, spec.Tags),
	}
	if spec.SizeGiB > 0 {
		in.Size = aws.Int32(int32(spec.SizeGiB))
	}
	if spec.Type != "" {
		in.VolumeType = ec2types.VolumeType(spec.Type)
	}
	if spec.SnapshotID != "" {
		in.SnapshotId = aws.String(spec.SnapshotID)
	}
	if spec.ClientToken != "" {
		in.ClientToken = aws.String(spec.ClientToken)
	}
	out, err := p.ec2.CreateVolume(ctx, in)
	if err != nil {
		return cloud.Volume{}, wrap(err, "create volume in %s", spec.Zone)
	}
	id := aws.ToString(out.VolumeId)
	v, err := p.waitVolumeAvailable(ctx, id, "new volume "+id+" to be available")
	if err != nil {
		return cloud.Volume{}, err
	}
	return toVolume(v), nil
}

// sameDevice compares device names the way EC2 treats them: /dev/sdf, sdf and xvdf are one slot.
func sameDevice(a, b string) bool { return deviceSlot(a) == deviceSlot(b) }

func deviceSlot(d string) string {
	d = strings.TrimPrefix(d, "/dev/")
	for _, p := range []string{"xvd", "sd"} {
		if strings.HasPrefix(d, p) {
			return strings.TrimRight(d[len(p):], "0123456789")
		}
	}
	return d
}

// AttachVolume implements cloud.Provider. EC2 refuses a volume in another zone, already attached,
// or a device in use; moto accepts all three, so instactl checks them first.
func (p *Provider) AttachVolume(ctx context.Context, volumeID, instanceID, device string) error {
	var v cloud.Volume
	var m map[string]ec2types.Instance
	// Both are usually minutes old at most: not visible yet is not gone.
	err := p.untilFound(ctx, func() (err error) {
		if v, err = p.volume(ctx, volumeID); err != nil {
			return err
		}
		m, err = p.instancesByID(ctx, []string{instanceID})
		return err
	}, "InvalidVolume.NotFound", "InvalidInstanceID.NotFound")
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", volumeID, instanceID, err)
	}
	in := toInstance(m[instanceID])
	switch {
	case v.InstanceID == instanceID && sameDevice(v.Device, device):
		return nil
	case in.State == "terminated" || in.State == "shutting-down":
		return fmt.Errorf("attach %s: instance %s is %s: %w", volumeID, instanceID, in.State, cloud.ErrNotFound)
	case v.Tags[cloud.TagStack] == "" || v.Tags[cloud.TagStack] != in.Tags[cloud.TagStack]:
		return refuse("volume %s (stack %q) and instance %s (stack %q) are not in the same stack",
			volumeID, v.Tags[cloud.TagStack], instanceID, in.Tags[cloud.TagStack])
	case v.InstanceID != "":
		return refuse("volume %s is already attached to %s at %s; detach it first", volumeID, v.InstanceID, v.Device)
	case v.Zone != in.Zone:
		return refuse("volume %s is in %s and instance %s in %s: EBS volumes attach only within their zone (snapshot and restore it into %s)",
			volumeID, v.Zone, instanceID, in.Zone, in.Zone)
	}
	for _, bdm := range m[instanceID].BlockDeviceMappings {
		if sameDevice(aws.ToString(bdm.DeviceName), device) {
			other := ""
			if bdm.Ebs != nil {
				other = aws.ToString(bdm.Ebs.VolumeId)
			}
			return refuse("device %s on %s is in use by %s", device, instanceID, other)
		}
	}
	err = p.untilFound(ctx, func() error {
		_, err := p.ec2.AttachVolume(ctx, &ec2.AttachVolumeInput{
			VolumeId: aws.String(volumeID), InstanceId: aws.String(instanceID), Device: aws.String(device),
		})
		return err
	}, "InvalidVolume.NotFound", "InvalidInstanceID.NotFound")
	if err != nil {
		return wrap(err, "attach %s to %s at %s", volumeID, instanceID, device)
	}
	return p.waitAttached(ctx, volumeID, instanceID)
}

// DetachVolume implements cloud.Provider. It always names the instance and device (moto fails
// with only the volume id) and refuses a detach that does not match the current attachment.
func (p *Provider) DetachVolume(ctx context.Context, volumeID, instanceID, device string) error {
	v, err := p.volume(ctx, volumeID)
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if v.InstanceID == "" {
		return nil
	}
	if v.Tags[cloud.TagStack] == "" {
		return refuse("volume %s is not tagged %s: instactl does not own it", volumeID, cloud.TagStack)
	}
	if v.InstanceID != instanceID || !sameDevice(v.Device, device) {
		return refuse("volume %s is attached to %s at %s, not to %s at %s", volumeID, v.InstanceID, v.Device, instanceID, device)
	}
	if _, err := p.ec2.DetachVolume(ctx, &ec2.DetachVolumeInput{
		VolumeId: aws.String(volumeID), InstanceId: aws.String(instanceID), Device: aws.String(v.Device),
	}); err != nil {
		return wrap(err, "detach %s from %s", volumeID, instanceID)
	}
	_, err = p.waitVolumeAvailable(ctx, volumeID, volumeID+" to be detached")
	return err
}

// DeleteVolume implements cloud.Provider; a missing volume is already deleted.
func (p *Provider) DeleteVolume(ctx context.Context, volumeID string) error {
	v, err := p.volume(ctx, volumeID)
	if errors.Is(err, cloud.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete volume: %w", err)
	}
	if v.Tags[cloud.TagStack] == "" {
		return refuse("volume %s is not tagged %s: instactl does not own it", volumeID, cloud.TagStack)
	}
	if v.InstanceID != "" {
		return refuse("volume %s is attached to %s at %s; detach it first", volumeID, v.InstanceID, v.Device)
	}
	if _, err := p.ec2.DeleteVolume(ctx, &ec2.DeleteVolumeInput{VolumeId: aws.String(volumeID)}); err != nil && !notFound(err) {
		return wrap(err, "delete volume %s", volumeID)
	}
	return p.waitVolumeDeleted(ctx, volumeID)
}
