// Package remote is instactl's SSH layer: it opens verified connections to
// hosts, runs commands on them, uploads files, and fans work out over a fleet.
//
// Everything goes through golang.org/x/crypto/ssh. Host keys are always
// checked against a known_hosts file; an unknown key is refused with a
// [HostKeyError] that names the exact fix, and a changed key is refused
// always. Connections are opened by a [SSHDialer] that limits concurrent
// handshakes and adapts to sshd's MaxStartups refusals (retry with jittered
// backoff, multiplicative decrease of the dial concurrency), so a fleet of
// hundreds of hosts connects without spurious failures. A [Pool] keeps one
// connection per host and reuses it for every step of a job; [Pool.FanOut]
// runs a function on many hosts in parallel and reports per host.
//
// Remote commands are data: a [Command] is an argv that is quoted with
// [Quote] into the single string sshd hands to the login shell, so the
// exact command a step runs can be unit-tested without a host.
//
// A non-zero exit status is a [Result], not an error: [Client.Run] returns a
// non-nil error only when the command could not be run or its outcome is
// unknown (transport failure, cancellation). Use [Result.Err] to turn a
// non-zero status into an [*ExitError] when that is what the caller wants.
package remote
