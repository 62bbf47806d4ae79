// Package switches is the one definition of the degradation switches (kill switches): the
// switches the bundled app knows, their state in the control database with the audit of every
// change, the copy each app server keeps on its disk, the app server's follower of that state
// (Board) and the wait for every app server to acknowledge a change (Await).
//
// The flow of one change: Set writes the switch, an audit row and a new global version in one
// transaction and NOTIFYs NotifyChannel with that version. Every app server's Board LISTENs on
// the channel (and re-reads every few seconds as a backstop for a lost notification or
// connection), applies any state newer than the one it holds, writes it to its state file
// (atomically, so a restart while the control database is unreachable starts from the last
// state it knew) and reports the version it applied on GET Path. Await polls that endpoint on
// every app server until each reports the new version.
//
// Expiry: a switch set with a duration keeps its row, and every reader evaluates it against
// its own clock at the moment it asks (State.On): an app server stops applying the setting the
// instant it expires, without a write or a notification; `instactl switch list` shows it as
// expired. Nothing is written when a switch expires, so the audit shows the set with its
// expiry, and the next Set records the effective value (the default) as "before".
package switches
