package topology

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/instactl/instactl/stack"
)

// SourceCache is a Topology read from the local copy of the last one the control database
// gave: what a failover of the control group has to go on while no member takes writes.
const SourceCache = "cache"

// ResolveCached is Resolve that keeps a copy of every topology the control database gives in
// file, and falls back to that copy, not to the stack file's seed, when the control database
// cannot be read: after a failover the seed names the wrong primary, and the control database
// is unreachable exactly when its own primary is lost. The error of the failed read is
// returned with the copy (or with the seed when there is no copy), as Resolve does.
func ResolveCached(ctx context.Context, st *stack.Stack, user, file string) (Topology, error) {
	t, err := Resolve(ctx, st, user)
	if err == nil && t.Source == SourceControl {
		if werr := saveCache(file, t); werr != nil {
			return t, fmt.Errorf("keep a copy of the topology: %w", werr)
		}
		return t, nil
	}
	if err == nil {
		return t, nil
	}
	cached, ok, cerr := loadCache(file)
	if cerr != nil || !ok {
		return t, err
	}
	return cached, err
}

func saveCache(file string, t Topology) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

func loadCache(file string) (Topology, bool, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return Topology{}, false, nil
	}
	if err != nil {
		return Topology{}, false, err
	}
	var t Topology
	if err := json.Unmarshal(b, &t); err != nil {
		return Topology{}, false, fmt.Errorf("topology copy %s: %w", file, err)
	}
	t.Source = SourceCache
	return t, true, nil
}
