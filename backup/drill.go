package backup

import (
	"context"
	"errors"

	"github.com/instactl/instactl/cloud"
)

// DrillOptions configures Drill.
type DrillOptions struct {
	Env
	// Set is the set to drill; empty means the newest complete set (of Target, when given).
	Set    string
	Target string
	// Scratch is an existing host of the stack to restore onto (pg-0, an instance name or id).
	// Empty creates a temporary scratch host (CreateScratch, sandbox only) for the drill and
	// terminates it afterwards, pass or fail.
	Scratch string
	// KeepScratch leaves a scratch host created for the drill running (debugging).
	KeepScratch bool
}

// DrillResult is a drill's outcome and the host it ran on.
type DrillResult struct {
	*VerifyResult
	// Scratch is the host the drill ran on; ScratchCreated says the drill created it (and
	// terminated it, unless KeepScratch).
	Scratch        string `json:"scratch"`
	ScratchCreated bool   `json:"scratch_created"`
	// ScratchID is the scratch host's instance id.
	ScratchID string `json:"-"`
}

// Drill finds the set, finds or creates the scratch host, runs Verify on it and terminates a
// scratch host it created. An unknown set or host is *SetNotFoundError or *HostNotFoundError,
// a provider that cannot make scratch hosts *NoScratchError; then the result is nil. Once
// Verify ran the result is returned with its error, joined with a failure to terminate.
func Drill(ctx context.Context, opts DrillOptions) (*DrillResult, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	set, err := FindSet(ctx, opts.Env, opts.Set, opts.Target)
	if err != nil {
		return nil, err
	}
	rep := &DrillResult{}
	var scratch cloud.Instance
	if opts.Scratch != "" {
		if scratch, err = FindHost(ctx, opts.Env, opts.Scratch); err != nil {
			return nil, err
		}
	} else {
		if scratch, err = CreateScratch(ctx, opts.Env, set.Target); err != nil {
			return nil, err
		}
		rep.ScratchCreated = true
		opts.emit(set.ID, "", "scratch", "scratch host %s (%s) created at %s", scratch.Name, scratch.ID, scratch.PrivateAddress)
	}
	rep.Scratch, rep.ScratchID = scratch.Name, scratch.ID
	res, err := Verify(ctx, VerifyOptions{Env: opts.Env, Set: set.ID, ScratchHost: scratch.Name})
	if rep.ScratchCreated && !opts.KeepScratch {
		if terr := TerminateScratch(ctx, opts.Env, scratch); terr != nil {
			err = errors.Join(err, terr)
		}
	}
	if res == nil {
		return nil, err
	}
	rep.VerifyResult = res
	return rep, err
}
