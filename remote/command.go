package remote

import "strings"

// Command is a remote command as an argument vector. It is data: build it in
// pure functions and unit-test the exact string that [Command.String]
// produces, which is what sshd hands to the remote login shell.
type Command []string

// Cmd builds a Command from its arguments; Cmd("ls", "-l", dir).
func Cmd(args ...string) Command { return Command(args) }

// Script is a shell script run with `sh -c`, for the steps that need pipes,
// redirections or `&&`. The script text itself is passed as one quoted
// argument, so it reaches sh byte for byte.
func Script(script string) Command { return Command{"sh", "-c", script} }

// String returns the command line sent to the host: every argument quoted
// with [Quote] and joined by spaces.
func (c Command) String() string { return Quote(c...) }

// Quote quotes each argument for a POSIX shell and joins them with spaces.
// Arguments made only of characters that are never special to the shell are
// left bare; any other argument is wrapped in single quotes, and an
// embedded single quote is closed, escaped and reopened. For example:
//
//	Quote("echo", "it's", "")  ==  `echo 'it'\''s' ''`
func Quote(args ...string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		quoteTo(&b, a)
	}
	return b.String()
}

func quoteTo(b *strings.Builder, s string) {
	if s == "" {
		b.WriteString("''")
		return
	}
	if isShellSafe(s) {
		b.WriteString(s)
		return
	}
	b.WriteByte('\'')
	b.WriteString(strings.ReplaceAll(s, "'", `'\''`))
	b.WriteByte('\'')
}

// isShellSafe reports whether s needs no quoting: letters, digits and
// @%+=:,./_- only. '=' is safe only past the first character, so a bare
// argument never reads as a variable assignment in command position.
func isShellSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("@%+:,./_-", c) >= 0:
		case c == '=' && i > 0 && !isAssignmentPrefix(s[:i]):
		default:
			return false
		}
	}
	return true
}

// isAssignmentPrefix reports whether name is a valid shell variable name, in
// which case name=... would be parsed as an assignment, not a word.
func isAssignmentPrefix(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9' {
			continue
		}
		return false
	}
	return true
}
