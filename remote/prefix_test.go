package remote

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestPrefixWriterWholeLines(t *testing.T) {
	var out bytes.Buffer
	w := NewPrefixWriter(NewSharedWriter(&out), "db-1")
	for _, chunk := range []string{"par", "tial\nsecond ", "line\nthird\nfour", "th"} {
		w.Write([]byte(chunk))
	}
	if got, want := out.String(), "db-1 | partial\ndb-1 | second line\ndb-1 | third\n"; got != want {
		t.Errorf("before Close: %q, want %q", got, want)
	}
	w.Close()
	if got := out.String(); !strings.HasSuffix(got, "db-1 | fourth\n") {
		t.Errorf("after Close: %q", got)
	}
}

// countingWriter records every Write so the test can check none holds a
// partial line.
type countingWriter struct {
	mu     sync.Mutex
	writes []string
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

func TestPrefixWriterNoInterleaving(t *testing.T) {
	dst := &countingWriter{}
	shared := NewSharedWriter(dst)
	var wg sync.WaitGroup
	for h := range 8 {
		wg.Go(func() {
			w := NewPrefixWriter(shared, fmt.Sprintf("h%d", h))
			for i := range 200 {
				line := fmt.Sprintf("line %d of host %d\n", i, h)
				w.Write([]byte(line[:5]))
				w.Write([]byte(line[5:]))
			}
			w.Close()
		})
	}
	wg.Wait()
	lines := 0
	for _, wr := range dst.writes {
		if !strings.HasSuffix(wr, "\n") {
			t.Fatalf("partial write %q", wr)
		}
		for _, l := range strings.Split(strings.TrimSuffix(wr, "\n"), "\n") {
			var h, i, h2 int
			if _, err := fmt.Sscanf(l, "h%d | line %d of host %d", &h, &i, &h2); err != nil || h != h2 {
				t.Fatalf("mangled line %q", l)
			}
			lines++
		}
	}
	if lines != 8*200 {
		t.Errorf("%d lines", lines)
	}
}

func TestPrefixWriterLongLine(t *testing.T) {
	var out bytes.Buffer
	w := NewPrefixWriter(NewSharedWriter(&out), "x")
	w.Write(bytes.Repeat([]byte("a"), maxPartialLine+10))
	if out.Len() == 0 {
		t.Error("an over-long line was held back")
	}
}
