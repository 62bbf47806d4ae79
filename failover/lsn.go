package failover

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL WAL position; it prints and parses as "16/B374D848".
type LSN uint64

// ParseLSN parses the "X/Y" text form of an LSN.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("LSN %q: want X/Y in hex", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

// String is the "X/Y" form PostgreSQL prints.
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// MarshalText writes the "X/Y" form, so journals and reports read like PostgreSQL's output.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads the "X/Y" form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	*l = v
	return err
}

// ControlData is what failover reads from pg_controldata.
type ControlData struct {
	// State is "Database cluster state": "in production", "shut down", "shut down in
	// recovery", "in archive recovery", "in crash recovery"...
	State string `json:"state"`
	// Checkpoint is "Latest checkpoint location": after a clean shutdown, the shutdown
	// checkpoint, the last record the server wrote.
	Checkpoint LSN `json:"checkpoint"`
	// Redo is "Latest checkpoint's REDO location".
	Redo LSN `json:"redo"`
	// Timeline is "Latest checkpoint's TimeLineID".
	Timeline int `json:"timeline"`
	// MinRecoveryEnd and MinRecoveryTimeline are "Minimum recovery ending location" and its
	// timeline (zero on a primary).
	MinRecoveryEnd      LSN `json:"min_recovery_end"`
	MinRecoveryTimeline int `json:"min_recovery_timeline"`
	// DataChecksums and WALLogHints say whether pg_rewind can work on this cluster.
	DataChecksums bool `json:"data_checksums"`
	WALLogHints   bool `json:"wal_log_hints"`
}

// CleanShutdown reports whether the server was shut down cleanly, so Checkpoint is its last
// WAL record.
func (c ControlData) CleanShutdown() bool {
	return c.State == "shut down" || c.State == "shut down in recovery"
}

// ParseControlData reads the output of pg_controldata (run with LC_ALL=C).
func ParseControlData(out string) (ControlData, error) {
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	var c ControlData
	var err error
	need := func(key string) string {
		v, ok := fields[key]
		if !ok && err == nil {
			err = fmt.Errorf("pg_controldata: no %q line in its output:\n%s", key, out)
		}
		return v
	}
	lsn := func(key string) LSN {
		v := need(key)
		if err != nil {
			return 0
		}
		l, e := ParseLSN(v)
		if e != nil {
			err = fmt.Errorf("pg_controldata: %s: %w", key, e)
		}
		return l
	}
	num := func(key string) int {
		v := need(key)
		if err != nil {
			return 0
		}
		n, e := strconv.Atoi(v)
		if e != nil {
			err = fmt.Errorf("pg_controldata: %s: %w", key, e)
		}
		return n
	}
	c.State = need("Database cluster state")
	c.Checkpoint = lsn("Latest checkpoint location")
	c.Redo = lsn("Latest checkpoint's REDO location")
	c.Timeline = num("Latest checkpoint's TimeLineID")
	c.MinRecoveryEnd = lsn("Minimum recovery ending location")
	c.MinRecoveryTimeline = num("Min recovery ending loc's timeline")
	c.DataChecksums = need("Data page checksum version") != "0"
	c.WALLogHints = need("wal_log_hints setting") == "on"
	if err != nil {
		return ControlData{}, err
	}
	return c, nil
}
