package backup

import (
	"testing"

	"github.com/instactl/instactl/cloud"
)

func TestParseBackupLabel(t *testing.T) {
	label := "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\nCHECKPOINT LOCATION: 0/6000060\n" +
		"BACKUP METHOD: streamed\nBACKUP FROM: standby\nSTART TIME: 2026-12-07 10:00:00 UTC\nLABEL: instactl s1\nSTART TIMELINE: 1\n"
	li, err := ParseBackupLabel(label)
	if err != nil {
		t.Fatal(err)
	}
	if li != (LabelInfo{StartLSN: "0/6000028", StartWALFile: "000000010000000000000006", CheckpointLSN: "0/6000060", Timeline: 1, From: "standby"}) {
		t.Fatalf("parsed %+v", li)
	}
	if _, err := ParseBackupLabel("LABEL: x\n"); err == nil {
		t.Fatal("a label without its locations was accepted")
	}
}

func TestWALStartTag(t *testing.T) {
	w := WALStart{Group: "pg-0", SystemID: "7312345678901234567", Timeline: 2, LSN: "0/5000028"}
	got, err := ParseWALStart(w.String())
	if err != nil || got != w {
		t.Fatalf("round trip of %q: %+v %v", w.String(), got, err)
	}
	if len(w.String()) > 255 || tagValue(w.String()) != w.String() {
		t.Fatalf("%q is no valid tag value", w.String())
	}
	for _, bad := range []string{"", "pg-0 1 x 0/1", "pg-0 1 1"} {
		if _, err := ParseWALStart(bad); err == nil {
			t.Errorf("ParseWALStart(%q) accepted", bad)
		}
	}
	s := Set{Snapshots: []cloud.Snapshot{{Tags: map[string]string{TagWALStart: w.String()}}}}
	if got, ok := WALStartOf(s); !ok || got != w {
		t.Fatalf("WAL start from tags: %+v %v", got, ok)
	}
	if _, ok := WALStartOf(Set{}); ok {
		t.Fatal("a set without a base backup has a WAL start")
	}
}
