package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/instactl/instactl/cloud"
)

// Volumes are sparse image files (Dir/volumes/ID.img) of Config.VolumeSizeMiB whatever size is
// asked; the asked size is what Describe reports. Attached, an image is a loop device, linked
// inside the host as /run/instactl/dev/NAME for the device /dev/NAME. Snapshots are sparse copies
// (Dir/snapshots/ID.img); the caller freezes the file system first, the sandbox only copies.

func (p *Provider) imagePath(volID string) string { return p.path("volumes", volID+".img") }

func (p *Provider) snapshotPath(snapID string) string { return p.path("snapshots", snapID+".img") }

// CreateVolume creates an empty image, or a copy of a snapshot's. Tags must carry the stack.
func (p *Provider) CreateVolume(ctx context.Context, spec cloud.VolumeSpec) (cloud.Volume, error) {
	if spec.Tags[cloud.TagStack] == "" {
		return cloud.Volume{}, fmt.Errorf("create volume: tags must carry %s", cloud.TagStack)
	}
	var out cloud.Volume
	err := p.update(func(s *state) error {
		v := &volumeRec{Volume: cloud.Volume{
			ID: newID("vol"), Zone: spec.Zone, SizeGiB: spec.SizeGiB, Type: spec.Type, State: "available",
			SnapshotID: spec.SnapshotID, Tags: copyTags(spec.Tags),
		}}
		if v.Zone == "" {
			v.Zone = p.cfg.Zone
		}
		if v.Type == "" {
			v.Type = "sandbox"
		}
		img := p.imagePath(v.ID)
		if spec.SnapshotID != "" {
			sn, err := s.snapshot(spec.SnapshotID)
			if err != nil {
				return fmt.Errorf("create volume: %w", err)
			}
			if v.SizeGiB == 0 {
				v.SizeGiB = sn.SizeGiB
			}
			if v.SizeGiB < sn.SizeGiB {
				return fmt.Errorf("create volume: size %d GiB is smaller than snapshot %s (%d GiB)", v.SizeGiB, sn.ID, sn.SizeGiB)
			}
			if err := copySparse(p.snapshotPath(sn.ID), img); err != nil {
				return fmt.Errorf("create volume from %s: %w", sn.ID, err)
			}
		} else {
			if v.SizeGiB <= 0 {
				return fmt.Errorf("create volume: size must be at least 1 GiB (got %d)", v.SizeGiB)
			}
			if err := makeImage(img, int64(p.cfg.VolumeSizeMiB)<<20); err != nil {
				return fmt.Errorf("create volume: %w", err)
			}
		}
		s.Volumes = append(s.Volumes, v)
		out = v.Volume
		out.Tags = copyTags(v.Tags)
		return nil
	})
	return out, err
}

func makeImage(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("size image: %w", err)
	}
	return f.Close()
}

// copySparse copies an image keeping holes (and sharing extents where the file system can).
func copySparse(src, dst string) error {
	tmp := dst + ".tmp"
	if _, err := run("cp", "--sparse=always", "--reflink=auto", src, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename image: %w", err)
	}
	return nil
}

var deviceRE = regexp.MustCompile(`^/dev/[a-z][a-z0-9]*$`)

