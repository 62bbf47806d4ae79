package backup

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/instactl/instactl/cloud"
)

// PITRDrillOptions configures DrillPITR.
type PITRDrillOptions struct {
	Env
	// Node is the Postgres group (pg-0) or one of its hosts.
	Node string
	// Ago places the target: now minus Ago (default 10m).
	Ago time.Duration
	// Scratch is an existing host to restore onto; empty creates a temporary one (sandbox).
	Scratch string
	// Archiver and Prefetch are PITROptions'.
	Archiver string
	Prefetch int
	// SkipAmcheck skips pg_amcheck on the copy.
	SkipAmcheck bool
}

// PITRDrillResult is a point-in-time drill's outcome: the measured recovery time, split, and
// how close to its target the copy got.
type PITRDrillResult struct {
	*PITRResult
	Scratch        string `json:"scratch"`
	ScratchCreated bool   `json:"scratch_created"`
	// RTO is the whole restore, target known to the copy open read-write.
	RTO time.Duration `json:"rto_ns"`
	// ReplayMBps is the WAL replayed per second of replay (fetch included).
	ReplayMBps float64 `json:"replay_mb_per_s"`
	// Gap is the target minus the last commit reached: no commit in between was archived.
	Gap     time.Duration `json:"gap_ns"`
	Amcheck bool          `json:"amcheck"`
}

// DrillPITR restores Node to now minus Ago onto a scratch host, checks the copy (queries
// answer, pg_amcheck), tears it down and reports the measured RTO (volumes, replay MB/s) and
// the gap between the target and the last commit reached.
func DrillPITR(ctx context.Context, o PITRDrillOptions) (*PITRDrillResult, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if o.Ago <= 0 {
		o.Ago = 10 * time.Minute
	}
	target := o.now().Add(-o.Ago)
	rep := &PITRDrillResult{}
	var scratch cloud.Instance
	var err error
	if o.Scratch != "" {
		if scratch, err = FindHost(ctx, o.Env, o.Scratch); err != nil {
			return nil, err
		}
	} else {
		if scratch, err = CreateScratch(ctx, o.Env, TargetPostgres); err != nil {
			return nil, err
		}
		rep.ScratchCreated = true
		defer func() {
			if terr := TerminateScratch(ctx, o.Env, scratch); terr != nil {
				o.emit("", scratch.Name, "scratch", "%v", terr)
			}
		}()
	}
	rep.Scratch = scratch.Name
	res, err := RestoreToTime(ctx, PITROptions{Env: o.Env, Node: o.Node, To: scratch.ID, Time: target, Archiver: o.Archiver, Prefetch: o.Prefetch})
	rep.PITRResult = res
	if res != nil && res.Set != "" {
		if err == nil {
			rep.RTO = res.Duration
			if res.Replay > 0 {
				rep.ReplayMBps = float64(res.ReplayedBytes) / (1 << 20) / res.Replay.Seconds()
			}
			if !res.ReachedCommit.IsZero() {
				rep.Gap = target.Sub(res.ReachedCommit)
			}
			if !o.SkipAmcheck {
				err = o.amcheck(ctx, scratch, &res.Restored)
				rep.Amcheck = err == nil
			}
		}
		if len(res.VolumeIDs) > 0 {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			if terr := Teardown(cctx, o.Env, &res.Restored); terr != nil {
				err = errors.Join(err, terr)
			}
			cancel()
		}
	}
	if err == nil {
		o.emit(res.Set, scratch.Name, "drill", "recovered %s to %s in %s (volumes %s, replay %s at %.1f MB/s); last commit %s before the target",
			res.Group, res.RecoveryTarget, rep.RTO.Round(time.Millisecond), res.Volumes.Round(time.Millisecond), res.Replay.Round(time.Millisecond), rep.ReplayMBps, rep.Gap.Round(time.Millisecond))
	}
	return rep, err
}

func (o *PITRDrillOptions) amcheck(ctx context.Context, in cloud.Instance, r *Restored) error {
	c, err := o.dial(ctx, in)
	if err != nil {
		return err
	}
	defer c.Close()
	am := o.cmds().asPostgres(o.pgBin()+"/pg_amcheck", "-h", pgSocketDir, "-p", strconv.Itoa(r.Port), "-U", "postgres",
		"--all", "--install-missing")
	if _, err := runCmd(ctx, c, am); err != nil {
		return fmt.Errorf("point-in-time drill of %s: pg_amcheck: %w", r.Set, err)
	}
	return nil
}
