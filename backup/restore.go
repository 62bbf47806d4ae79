package backup

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/templates"
)

// TagRestoredFrom is set on volumes Restore creates: the set they were made from.
const TagRestoredFrom = "instactl:restored-from"

// RestoreOptions configures Restore.
type RestoreOptions struct {
	Env
	// Set is the set id to restore.
	Set string
	// To is the host (instance name or id) that receives the volumes.
	To string
	// Mount is where the restored file system is mounted (default: the target role's mount). It
	// must be an empty directory or absent on the host: Restore never mounts over data.
	Mount string
	// Port is the port the restored server listens on (default: the target role's port).
	Port int
	// AllowIncomplete restores a partial or pending set (for forensics).
	AllowIncomplete bool
}

// Restored is a set restored onto a host and running there.
type Restored struct {
	Set        string   `json:"set"`
	Target     string   `json:"target"`
	Host       string   `json:"host"`
	InstanceID string   `json:"instance_id"`
	Address    string   `json:"address"`
	Port       int      `json:"port"`
	Mount      string   `json:"mount"`
	VolumeIDs  []string `json:"volume_ids"`
	Devices    []string `json:"devices"`
	// DataDir is the Postgres cluster directory (pg) or the RDB directory (redis).
	DataDir string `json:"data_dir"`
	// Manifest is the set's manifest, when this machine has it.
	Manifest *Manifest `json:"manifest,omitempty"`
}

// FindSet returns the set with id or, when id is empty, the newest complete or verified set of
// target (of any target when target is empty). A set that does not exist is *SetNotFoundError.
func FindSet(ctx context.Context, env Env, id, target string) (Set, error) {
	sets, err := List(ctx, env)
	if err != nil {
		return Set{}, err
	}
	for _, s := range sets {
		if id != "" && s.ID == id {
			return s, nil
		}
		if id == "" && (target == "" || s.Target == target) && (s.State == StateComplete || s.State == StateVerified) {
			return s, nil
		}
	}
	return Set{}, &SetNotFoundError{Stack: env.Stack.Name, ID: id, Target: target}
}

// SetNotFoundError says the set asked for does not exist, or (ID empty) that no complete set
// of Target exists yet. It matches cloud.ErrNotFound.
type SetNotFoundError struct {
	Stack, ID, Target string
}

func (e *SetNotFoundError) Error() string {
	if e.ID != "" {
		return fmt.Sprintf("backup set %s does not exist in stack %s; see `instactl backup list`", e.ID, e.Stack)
	}
	what := "backup set"
	if e.Target != "" {
		what = e.Target + " backup set"
	}
	return fmt.Sprintf("there is no complete %s of stack %s; take one with: instactl backup create", what, e.Stack)
}

// Unwrap makes errors.Is(err, cloud.ErrNotFound) hold.
func (e *SetNotFoundError) Unwrap() error { return cloud.ErrNotFound }

// FindHost resolves a host argument: a stack host name (pg-0), an instance name or an instance
// id. A host that does not exist is *HostNotFoundError.
func FindHost(ctx context.Context, env Env, name string) (cloud.Instance, error) {
	res, err := env.Provider.Describe(ctx, env.Stack.Name)
	if err != nil {
		return cloud.Instance{}, fmt.Errorf("describe stack %s: %w", env.Stack.Name, err)
	}
	var names []string
	for _, in := range res.Instances {
		if in.ID == name || in.Name == name || in.Name == env.Stack.Name+"-"+name {
			return in, nil
		}
		names = append(names, strings.TrimPrefix(in.Name, env.Stack.Name+"-"))
	}
	sort.Strings(names)
	return cloud.Instance{}, &HostNotFoundError{Stack: env.Stack.Name, Name: name, Hosts: names}
}

// HostNotFoundError says no host of the stack answers to Name; Hosts lists those that exist.
// It matches cloud.ErrNotFound.
type HostNotFoundError struct {
	Stack, Name string
	Hosts       []string
}

func (e *HostNotFoundError) Error() string {
	return fmt.Sprintf("%s: no such host in stack %s (hosts: %s)", e.Name, e.Stack, strings.Join(e.Hosts, ", "))
}

// Unwrap makes errors.Is(err, cloud.ErrNotFound) hold.
func (e *HostNotFoundError) Unwrap() error { return cloud.ErrNotFound }

