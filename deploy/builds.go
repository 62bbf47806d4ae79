package deploy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// BuildStore keeps the local builds of the app server that real deploys shipped, one
// directory per release id under Dir, so a resumed run finds its artifact again; only the
// newest Keep are kept.
type BuildStore struct {
	Dir  string
	Keep int
}

// Build builds the app server (see [Build]) in a fresh directory of the store. With keep
// (a real deploy) the build is moved under Dir/<release id> and older builds are pruned; without
// (a dry run) cleanup removes it.
func (s BuildStore) Build(ctx context.Context, o BuildOptions, keep bool) (a Artifact, cleanup func(), err error) {
	noop := func() {}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return Artifact{}, noop, err
	}
	tmp, err := os.MkdirTemp(s.Dir, "build-")
	if err != nil {
		return Artifact{}, noop, err
	}
	o.Output = filepath.Join(tmp, "instagram-app")
	a, err = Build(ctx, o)
	if err != nil {
		os.RemoveAll(tmp)
		return a, noop, fmt.Errorf("build the app server: %w", err)
	}
	if !keep {
		return a, func() { os.RemoveAll(tmp) }, nil
	}
	final := filepath.Join(s.Dir, a.ID)
	if _, err := os.Stat(final); err == nil {
		os.RemoveAll(tmp)
	} else if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return a, noop, err
	}
	a.Path = filepath.Join(final, "instagram-app")
	s.prune()
	return a, noop, nil
}

// prune keeps the newest Keep builds.
func (s BuildStore) prune() {
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		return
	}
	type built struct {
		path string
		mod  time.Time
	}
	var all []built
	for _, e := range ents {
		if info, err := e.Info(); err == nil && e.IsDir() && !strings.HasPrefix(e.Name(), "build-") {
			all = append(all, built{filepath.Join(s.Dir, e.Name()), info.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })
	for i := s.Keep; i < len(all); i++ {
		os.RemoveAll(all[i].path)
	}
}

// FindModule returns the instactl source tree (the directory whose go.mod declares the
// module) that contains dir, and false when dir is outside every checkout.
func FindModule(dir string) (string, bool) {
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/instactl/instactl\n")) {
			return d, true
		}
		if filepath.Dir(d) == d {
			return "", false
		}
	}
}
