// Package errtext lays out error text for people without ever cutting it. The rule of the
// project: decoration (a command line quoted in a message) may be shortened, the cause (what
// a remote command printed, what a server answered) never, because the part that is cut is
// the part the operator needed.
package errtext

import "strings"

// OneLine folds s onto one line for a table cell or a summary row: every run of white space,
// line breaks included, becomes one space. No word is dropped.
func OneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// Cause appends a cause to its context line: on the same line after ": " when it is one line,
// or on the following lines, each indented by four spaces, when it has several, so a
// multi-line cause (a stack trace, a script's stderr) stays whole and readable. Blank lines at
// either end are dropped; an empty cause leaves context as it is.
func Cause(context, cause string) string {
	cause = strings.Trim(cause, "\r\n")
	if strings.TrimSpace(cause) == "" {
		return context
	}
	if !strings.Contains(cause, "\n") {
		return context + ": " + strings.TrimSpace(cause)
	}
	lines := strings.Split(cause, "\n")
	for i, l := range lines {
		if l = strings.TrimRight(l, " \t\r"); l != "" {
			l = "    " + l
		}
		lines[i] = l
	}
	return context + ":\n" + strings.Join(lines, "\n")
}