// snapshotOrder returns the set's snapshots in volume order: the manifest's when known, else by
// snapshot id.
func snapshotOrder(s Set) []cloud.Snapshot {
	snaps := append([]cloud.Snapshot(nil), s.Snapshots...)
	if s.Manifest == nil {
		return snaps
	}
	pos := map[string]int{}
	for _, v := range s.Manifest.Volumes {
		pos[v.SnapshotID] = v.Order
	}
	sort.SliceStable(snaps, func(i, j int) bool { return pos[snaps[i].ID] < pos[snaps[j].ID] })
	return snaps
}

// Restore creates volumes from a set, attaches them to a host, mounts them and starts the
// database on them: Postgres as a standalone copy (standby.signal removed, so it recovers to a
// consistent point and opens read-write without following any primary), Redis loading the RDB
// without replicating. The server is started directly (pg_ctl, redis-server --daemonize), not
// as the host's managed service, so a drill never touches the host's own services.
func Restore(ctx context.Context, opts RestoreOptions) (*Restored, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	set, err := FindSet(ctx, opts.Env, opts.Set, "")
	if err != nil {
		return nil, err
	}
	if !opts.AllowIncomplete && set.State != StateComplete && set.State != StateVerified {
		return nil, fmt.Errorf("backup set %s is %s; only complete sets are restored", set.ID, set.State)
	}
	role := opts.Stack.Role(set.Target)
	if role == nil {
		return nil, fmt.Errorf("restore %s: the stack has no role %s", set.ID, set.Target)
	}
	res, err := opts.Provider.Describe(ctx, opts.Stack.Name)
	if err != nil {
		return nil, fmt.Errorf("restore %s: describe stack: %w", set.ID, err)
	}
	var to *cloud.Instance
	for i, in := range res.Instances {
		if in.Name == opts.To || in.ID == opts.To {
			to = &res.Instances[i]
		}
	}
	if to == nil {
		return nil, fmt.Errorf("restore %s: host %s: %w", set.ID, opts.To, cloud.ErrNotFound)
	}
	r := &Restored{Set: set.ID, Target: kind(set.Target), Host: to.Name, InstanceID: to.ID, Address: to.PrivateAddress,
		Port: opts.Port, Mount: opts.Mount, Manifest: set.Manifest}
	if r.Mount == "" {
		r.Mount = role.Volumes.Mount
	}
	if r.Port == 0 {
		r.Port = role.Port
	}
	if err := restoreVolumes(ctx, &opts, set, *to, res.Volumes, r); err != nil {
		return r, err
	}
	c, err := opts.dial(ctx, *to)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := mountRestored(ctx, &opts, c, r); err != nil {
		return r, err
	}
	if err := startRestored(ctx, &opts, c, r); err != nil {
		return r, err
	}
	opts.emit(set.ID, to.Name, "restore", "%s running on %s:%d from %s", r.Target, r.Address, r.Port, r.Mount)
	return r, nil
}

// restoreVolumes creates one volume per snapshot and attaches them at free device names.
func restoreVolumes(ctx context.Context, o *RestoreOptions, set Set, to cloud.Instance, vols []cloud.Volume, r *Restored) error {
	used := map[string]bool{}
	for _, v := range vols {
		if v.InstanceID == to.ID {
			used[path.Base(v.Device)] = true
		}
	}
	var free []string
	for _, d := range templates.DeviceNames(11) {
		if !used[d] {
			free = append(free, d)
		}
	}
	snaps := snapshotOrder(set)
	if len(snaps) > len(free) {
		return fmt.Errorf("restore %s: %s has %d free device names for %d volumes", set.ID, to.Name, len(free), len(snaps))
	}
	for i, sn := range snaps {
		v, err := o.Provider.CreateVolume(ctx, cloud.VolumeSpec{Zone: to.Zone, SizeGiB: sn.SizeGiB, SnapshotID: sn.ID,
			Tags: map[string]string{cloud.TagStack: o.Stack.Name, TagRestoredFrom: set.ID,
				cloud.TagName: "restore of " + set.ID, cloud.TagDevice: "/dev/" + free[i]}})
		if err != nil {
			return fmt.Errorf("restore %s: create volume from %s: %w", set.ID, sn.ID, err)
		}
		r.VolumeIDs = append(r.VolumeIDs, v.ID)
		dev := "/dev/" + free[i]
		if err := o.Provider.AttachVolume(ctx, v.ID, to.ID, dev); err != nil {
			return fmt.Errorf("restore %s: attach %s to %s: %w", set.ID, v.ID, to.Name, err)
		}
		r.Devices = append(r.Devices, dev)
	}
	o.emit(set.ID, to.Name, "restore", "%d volumes created and attached as %s", len(snaps), strings.Join(r.Devices, ", "))
	return nil
}

