// Command instagram-app is the bundled Instagram app server that `instactl deploy` ships to app
// hosts. Settings come from /etc/instagram/app.env, the environment and flags; see package app.
//
// Build with the version stamped in:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)" ./cmd/instagram-app
package main

import (
	"os"

	"github.com/instactl/instactl/internal/app"
)

// version and commit are set at build time with -ldflags -X. fault is set only by tests that
// build a misbehaving server on purpose (-X main.fault=errors=5% or delay=50ms, see
// app.Faults); nothing at run time can set it.
var (
	version = "dev"
	commit  = "unknown"
	fault   = ""
)

func main() {
	os.Exit(app.Main(os.Args[1:], app.Build{Version: version, Commit: commit, Fault: fault}, os.Stdout, os.Stderr))
}
