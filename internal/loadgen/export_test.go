package loadgen

// SetDropHook makes f run on every request the generator drops; tests use it to hold a
// stand-in server's answers until a drop has happened, so drops are certain, not timed.
func SetDropHook(f func()) { testHookDropped = f }