// mountScript waits for the device, refuses a mount point holding a whole file system (a bind
// mount of a directory, as sandbox hosts have, is fine) or files, and mounts with
// nouuid (the copy has the UUID of a file system that may be mounted on the same kernel).
func mountScript(dev, mount string) remote.Command {
	s := `dev=$1 m=$2; i=0; while [ ! -b "$dev" ]; do i=$((i+1)); if [ $i -gt 600 ]; then echo "device $dev did not appear" >&2; exit 1; fi; sleep 0.05; done; ` +
		`top=$(findmnt -rno SOURCE -M "$m" | tail -n 1); case $top in ""|*"["*) ;; *) echo "$m already has $top mounted; refusing to mount over it" >&2; exit 1;; esac; ` +
		`mkdir -p "$m"; if [ -n "$(ls -A "$m")" ]; then echo "$m is not empty; refusing to mount over data" >&2; exit 1; fi; ` +
		`mount -t xfs -o nouuid,noatime "$dev" "$m"`
	return remote.Command{"sh", "-c", s, "instactl-restore-mount", dev, mount}
}

func mountRestored(ctx context.Context, o *RestoreOptions, c *remote.Client, r *Restored) error {
	if len(r.Devices) != 1 {
		return fmt.Errorf("restore %s: %d volumes: restoring a striped (RAID 0) set is not supported yet", r.Set, len(r.Devices))
	}
	dev := path.Join(o.deviceDir(), path.Base(r.Devices[0]))
	if _, err := runCmd(ctx, c, o.cmds().root(mountScript(dev, r.Mount))); err != nil {
		return fmt.Errorf("restore %s: mount %s at %s on %s: %w", r.Set, dev, r.Mount, r.Host, err)
	}
	return nil
}

// pgStartCommand starts a restored cluster as a standalone copy on addr:port, with
// archive_mode=off: a copy never writes into the group's WAL archive (its new timeline would
// stray into the real one's history).
func pgStartCommand(pgBin, dataDir, addr string, port int, logFile string) remote.Command {
	s := `bin=$1 data=$2 addr=$3 port=$4 log=$5; set -e; ` +
		`test -s "$data/PG_VERSION" || { echo "$data holds no Postgres cluster" >&2; exit 1; }; ` +
		`rm -f "$data/standby.signal" "$data/recovery.signal" "$data/postmaster.pid"; ` +
		`install -d -o postgres -g postgres -m 2775 ` + pgSocketDir + `; mkdir -p "$(dirname "$log")"; touch "$log"; chown postgres "$log"; ` +
		`runuser -u postgres -- "$bin/pg_ctl" -D "$data" -w -t 300 -l "$log" ` +
		`-o "-c listen_addresses=$addr -c port=$port -c unix_socket_directories=` + pgSocketDir + ` -c cluster_name=restore -c primary_conninfo='' -c archive_mode=off" start`
	return remote.Command{"sh", "-c", s, "instactl-restore-pg", pgBin, dataDir, addr, strconv.Itoa(port), logFile}
}

// redisStartCommand starts redis-server on a restored RDB, with no persistence and no master.
func redisStartCommand(dir, file, addr string, port int, logFile string) remote.Command {
	return remote.Command{"redis-server", "--bind", addr, "--port", strconv.Itoa(port), "--dir", dir,
		"--dbfilename", file, "--daemonize", "yes", "--save", "", "--appendonly", "no",
		"--logfile", logFile, "--pidfile", "/run/instactl-restore-redis-" + strconv.Itoa(port) + ".pid"}
}

func restoreLog(set string) string { return "/var/log/instagram/restore-" + set + ".log" }