// AttachVolume attaches a volume to a running host as device (e.g. /dev/sdf): a loop device,
// linked inside the host at /run/instactl/dev/sdf. It refuses a volume already attached, a device
// name in use on the instance, another zone, and resources of different stacks.
func (p *Provider) AttachVolume(ctx context.Context, volumeID, instanceID, device string) error {
	if !deviceRE.MatchString(device) {
		return fmt.Errorf("attach volume %s: device %q must look like /dev/sdf", volumeID, device)
	}
	return p.update(func(s *state) error {
		v, in, err := volumeAndInstance(s, volumeID, instanceID)
		if err != nil {
			return fmt.Errorf("attach volume: %w", err)
		}
		if v.InstanceID == in.ID && v.Device == device {
			return nil // already there, as asked
		}
		if v.InstanceID != "" || v.State != "available" {
			return fmt.Errorf("attach volume %s: already attached to %s as %s; detach it first", v.ID, v.InstanceID, v.Device)
		}
		if in.State == "terminated" || p.sshdPID(in) == 0 {
			return fmt.Errorf("attach volume %s: instance %s is not running", v.ID, in.ID)
		}
		if v.Zone != in.Zone {
			return fmt.Errorf("attach volume %s: volume is in zone %s, instance %s in %s", v.ID, v.Zone, in.ID, in.Zone)
		}
		for _, o := range s.Volumes {
			if o.InstanceID == in.ID && o.Device == device {
				return fmt.Errorf("attach volume %s: device %s is in use on %s by %s", v.ID, device, in.ID, o.ID)
			}
		}
		loop, err := attachLoop(p.imagePath(v.ID))
		if err != nil {
			return fmt.Errorf("attach volume %s: %w", v.ID, err)
		}
		v.Loop, v.InstanceID, v.Device, v.State = loop, in.ID, device, "in-use"
		if err := p.linkDevice(in, v); err != nil {
			_ = p.releaseLoop(v)
			return fmt.Errorf("attach volume %s: %w", v.ID, err)
		}
		return nil
	})
}

func volumeAndInstance(s *state, volumeID, instanceID string) (*volumeRec, *instanceRec, error) {
	v, err := s.volume(volumeID)
	if err != nil {
		return nil, nil, err
	}
	in, err := s.instance(instanceID)
	if err != nil {
		return nil, nil, err
	}
	vs, err := stackOf("volume", v.ID, v.Tags)
	if err != nil {
		return nil, nil, err
	}
	if is := in.Tags[cloud.TagStack]; is != vs {
		return nil, nil, fmt.Errorf("volume %s belongs to stack %q, instance %s to %q", v.ID, vs, in.ID, is)
	}
	return v, in, nil
}

// DetachVolume detaches a volume from its instance; a volume attached nowhere is detached
// already (destroy detaches the volumes of the hosts it just terminated). It refuses while the volume's file system is
// mounted inside the host (unmount first, as a clean detach on AWS needs too), and a device other
// than the one the volume is attached as.
func (p *Provider) DetachVolume(ctx context.Context, volumeID, instanceID, device string) error {
	return p.update(func(s *state) error {
		v, in, err := volumeAndInstance(s, volumeID, instanceID)
		if err != nil {
			return fmt.Errorf("detach volume: %w", err)
		}
		if v.InstanceID == "" {
			return nil // detached already (a terminate detaches too), as on AWS
		}
		if v.InstanceID != in.ID {
			return fmt.Errorf("detach volume %s: attached to %s, not to %s", v.ID, v.InstanceID, in.ID)
		}
		if device != "" && device != v.Device {
			return fmt.Errorf("detach volume %s: attached as %s, not %s", v.ID, v.Device, device)
		}
		if pid := p.sshdPID(in); pid != 0 && v.Loop != "" {
			if mp := mountedAt(pid, v.Loop); mp != "" {
				return fmt.Errorf("detach volume %s: its file system is mounted at %s on %s; unmount it first", v.ID, mp, in.ID)
			}
			if err := os.Remove(procRoot(pid, devLink(v.Device))); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("detach volume %s: remove device link: %w", v.ID, err)
			}
		}
		if err := p.releaseLoop(v); err != nil {
			return fmt.Errorf("detach volume %s: %w", v.ID, err)
		}
		v.Loop, v.InstanceID, v.Device, v.State = "", "", "", "available"
		return nil
	})
}

