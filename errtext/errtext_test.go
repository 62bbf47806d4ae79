package errtext

import (
	"strings"
	"testing"
)

func TestOneLineKeepsEveryWord(t *testing.T) {
	long := strings.Repeat("word ", 500) + "the-cause-at-the-end"
	got := OneLine("first\n  second\t" + long + "\n")
	if !strings.HasPrefix(got, "first second word ") || !strings.HasSuffix(got, " the-cause-at-the-end") ||
		strings.Contains(got, "\n") || strings.Count(got, "word") != 500 {
		t.Errorf("OneLine dropped or kept the wrong text: %d bytes %q...", len(got), got[:40])
	}
}

func TestCause(t *testing.T) {
	for _, tc := range []struct{ cause, want string }{
		{"", "ctx"},
		{"\n\n", "ctx"},
		{"disk full\n", "ctx: disk full"},
		{"first\ndisk full\n", "ctx:\n    first\n    disk full"},
		{"\npanic: x\n\ngoroutine 1\n", "ctx:\n    panic: x\n\n    goroutine 1"},
	} {
		if got := Cause("ctx", tc.cause); got != tc.want {
			t.Errorf("Cause(%q)\n got %q\nwant %q", tc.cause, got, tc.want)
		}
	}
	long := strings.Repeat("x", 5000)
	if got := Cause("ctx", long); got != "ctx: "+long {
		t.Errorf("a long one-line cause was changed: %d bytes", len(got))
	}
}
