package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Artifact is the file a deploy ships: one static binary. Its release id is derived from its
// content alone, so building the same source twice (with -trimpath, the build is
// reproducible) or deploying the same file again is the same release, and staging skips it.
type Artifact struct {
	// Path is the local file.
	Path string `json:"path"`
	// SHA256 is the hex sha256 of the content.
	SHA256 string `json:"sha256"`
	// Size in bytes.
	Size int64 `json:"size"`
	// ID is the release id: the first 12 hex digits of SHA256.
	ID string `json:"id"`
	// Version and Commit are what was stamped into the binary, when instactl built it (or
	// when the caller says so); informational.
	Version string `json:"version,omitempty"`
	Commit  string `json:"commit,omitempty"`
}

// ReleaseID is the release id of content with the given hex sha256.
func ReleaseID(sha string) string {
	if len(sha) < 12 {
		return sha
	}
	return sha[:12]
}

// OpenArtifact hashes an existing file (--artifact FILE).
func OpenArtifact(path string) (Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return Artifact{}, fmt.Errorf("artifact: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Artifact{}, fmt.Errorf("artifact: %w", err)
	}
	if !st.Mode().IsRegular() {
		return Artifact{}, fmt.Errorf("artifact %s is not a regular file", path)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Artifact{}, fmt.Errorf("artifact %s: %w", path, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	abs, _ := filepath.Abs(path)
	return Artifact{Path: abs, SHA256: sum, Size: n, ID: ReleaseID(sum)}, nil
}

// BuildOptions says how to build the app server.
type BuildOptions struct {
	// ModuleDir is the module root the build runs in (default ".").
	ModuleDir string
	// Package is the main package (default "./cmd/instagram-app").
	Package string
	// Output is the file written (required).
	Output string
	// GOOS and GOARCH of the hosts (default linux/amd64).
	GOOS, GOARCH string
	// Version is stamped into VersionVar (default: `git describe --tags --always --dirty`,
	// or "dev").
	Version string
	// Commit is stamped into CommitVar (default: `git rev-parse HEAD`, or "unknown").
	Commit string
	// VersionVar and CommitVar are the -X targets (default main.version and main.commit, as
	// cmd/instagram-app declares them).
	VersionVar, CommitVar string
	// GoBinary is the go command (default "go").
	GoBinary string
}

func (o BuildOptions) withDefaults(ctx context.Context) BuildOptions {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.ModuleDir, ".")
	def(&o.Package, "./cmd/instagram-app")
	def(&o.GOOS, "linux")
	def(&o.GOARCH, "amd64")
	def(&o.VersionVar, "main.version")
	def(&o.CommitVar, "main.commit")
	def(&o.GoBinary, "go")
	if o.Version == "" {
		o.Version = gitOr(ctx, o.ModuleDir, "dev", "describe", "--tags", "--always", "--dirty")
	}
	if o.Commit == "" {
		o.Commit = gitOr(ctx, o.ModuleDir, "unknown", "rev-parse", "HEAD")
	}
	return o
}

// BuildArgs is the go command line Build runs (for --dry-run and tests). -trimpath and a
// fixed build id keep the output reproducible; -s -w drop the symbol table and DWARF (panics
// still print symbolized stacks), which makes every upload a third smaller.
func BuildArgs(o BuildOptions) []string {
	ldflags := fmt.Sprintf("-s -w -buildid= -X %s=%s -X %s=%s", o.VersionVar, o.Version, o.CommitVar, o.Commit)
	return []string{"build", "-trimpath", "-ldflags", ldflags, "-o", o.Output, o.Package}
}

// Build compiles the app server for the hosts and returns the artifact.
func Build(ctx context.Context, o BuildOptions) (Artifact, error) {
	if o.Output == "" {
		return Artifact{}, fmt.Errorf("build: an output file is required")
	}
	o = o.withDefaults(ctx)
	if strings.ContainsAny(o.Version+o.Commit, " \t\n'\"") {
		return Artifact{}, fmt.Errorf("build: version %q and commit %q must not contain spaces or quotes", o.Version, o.Commit)
	}
	cmd := exec.CommandContext(ctx, o.GoBinary, BuildArgs(o)...)
	cmd.Dir = o.ModuleDir
	cmd.Env = append(os.Environ(), "GOOS="+o.GOOS, "GOARCH="+o.GOARCH, "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return Artifact{}, fmt.Errorf("build %s for %s/%s: %w: %s", o.Package, o.GOOS, o.GOARCH, err, strings.TrimSpace(out.String()))
	}
	a, err := OpenArtifact(o.Output)
	if err != nil {
		return Artifact{}, err
	}
	a.Version, a.Commit = o.Version, o.Commit
	return a, nil
}

func gitOr(ctx context.Context, dir, fallback string, args ...string) string {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if s := strings.TrimSpace(string(out)); err == nil && s != "" {
		return s
	}
	return fallback
}