func startRestored(ctx context.Context, o *RestoreOptions, c *remote.Client, r *Restored) error {
	cmds := o.cmds()
	switch r.Target {
	case TargetPostgres:
		r.DataDir = pgDataDir(r.Mount)
		if _, err := runCmd(ctx, c, cmds.root(pgStartCommand(o.pgBin(), r.DataDir, r.Address, r.Port, restoreLog(r.Set)))); err != nil {
			return fmt.Errorf("restore %s: start postgres on %s: %w", r.Set, r.Host, err)
		}
		return waitPG(ctx, c, cmds, o.pgBin(), r)
	case TargetRedis:
		r.DataDir = r.Mount
		if _, err := runCmd(ctx, c, cmds.root(redisStartCommand(r.Mount, restoredRDBFile(r), r.Address, r.Port, restoreLog(r.Set)))); err != nil {
			return fmt.Errorf("restore %s: start redis on %s: %w", r.Set, r.Host, err)
		}
		return waitRedis(ctx, c, r)
	}
	return fmt.Errorf("restore %s: unknown target %s", r.Set, r.Target)
}

// waitPG waits until the copy accepts queries and has left recovery.
func waitPG(ctx context.Context, c *remote.Client, cmds commands, pgBin string, r *Restored) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		res, err := c.Run(ctx, cmds.psql(pgBin, r.Port, "postgres", "SELECT pg_is_in_recovery()"), nil)
		if err != nil {
			return err
		}
		if res.ExitCode == 0 && trimOut(res) == "f" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("restore %s: postgres on %s did not open read-write within 2m: %s%s", r.Set, r.Host, res.Stdout, res.Stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitRedis waits until redis answers and has loaded its dataset.
func waitRedis(ctx context.Context, c *remote.Client, r *Restored) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		res, err := c.Run(ctx, redisCLI(r.Address, r.Port, "INFO", "persistence"), nil)
		if err != nil {
			return err
		}
		if res.ExitCode == 0 && parseInfo(string(res.Stdout))["loading"] == "0" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("restore %s: redis on %s did not load within 2m", r.Set, r.Host)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Teardown stops the restored server, unmounts, detaches and deletes the restored volumes. It
// only deletes volumes tagged as restored from r.Set.
func Teardown(ctx context.Context, env Env, r *Restored) error {
	if err := env.check(); err != nil {
		return err
	}
	res, err := env.Provider.Describe(ctx, env.Stack.Name)
	if err != nil {
		return fmt.Errorf("teardown %s: describe: %w", r.Set, err)
	}
	var in *cloud.Instance
	for i := range res.Instances {
		if res.Instances[i].ID == r.InstanceID {
			in = &res.Instances[i]
		}
	}
	var errs []error
	if in != nil && r.Mount != "" {
		c, err := env.dial(ctx, *in)
		if err != nil {
			return err
		}
		defer c.Close()
		cmds := env.cmds()
		switch r.Target {
		case TargetPostgres:
			stop := cmds.root(remote.Script(`if [ -s ` + remote.Quote(pgDataDir(r.Mount)+"/postmaster.pid") + ` ]; then runuser -u postgres -- ` +
				remote.Quote(env.pgBin()+"/pg_ctl", "-D", pgDataDir(r.Mount), "-m", "fast", "-w", "stop") + `; fi`))
			if _, err := runCmd(ctx, c, stop); err != nil {
				errs = append(errs, fmt.Errorf("teardown %s: stop postgres: %w", r.Set, err))
			}
		case TargetRedis:
			_, _ = c.Run(ctx, redisCLI(r.Address, r.Port, "SHUTDOWN", "NOSAVE"), nil)
		}
		// Only a whole file system is unmounted, never the directory bind mount under it.
		umount := cmds.root(remote.Script(`top=$(findmnt -rno SOURCE -M ` + remote.Quote(r.Mount) + ` | tail -n 1); case $top in ""|*"["*) ;; *) umount ` + remote.Quote(r.Mount) + `;; esac`))
		if _, err := runCmd(ctx, c, umount); err != nil {
			return errors.Join(append(errs, fmt.Errorf("teardown %s: unmount %s: %w", r.Set, r.Mount, err))...)
		}
	}
	for _, v := range res.Volumes {
		if v.Tags[TagRestoredFrom] != r.Set || !contains(r.VolumeIDs, v.ID) {
			continue
		}
		if v.InstanceID != "" {
			if err := env.Provider.DetachVolume(ctx, v.ID, v.InstanceID, v.Device); err != nil {
				errs = append(errs, fmt.Errorf("teardown %s: detach %s: %w", r.Set, v.ID, err))
				continue
			}
		}
		if err := env.Provider.DeleteVolume(ctx, v.ID); err != nil {
			errs = append(errs, fmt.Errorf("teardown %s: delete %s: %w", r.Set, v.ID, err))
		}
	}
	return errors.Join(errs...)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
