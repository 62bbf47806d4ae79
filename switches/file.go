package switches

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// DefaultFile is where an app server keeps the last state it applied.
const DefaultFile = "/var/lib/instagram/switches/state.json"

// fileFormat is the version of the state file's layout.
const fileFormat = 1

type stateFile struct {
	Format    int       `json:"format"`
	WrittenAt time.Time `json:"written_at"`
	State
}

// WriteFile stores s at path atomically: a temporary file in the same directory, synced, then
// renamed over path and the directory synced, so a crash leaves the old state or the new one,
// never a torn file.
func WriteFile(path string, s State) error {
	b, err := json.MarshalIndent(stateFile{Format: fileFormat, WrittenAt: time.Now().UTC(), State: s}, "", "  ")
	if err != nil {
		return fmt.Errorf("write switch state: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write switch state: %w", err)
	}
	f, err := os.CreateTemp(dir, ".switches-*.tmp")
	if err != nil {
		return fmt.Errorf("write switch state: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename there is nothing to remove
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write switch state %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write switch state %s: sync: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write switch state %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write switch state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ReadFile loads the state WriteFile stored at path. A missing file is an error that
// satisfies errors.Is(err, os.ErrNotExist).
func ReadFile(path string) (State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("read switch state: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		return State{}, fmt.Errorf("read switch state %s: %w", path, err)
	}
	if f.Format != fileFormat {
		return State{}, fmt.Errorf("read switch state %s: format %d, this build reads %d", path, f.Format, fileFormat)
	}
	if f.Settings == nil {
		f.Settings = map[string]Setting{}
	}
	return f.State, nil
}