// DeleteVolume deletes an available volume and its image; an attached volume is refused, a
// missing one is not an error (deleting is idempotent).
func (p *Provider) DeleteVolume(ctx context.Context, volumeID string) error {
	return p.update(func(s *state) error {
		v, err := s.volume(volumeID)
		if err != nil {
			return nil // deleted already
		}
		if _, err := stackOf("volume", v.ID, v.Tags); err != nil {
			return fmt.Errorf("delete volume: %w", err)
		}
		if v.InstanceID != "" {
			return fmt.Errorf("delete volume %s: attached to %s as %s; detach it first", v.ID, v.InstanceID, v.Device)
		}
		if err := os.Remove(p.imagePath(v.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete volume %s: %w", v.ID, err)
		}
		out := s.Volumes[:0]
		for _, o := range s.Volumes {
			if o.ID != v.ID {
				out = append(out, o)
			}
		}
		s.Volumes = out
		return nil
	})
}

// devLink is where a host sees device /dev/NAME: /run/instactl/dev/NAME.
func devLink(device string) string {
	return "/run/instactl/dev/" + strings.TrimPrefix(device, "/dev/")
}

// linkDevice creates the host's /run/instactl/dev/NAME -> /dev/loopN.
func (p *Provider) linkDevice(in *instanceRec, v *volumeRec) error {
	pid := p.sshdPID(in)
	if pid == 0 {
		return fmt.Errorf("instance %s is not running", in.ID)
	}
	link := procRoot(pid, devLink(v.Device))
	_ = os.Remove(link)
	if err := os.Symlink(v.Loop, link); err != nil {
		return fmt.Errorf("link %s to %s: %w", devLink(v.Device), v.Loop, err)
	}
	return nil
}

// attachLoop sets up a loop device for image.
func attachLoop(image string) (string, error) {
	out, err := run("losetup", "--find", "--show", image)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// loopBacking returns the file behind loop device dev ("" if none).
func loopBacking(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// loopsFor lists the loop devices backed by image (what `losetup -j IMAGE` shows).
func loopsFor(image string) []string {
	ents, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, e := range ents {
		if b, err := os.ReadFile(e); err == nil && strings.TrimSpace(string(b)) == image {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(e))))
		}
	}
	return out
}

