package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// IOStreams are the command's terminals: data goes to Out, progress and status to ErrOut.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// ErrTTY says ErrOut is a terminal: success chatter and live progress only then.
	ErrTTY bool
	// InTTY says confirmations can be asked.
	InTTY bool
}

// SystemIO returns the process's streams.
func SystemIO() *IOStreams {
	return &IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr,
		ErrTTY: isTerminal(os.Stderr), InTTY: isTerminal(os.Stdin)}
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Statusf writes a progress line to ErrOut.
func (s *IOStreams) Statusf(format string, args ...any) {
	fmt.Fprintf(s.ErrOut, format+"\n", args...)
}

// Output is the view chosen once from --output.
type Output string

// Views.
const (
	OutputText Output = "text"
	OutputJSON Output = "json"
)

// render writes v as indented JSON, or calls text for the human view.
func render(io *IOStreams, out Output, v any, text func(w io.Writer) error) error {
	if out == OutputJSON {
		enc := json.NewEncoder(io.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return text(io.Out)
}

// humanBytes renders a byte count in binary units ("18.5 MiB"), the one way every view shows sizes.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
