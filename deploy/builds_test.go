package deploy

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFindModule(t *testing.T) {
	wd, _ := os.Getwd()
	root, ok := FindModule(filepath.Join(wd, "testdata"))
	if !ok || root != filepath.Dir(wd) {
		t.Errorf("FindModule(deploy/testdata) = %q, %v; want the checkout %s", root, ok, filepath.Dir(wd))
	}
	if got, ok := FindModule(t.TempDir()); ok {
		t.Errorf("FindModule outside the checkout = %q", got)
	}
}

func TestBuildStorePrune(t *testing.T) {
	s := BuildStore{Dir: t.TempDir(), Keep: 2}
	old := time.Now().Add(-time.Hour)
	for i, name := range []string{"r1", "r2", "r3", "build-123"} {
		p := filepath.Join(s.Dir, name)
		os.Mkdir(p, 0o700)
		os.Chtimes(p, old, old.Add(time.Duration(i)*time.Minute))
	}
	s.prune()
	var left []string
	ents, _ := os.ReadDir(s.Dir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if len(left) != 3 || left[0] != "build-123" || left[1] != "r2" || left[2] != "r3" {
		t.Errorf("after prune: %v; want the two newest builds and the build in progress", left)
	}
}
