package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/instactl/instactl/backup"
)

func (o *BackupVerifyOptions) checkArchive() error {
	if o.Set != "" || o.Target != "" || o.Scratch != "" || o.KeepScratch {
		return usageErrorf("--archive checks the WAL archive of every node (or --node); it takes no SET, --target, --scratch or --keep-scratch")
	}
	return nil
}

func backupVerifyArchiveRun(ctx context.Context, f *Factory, out Output, o *BackupVerifyOptions) error {
	d, err := backupSetup(ctx, f, f.IO.ErrTTY)
	if err != nil {
		return err
	}
	defer d.close()
	checks, verr := backup.VerifyArchive(ctx, backup.VerifyArchiveOptions{Env: d.env, Group: o.Node})
	if checks == nil {
		return verr
	}
	if rerr := render(f.IO, out, checks, func(w io.Writer) error {
		for _, ac := range checks {
			c := ac.Continuity
			upTo := "the newest archived segment"
			if ac.CurrentLSN != "" {
				upTo = "the primary's current LSN " + ac.CurrentLSN
			}
			switch {
			case ac.OK:
				fmt.Fprintf(w, "%s: archive unbroken: %d segments %s..%s (timelines %v), from set %s (start %s) to %s\n",
					ac.Group, c.Segments, c.From, c.To, c.Path, ac.Set, ac.Start, upTo)
			case c != nil:
				fmt.Fprintf(w, "%s: archive BROKEN: %d of %d segments missing between %s and %s: %s\n",
					ac.Group, len(c.Missing), c.Segments, c.From, c.To, strings.Join(c.Missing, ", "))
			default:
				fmt.Fprintf(w, "%s: archive not checked: %s\n", ac.Group, ac.Error)
			}
		}
		return nil
	}); rerr != nil {
		return rerr
	}
	return verr
}
