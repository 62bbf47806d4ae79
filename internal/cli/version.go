package cli

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Stamped at build time: -ldflags "-X github.com/instactl/instactl/internal/cli.version=v1.2.3".
var (
	version = "dev"
	commit  = ""
)

// VersionInfo is what `instactl version` reports.
type VersionInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
}

// Version returns the running binary's version, falling back to the VCS stamp Go records.
func Version() VersionInfo {
	v := VersionInfo{Version: version, Commit: commit, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if v.Commit == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					v.Commit = s.Value
				}
			}
		}
	}
	return v
}

// NewCmdVersion prints the version.
func NewCmdVersion(f *Factory, out func() Output) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print instactl's version and build",
		Example: "  instactl version\n  instactl version -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v := Version()
			return render(f.IO, out(), v, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "instactl %s (commit %s, %s, %s/%s)\n", v.Version, orNone(v.Commit), v.Go, v.OS, v.Arch)
				return err
			})
		},
	}
}

func orNone(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
