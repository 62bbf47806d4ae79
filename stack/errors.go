package stack

import (
	"fmt"
	"sort"
	"strings"
)

// Pos is a place in the stack file.
type Pos struct {
	Line   int `json:"line"`
	Column int `json:"column"`
}

// Error is one problem in a stack file, with where it is and how to fix it.
type Error struct {
	File string `json:"file"`
	Pos
	// Path is the key path, e.g. "roles.app.count".
	Path string `json:"path"`
	Msg  string `json:"message"`
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file, reported at once rather than one per run.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Column < es[j].Column
	})
	return es
}

// locate is where keyPath was written, or else its nearest written parent (a default that
// conflicts points at the section it belongs to), or else the top of the file (a missing
// top-level key), so every error names a line and column.
func locate(pos map[string]Pos, keyPath string) Pos {
	for probe := keyPath; ; {
		if p, ok := pos[probe]; ok && p.Line > 0 {
			return p
		}
		i := strings.LastIndexAny(probe, ".[")
		if i < 0 {
			return Pos{Line: 1, Column: 1}
		}
		probe = probe[:i]
	}
}

// suggest returns the candidate closest to word if it is close enough to be a likely typo.
func suggest(word string, candidates []string) string {
	best, bestDist := "", len(word)/2+2
	for _, c := range candidates {
		if d := levenshtein(strings.ToLower(word), c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
