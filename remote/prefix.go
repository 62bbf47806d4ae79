package remote

import (
	"bytes"
	"io"
	"sync"
)

// maxPartialLine bounds how much of an unterminated line a PrefixWriter
// holds; a longer line is emitted in pieces.
const maxPartialLine = 64 << 10

// SharedWriter serialises writes from many PrefixWriters into one
// destination (a terminal, a log file).
type SharedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewSharedWriter wraps w for use by many PrefixWriters.
func NewSharedWriter(w io.Writer) *SharedWriter { return &SharedWriter{w: w} }

// Write writes p to the destination in one call, under the lock.
func (s *SharedWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// PrefixWriter prefixes every line with "host | " and writes only complete
// lines, each batch in one write, so the output of many hosts interleaves by
// whole lines. Close flushes a final unterminated line.
type PrefixWriter struct {
	dst    *SharedWriter
	prefix []byte

	mu      sync.Mutex
	partial []byte
}

// NewPrefixWriter returns a writer for host's output into dst.
func NewPrefixWriter(dst *SharedWriter, host string) *PrefixWriter {
	return &PrefixWriter{dst: dst, prefix: []byte(host + " | ")}
}

// Write buffers p and emits every line it completes.
func (w *PrefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	end := bytes.LastIndexByte(w.partial, '\n') + 1
	if end == 0 && len(w.partial) < maxPartialLine {
		return len(p), nil
	}
	if end == 0 { // one over-long line: emit it now, as a line
		w.partial = append(w.partial, '\n')
		end = len(w.partial)
	}
	out := w.prefixed(w.partial[:end])
	w.partial = append(w.partial[:0], w.partial[end:]...)
	if _, err := w.dst.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close writes the last line if it lacked a newline.
func (w *PrefixWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) == 0 {
		return nil
	}
	out := w.prefixed(append(w.partial, '\n'))
	w.partial = w.partial[:0]
	_, err := w.dst.Write(out)
	return err
}

// prefixed returns lines (ending in '\n') with the prefix before each.
func (w *PrefixWriter) prefixed(lines []byte) []byte {
	out := make([]byte, 0, len(lines)+bytes.Count(lines, []byte{'\n'})*len(w.prefix))
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n') + 1
		out = append(out, w.prefix...)
		out = append(out, lines[:i]...)
		lines = lines[i:]
	}
	return out
}
