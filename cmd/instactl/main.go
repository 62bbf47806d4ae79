// Command instactl is the control plane for an Instagram-2011-style stack.
package main

import (
	"os"

	"github.com/instactl/instactl/internal/cli"
)

func main() { os.Exit(cli.Main()) }
