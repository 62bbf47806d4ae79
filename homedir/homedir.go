// Package homedir expands a leading ~ in the paths users write (stack file keys, ssh_config
// IdentityFile, command-line flags) to the home directory, the way a shell would. It is the one
// place this is done: the stack package expands every path-valued key when a stack is loaded, and
// remote does the same for what it reads from ~/.ssh/config.
package homedir

import (
	"os"
	"path/filepath"
	"strings"
)

// Expand returns p with a leading "~" or "~/" replaced by the home directory ($HOME, as
// os.UserHomeDir says). Other paths, "~user" forms, and every path when the home directory is
// unknown are returned unchanged, so the error that follows names the path as written.
func Expand(p string) string {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return p
	}
	return filepath.Join(home, p[1:])
}
