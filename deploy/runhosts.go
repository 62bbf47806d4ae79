package deploy

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"

	"github.com/instactl/instactl/remote"
)

// HostRun is one host's outcome of a command run on many hosts (`instactl run`).
type HostRun struct {
	Host       string `json:"host"`
	Address    string `json:"address"`
	ExitCode   int    `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	Stdout     string `json:"stdout,omitempty"`
	Stderr     string `json:"stderr,omitempty"`
	DurationMS int64  `json:"duration_ms"`
	// Error is set when the command did not run to completion (connection, host key).
	Error string `json:"error,omitempty"`
}

// RunCommand is the remote command of `instactl run`: one argument is a shell script,
// several an argument vector.
func RunCommand(args []string) remote.Command {
	if len(args) == 1 {
		return remote.Script(args[0])
	}
	return remote.Cmd(args...)
}

// MatchHosts picks the named hosts out of all, in the order named. A host may be named in
// full or without the stack's prefix ("app-0" for "instagram-app-0"). unknown is the first
// name that matches no host ("" when all do).
func MatchHosts(all []Host, stackName string, names []string) (sel []Host, unknown string) {
	byName := map[string]Host{}
	for _, h := range all {
		byName[h.Name] = h
		byName[strings.TrimPrefix(h.Name, stackName+"-")] = h
	}
	for _, n := range names {
		h, ok := byName[n]
		if !ok {
			return nil, n
		}
		sel = append(sel, h)
	}
	return sel, ""
}

// RunOnHosts runs cmd on every host, at most parallel at a time, and returns each host's
// outcome (in the order of hosts) and how many did not exit 0. When streams is not nil, a
// host's output goes as it arrives to the writers it returns for that host, which are closed
// when the command ends; with keep, the captured output is kept in the results.
func (d *Deployer) RunOnHosts(ctx context.Context, hosts []Host, cmd remote.Command, parallel int, keep bool,
	streams func(Host) (stdout, stderr io.WriteCloser)) (results []HostRun, failed int) {
	pool, done := d.pool()
	defer done()
	targets := make([]remote.Target, len(hosts))
	results = make([]HostRun, len(hosts))
	index := map[remote.Target]int{}
	for i, h := range hosts {
		targets[i] = h.Target()
		index[targets[i]] = i
		results[i] = HostRun{Host: h.Name, Address: h.Address, ExitCode: -1}
	}
	var mu sync.Mutex
	res := pool.FanOut(ctx, targets, parallel, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		var ow, ew io.Writer
		if streams != nil {
			pw, pe := streams(hosts[index[t]])
			ow, ew = pw, pe
			defer pw.Close()
			defer pe.Close()
		}
		r, err := c.RunStream(ctx, cmd, nil, ow, ew)
		if err != nil {
			return err
		}
		mu.Lock()
		res := &results[index[t]]
		res.ExitCode, res.Signal = r.ExitCode, r.Signal
		if keep {
			res.Stdout, res.Stderr = string(r.Stdout), string(r.Stderr)
		}
		mu.Unlock()
		return r.Err()
	})
	for i, r := range res {
		results[i].DurationMS = r.Duration.Milliseconds()
		if r.Err != nil {
			failed++
			var ee *remote.ExitError
			if !errors.As(r.Err, &ee) {
				results[i].Error = ErrorLine(r.Err)
			}
		}
	}
	return results, failed
}
