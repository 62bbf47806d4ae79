package templates

import "strings"

// shellSafe reports whether s needs no quoting in a POSIX shell.
func shellSafe(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("@%+=:,./_-", r):
		default:
			return false
		}
	}
	return true
}

// shellQuote quotes s for bash: as is when safe, else in single quotes.
func shellQuote(s string) string {
	if shellSafe(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellWords quotes each argument and joins them with spaces.
func shellWords(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// systemdExec renders an argument vector for ExecStart=: systemd splits on spaces, honours
// double quotes and backslashes, and expands % specifiers and $ variables.
func systemdExec(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		a = strings.ReplaceAll(a, "%", "%%")
		a = strings.ReplaceAll(a, "$", "$$")
		if a != "" && !strings.ContainsAny(a, " \t\"'\\;") {
			q[i] = a
			continue
		}
		a = strings.ReplaceAll(a, `\`, `\\`)
		a = strings.ReplaceAll(a, `"`, `\"`)
		q[i] = `"` + a + `"`
	}
	return strings.Join(q, " ")
}

// pgQuote quotes a value for postgresql.conf.
func pgQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// bouncerQuote quotes a field of PgBouncer's auth_file.
func bouncerQuote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// envLine renders KEY='value' for a file that bash sources and systemd reads as an
// EnvironmentFile (both agree on single quotes; Validate rejects values with ' or \).
func envLine(k, v string) string { return k + "='" + v + "'" }
