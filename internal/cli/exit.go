package cli

import (
	"errors"
	"fmt"

	"github.com/instactl/instactl/stack"
)

// Exit codes, documented in `instactl help exit-codes`. Scripts and cron depend on them.
const (
	ExitOK      = 0 // everything asked for was done
	ExitError   = 1 // an operation failed
	ExitUsage   = 2 // bad flags, arguments or stack file; nothing was changed
	ExitUnsafe  = 3 // skipped because going on was unsafe (e.g. replica lagging); nothing was changed
	ExitLocked  = 4 // someone else holds the lock
	ExitPartial = 5 // some hosts or items succeeded and some failed
	// ExitChanges is what --detailed-exitcode returns when a plan has pending changes.
	ExitChanges = 2
)

const exitCodesHelp = `instactl exit codes, stable for scripts and cron:

  0  ok: everything asked for was done (also "No changes.")
  1  error: an operation failed; the message says what and what to run next
  2  usage: bad flags, arguments or stack file; nothing was changed
     (with --detailed-exitcode, plan exits 2 when changes are pending)
  3  skipped as unsafe: e.g. a backup skipped because the replica lags; nothing was changed
  4  locked: another deploy, backup or move holds the lock; the message names the holder
  5  partial success: some hosts or items succeeded and some failed; see the summary
  6  incomplete: a switchover or failover stopped half way; run it again with --resume
     (finish) or --abort (undo if no promotion was sent)
`

// CodedError carries an exit code through cobra's error return.
type CodedError struct {
	Code int
	Err  error
}

func (e *CodedError) Error() string { return e.Err.Error() }
func (e *CodedError) Unwrap() error { return e.Err }

// withCode wraps err so the process exits with code.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &CodedError{Code: code, Err: err}
}

// usageErrorf is a bad-input error (exit 2).
func usageErrorf(format string, args ...any) error {
	return withCode(ExitUsage, fmt.Errorf(format, args...))
}

// silentExit ends the command with code without printing anything more.
type silentExit struct{ code int }

func (s silentExit) Error() string { return fmt.Sprintf("exit %d", s.code) }

// exitCode decides the process exit code for an error returned by a command.
func exitCode(err error) int {
	var ee *CodedError
	var se silentExit
	var se2 stack.Errors
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &se):
		return se.code
	case errors.As(err, &ee):
		return ee.Code
	case errors.As(err, &se2):
		return ExitUsage
	}
	return ExitError
}
