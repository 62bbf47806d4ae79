package cli

import (
	"context"
	"sync"

	"github.com/instactl/instactl/cloud"
)

// provisionVerboseHelp is the help of plan's, apply's and destroy's -v.
const provisionVerboseHelp = "print each AWS call the SDK retries (throttling, lost replies, 5xx) and why, to stderr"

// retryLogger is a provider that reports the API attempts it retries (cloud/aws).
type retryLogger interface{ SetRetryLog(func(string)) }

// provisionVerbose makes the command's provider, once built, report its retries to stderr when
// verbose (-v): under throttling a run is slower, and -v says why.
func provisionVerbose(f *Factory, verbose bool) {
	if !verbose {
		return
	}
	inner := f.Provider
	var mu sync.Mutex // retries are reported from many goroutines
	f.Provider = func(ctx context.Context) (cloud.Provider, error) {
		p, err := inner(ctx)
		if rl, ok := p.(retryLogger); ok && err == nil {
			rl.SetRetryLog(func(s string) {
				mu.Lock()
				defer mu.Unlock()
				f.IO.Statusf("%s", s)
			})
		}
		return p, err
	}
}