// releaseLoop detaches the volume's loop device if it still maps the volume's image, and waits
// until no loop device maps the image (a device still mounted in a dying namespace is released
// by the kernel once the mount goes: losetup -d marks it autoclear).
func (p *Provider) releaseLoop(v *volumeRec) error {
	img := p.imagePath(v.ID)
	if v.Loop != "" && loopBacking(v.Loop) == img {
		if _, err := run("losetup", "--detach", v.Loop); err != nil && loopBacking(v.Loop) == img {
			return err
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		loops := loopsFor(img)
		if len(loops) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("loop devices %v still map %s", loops, img)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mountedAt returns where, in pid's mount namespace, the file system on loop device dev is
// mounted ("" if nowhere). It compares device numbers, which catches mounts made through the
// /run/instactl/dev link as well as through /dev/loopN.
func mountedAt(pid int, dev string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		return ""
	}
	want := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[2] == want {
			return fields[4]
		}
	}
	return ""
}

// CreateSnapshots copies each volume's image as a completed snapshot. The caller freezes the
// file systems first (xfs_freeze inside the host); the loop driver writes through the page cache
// the copy reads, so a frozen file system copies consistently. When instanceID is set, every
// volume must be attached to it. Tags are applied as given; a missing stack tag is copied from
// the volume.
func (p *Provider) CreateSnapshots(ctx context.Context, instanceID string, volumeIDs []string, tags map[string]string) ([]cloud.Snapshot, error) {
	if len(volumeIDs) == 0 {
		return nil, fmt.Errorf("create snapshots: no volumes given")
	}
	var out []cloud.Snapshot
	err := p.update(func(s *state) error {
		var vols []*volumeRec
		for _, id := range volumeIDs {
			v, err := s.volume(id)
			if err != nil {
				return fmt.Errorf("create snapshots: %w", err)
			}
			vs, err := stackOf("volume", v.ID, v.Tags)
			if err != nil {
				return fmt.Errorf("create snapshots: %w", err)
			}
			if ts := tags[cloud.TagStack]; ts != "" && ts != vs {
				return fmt.Errorf("create snapshots: volume %s belongs to stack %q, tags say %q", v.ID, vs, ts)
			}
			if instanceID != "" && v.InstanceID != instanceID {
				return fmt.Errorf("create snapshots: volume %s is not attached to instance %s", v.ID, instanceID)
			}
			vols = append(vols, v)
		}
		var made []*cloud.Snapshot
		for _, v := range vols {
			sn := &cloud.Snapshot{ID: newID("snap"), VolumeID: v.ID, SizeGiB: v.SizeGiB, State: "completed",
				StartTime: time.Now().UTC(), Tags: copyTags(tags)}
			if sn.Tags[cloud.TagStack] == "" {
				sn.Tags[cloud.TagStack] = v.Tags[cloud.TagStack]
			}
			if err := copySparse(p.imagePath(v.ID), p.snapshotPath(sn.ID)); err != nil {
				for _, m := range made {
					os.Remove(p.snapshotPath(m.ID))
				}
				return fmt.Errorf("create snapshots: copy %s: %w", v.ID, err)
			}
			made = append(made, sn)
		}
		for _, sn := range made {
			s.Snapshots = append(s.Snapshots, sn)
			c := *sn
			c.Tags = copyTags(sn.Tags)
			out = append(out, c)
		}
		return nil
	})
	return out, err
}

// DescribeSnapshots lists the snapshots tagged with stack, oldest first.
func (p *Provider) DescribeSnapshots(ctx context.Context, stack string) ([]cloud.Snapshot, error) {
	var out []cloud.Snapshot
	err := p.view(func(s *state) error {
		for _, sn := range s.Snapshots {
			if sn.Tags[cloud.TagStack] == stack {
				c := *sn
				c.Tags = copyTags(sn.Tags)
				out = append(out, c)
			}
		}
		return nil
	})
	return out, err
}

// DeleteSnapshot deletes a snapshot and its image; a missing one is not an error.
func (p *Provider) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	return p.update(func(s *state) error {
		sn, err := s.snapshot(snapshotID)
		if err != nil {
			return nil // deleted already
		}
		if _, err := stackOf("snapshot", sn.ID, sn.Tags); err != nil {
			return fmt.Errorf("delete snapshot: %w", err)
		}
		if err := os.Remove(p.snapshotPath(sn.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete snapshot %s: %w", sn.ID, err)
		}
		out := s.Snapshots[:0]
		for _, o := range s.Snapshots {
			if o.ID != sn.ID {
				out = append(out, o)
			}
		}
		s.Snapshots = out
		return nil
	})
}

// TagSnapshots adds tags to snapshots in one state update: all of them or none.
func (p *Provider) TagSnapshots(ctx context.Context, snapshotIDs []string, tags map[string]string) error {
	if len(snapshotIDs) == 0 || len(tags) == 0 {
		return nil
	}
	return p.update(func(s *state) error {
		var snaps []*cloud.Snapshot
		for _, id := range snapshotIDs {
			sn, err := s.snapshot(id)
			if err != nil {
				return fmt.Errorf("tag snapshots: %w", err)
			}
			st, err := stackOf("snapshot", sn.ID, sn.Tags)
			if err != nil {
				return fmt.Errorf("tag snapshots: %w", err)
			}
			if v, ok := tags[cloud.TagStack]; ok && v != st {
				return fmt.Errorf("tag snapshots: snapshot %s belongs to stack %q; tags may not move it to %q", sn.ID, st, v)
			}
			snaps = append(snaps, sn)
		}
		for _, sn := range snaps {
			for k, v := range tags {
				sn.Tags[k] = v
			}
		}
		return nil
	})
}
