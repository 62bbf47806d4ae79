package backup

import "testing"

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
