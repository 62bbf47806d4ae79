package walarchive

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// SegmentSize is the WAL segment size of the stack's clusters (initdb's default, 16 MiB).
const SegmentSize = 16 << 20

// segmentsPerLogID is how many segments one "log id" (the middle 8 hex digits) holds.
const segmentsPerLogID = 0x100000000 / SegmentSize

// Kinds of archived file.
const (
	KindSegment = "segment"
	KindHistory = "history"
	// KindBackup is a backup history file (000000010000000000000002.00000028.backup).
	KindBackup = "backup"
	// KindPartial is the last, partial segment of an old timeline a promoted standby archives.
	KindPartial = "partial"
)

var (
	segmentRe = regexp.MustCompile(`^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$`)
	historyRe = regexp.MustCompile(`^([0-9A-F]{8})\.history$`)
	backupRe  = regexp.MustCompile(`^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.[0-9A-F]{8}\.backup$`)
	partialRe = regexp.MustCompile(`^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.partial$`)
)

// File is one archived file, named as Postgres names it.
type File struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Timeline is the file's timeline; SegNo the segment number (LSN / SegmentSize), zero for
	// history files.
	Timeline uint32 `json:"timeline"`
	SegNo    uint64 `json:"segno"`
	Size     int64  `json:"size,omitempty"`
}

// ParseName parses an archived file's name. Anything else is an error naming the forms.
func ParseName(name string) (File, error) {
	if m := historyRe.FindStringSubmatch(name); m != nil {
		tli, _ := strconv.ParseUint(m[1], 16, 32)
		return File{Name: name, Kind: KindHistory, Timeline: uint32(tli)}, nil
	}
	kind := ""
	var m []string
	switch {
	case segmentRe.MatchString(name):
		kind, m = KindSegment, segmentRe.FindStringSubmatch(name)
	case backupRe.MatchString(name):
		kind, m = KindBackup, backupRe.FindStringSubmatch(name)
	case partialRe.MatchString(name):
		kind, m = KindPartial, partialRe.FindStringSubmatch(name)
	default:
		return File{}, fmt.Errorf("%q is not a WAL file name (want a segment such as 000000010000000000000003, a timeline history file such as 00000002.history, a .backup or a .partial file)", name)
	}
	tli, _ := strconv.ParseUint(m[1], 16, 32)
	log, _ := strconv.ParseUint(m[2], 16, 32)
	seg, _ := strconv.ParseUint(m[3], 16, 32)
	if seg >= segmentsPerLogID {
		return File{}, fmt.Errorf("%q: segment %X is beyond the %d segments of a log id with 16 MiB segments", name, seg, segmentsPerLogID)
	}
	return File{Name: name, Kind: kind, Timeline: uint32(tli), SegNo: log*segmentsPerLogID + seg}, nil
}

// SegmentName is the name of segment segno of timeline tli.
func SegmentName(tli uint32, segno uint64) string {
	return fmt.Sprintf("%08X%08X%08X", tli, segno/segmentsPerLogID, segno%segmentsPerLogID)
}

// HistoryName is the name of timeline tli's history file.
func HistoryName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// LSN is a WAL position.
type LSN uint64

// ParseLSN parses Postgres' text form of an LSN ("16/B374D848").
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("invalid LSN %q (want such as 0/3000028)", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid LSN %q (want such as 0/3000028)", s)
	}
	return LSN(h<<32 | l), nil
}

// String is Postgres' text form.
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// SegNo is the number of the segment holding l.
func (l LSN) SegNo() uint64 { return uint64(l) / SegmentSize }
