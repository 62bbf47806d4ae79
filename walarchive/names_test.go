package walarchive

import "testing"

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind string
		tli  uint32
		seg  uint64
	}{
		{"000000010000000000000003", KindSegment, 1, 3},
		{"0000000200000001000000FF", KindSegment, 2, 0x1FF},
		{"00000002.history", KindHistory, 2, 0},
		{"000000010000000000000002.00000028.backup", KindBackup, 1, 2},
		{"000000010000000000000005.partial", KindPartial, 1, 5},
	} {
		f, err := ParseName(tc.name)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if f.Kind != tc.kind || f.Timeline != tc.tli || f.SegNo != tc.seg {
			t.Errorf("%s: got %+v", tc.name, f)
		}
		if f.Kind == KindSegment && SegmentName(f.Timeline, f.SegNo) != tc.name {
			t.Errorf("SegmentName round trip of %s: %s", tc.name, SegmentName(f.Timeline, f.SegNo))
		}
	}
	for _, bad := range []string{"", "RECOVERYXLOG", "00000001000000000000000", "000000010000000000000100", "../etc/passwd", "0000000a0000000000000001"} {
		if _, err := ParseName(bad); err == nil {
			t.Errorf("ParseName(%q) accepted", bad)
		}
	}
}

func TestLSN(t *testing.T) {
	l, err := ParseLSN("16/B374D848")
	if err != nil || l.String() != "16/B374D848" {
		t.Fatalf("ParseLSN: %v %v", l, err)
	}
	if got := SegmentName(1, l.SegNo()); got != "0000000100000016000000B3" {
		t.Errorf("segment of 16/B374D848 = %s", got)
	}
	for _, bad := range []string{"", "1", "x/1", "1/"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
}

func TestHistoryDescends(t *testing.T) {
	h, err := ParseHistory("1\t0/3000000\tno recovery target specified\n\n2\t0/5000A28\tbefore 2026-12-07 10:00:00+00\n")
	if err != nil || len(h) != 2 || h[1] != (Switch{Parent: 2, End: 0x5000A28}) {
		t.Fatalf("parse: %+v %v", h, err)
	}
	for _, tc := range []struct {
		from uint32
		at   LSN
		want bool
	}{{1, 0x2000000, true}, {1, 0x3000000, true}, {1, 0x3000001, false}, {2, 0x5000000, true}, {4, 0x1, false}} {
		if got := Descends(h, tc.from, tc.at); got != tc.want {
			t.Errorf("descends from %d at %s: %v, want %v", tc.from, tc.at, got, tc.want)
		}
	}
	if _, err := ParseHistory("x 0/1 y"); err == nil {
		t.Error("bad history accepted")
	}
}
