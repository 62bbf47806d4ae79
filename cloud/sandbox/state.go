package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/crypto/ssh"

	"github.com/instactl/instactl/cloud"
)

// state is everything the sandbox remembers, in Dir/state.json. Every call reads and writes it
// under an exclusive flock on Dir/state.lock, so several instactl processes (or tests) can share
// one sandbox directory.
type state struct {
	Instances      []*instanceRec         `json:"instances"`
	Volumes        []*volumeRec           `json:"volumes"`
	Snapshots      []*cloud.Snapshot      `json:"snapshots"`
	SecurityGroups []*cloud.SecurityGroup `json:"security_groups"`
	KeyPairs       []keyPair              `json:"key_pairs"`
	LoadBalancers  []*lbRec               `json:"load_balancers"`
	// NginxPID is the nginx master serving every load balancer (0 when none runs).
	NginxPID int `json:"nginx_pid,omitempty"`
	// NginxGeneration counts config rewrites; the control socket answers it so a reload is
	// known to be in effect.
	NginxGeneration int `json:"nginx_generation,omitempty"`
	// CreatedDirs are directories of the root filesystem the sandbox created as mount points
	// (deepest last); Down removes them when no mount namespace uses them any more.
	CreatedDirs []string `json:"created_dirs,omitempty"`
}

// instanceRec is one host. Instance.State is "running", "stopped" (by StopInstances; PID 0) or
// "terminated" as recorded; Describe also reports "stopped" for a recorded-running host whose
// sshd is gone (StartStopped brings only those back).
type instanceRec struct {
	cloud.Instance
	ClientToken string `json:"client_token,omitempty"`
	KeyName     string `json:"key_name,omitempty"`
	// PID is the host's sshd listener; its mount namespace is the host.
	PID int `json:"pid,omitempty"`
	// Mounts are the private directories bind-mounted over the machine's, sorted.
	Mounts []string `json:"mounts"`
	// HasUserData and BootstrapStarted make user-data run once per instance, like cloud-init.
	HasUserData      bool `json:"has_user_data,omitempty"`
	BootstrapStarted bool `json:"bootstrap_started,omitempty"`
	// BootstrapPID is the user-data process, to tell "still running" from "interrupted".
	BootstrapPID int `json:"bootstrap_pid,omitempty"`

	hostKey ssh.PublicKey // set while creating, to skip re-reading the key file
}

// volumeRec is one volume; Loop is its loop device while attached.
type volumeRec struct {
	cloud.Volume
	Loop string `json:"loop,omitempty"`
}

// lbRec is one load balancer; Port is where nginx listens for it.
type lbRec struct {
	cloud.LoadBalancer
	Port int `json:"port"`
}

type keyPair struct {
	Name      string `json:"name"`
	Stack     string `json:"stack"`
	PublicKey string `json:"public_key"`
}

// errDown is returned once Down removed the sandbox directory.
var errDown = errors.New("sandbox directory is gone (sandbox is down)")

// update runs fn on the state under the lock and saves it when fn succeeds.
func (p *Provider) update(fn func(s *state) error) error {
	return p.locked(true, fn)
}

// updateAlways is update for calls that change the machine before they can fail (processes
// started or killed, directories created): the state is saved even when fn fails, so it always
// describes what exists. fn must leave the state consistent on every return.
func (p *Provider) updateAlways(fn func(s *state) error) error {
	var fnErr error
	err := p.locked(true, func(s *state) error {
		fnErr = fn(s)
		return nil
	})
	if err != nil {
		return err
	}
	return fnErr
}

// view runs fn on the state under the lock without saving.
func (p *Provider) view(fn func(s *state) error) error {
	return p.locked(false, fn)
}

func (p *Provider) locked(save bool, fn func(s *state) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	lf, err := os.OpenFile(filepath.Join(p.cfg.Dir, "state.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errDown
		}
		return fmt.Errorf("open state lock: %w", err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock state: %w", err)
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too
	s, err := p.load()
	if err != nil {
		return err
	}
	if err := fn(s); err != nil {
		return err
	}
	if !save {
		return nil
	}
	return p.save(s)
}

func (p *Provider) statePath() string { return filepath.Join(p.cfg.Dir, "state.json") }

func (p *Provider) load() (*state, error) {
	b, err := os.ReadFile(p.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return &state{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read sandbox state: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", p.statePath(), err)
	}
	return &s, nil
}

func (p *Provider) save(s *state) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode sandbox state: %w", err)
	}
	return writeFileAtomic(p.statePath(), append(b, '\n'), 0o600)
}

// writeFileAtomic writes via a temporary file and rename so readers never see half a file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp, perm)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

// newID returns an AWS-looking id: prefix, dash, 17 hex digits.
func newID(prefix string) string {
	var b [9]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return prefix + "-" + hex.EncodeToString(b[:])[:17]
}

func (s *state) instance(id string) (*instanceRec, error) {
	for _, in := range s.Instances {
		if in.ID == id {
			return in, nil
		}
	}
	return nil, fmt.Errorf("instance %s: %w", id, cloud.ErrNotFound)
}

func (s *state) volume(id string) (*volumeRec, error) {
	for _, v := range s.Volumes {
		if v.ID == id {
			return v, nil
		}
	}
	return nil, fmt.Errorf("volume %s: %w", id, cloud.ErrNotFound)
}

func (s *state) snapshot(id string) (*cloud.Snapshot, error) {
	for _, sn := range s.Snapshots {
		if sn.ID == id {
			return sn, nil
		}
	}
	return nil, fmt.Errorf("snapshot %s: %w", id, cloud.ErrNotFound)
}

func (s *state) group(id string) (*cloud.SecurityGroup, error) {
	for _, g := range s.SecurityGroups {
		if g.ID == id {
			return g, nil
		}
	}
	return nil, fmt.Errorf("security group %s: %w", id, cloud.ErrNotFound)
}

func (s *state) lb(name string) (*lbRec, error) {
	for _, l := range s.LoadBalancers {
		if l.Name == name {
			return l, nil
		}
	}
	return nil, fmt.Errorf("load balancer %s: %w", name, cloud.ErrNotFound)
}

// stackOf returns the stack tag, or an error naming the resource when it has none: the sandbox,
// like AWS in instactl's hands, never changes a resource that no stack owns.
func stackOf(kind, id string, tags map[string]string) (string, error) {
	st := tags[cloud.TagStack]
	if st == "" {
		return "", fmt.Errorf("%s %s has no %s tag; refusing to change a resource no stack owns", kind, id, cloud.TagStack)
	}
	return st, nil
}

func copyTags(t map[string]string) map[string]string {
	out := make(map[string]string, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}
