package deploy

import "testing"

func TestMatchHosts(t *testing.T) {
	all := []Host{{Name: "ig-app-0"}, {Name: "ig-app-1"}, {Name: "ig-pg-0"}}
	sel, unknown := MatchHosts(all, "ig", []string{"app-1", "ig-pg-0"})
	if unknown != "" || len(sel) != 2 || sel[0].Name != "ig-app-1" || sel[1].Name != "ig-pg-0" {
		t.Errorf("MatchHosts = %v, %q", sel, unknown)
	}
	if _, unknown := MatchHosts(all, "ig", []string{"app-0", "app-7"}); unknown != "app-7" {
		t.Errorf("unknown = %q, want app-7", unknown)
	}
}

func TestRunCommand(t *testing.T) {
	if got := RunCommand([]string{"df -h | tail -1"}).String(); got != `sh -c 'df -h | tail -1'` {
		t.Errorf("script: %s", got)
	}
	if got := RunCommand([]string{"echo", "it's"}).String(); got != `echo 'it'\''s'` {
		t.Errorf("argv: %s", got)
	}
}
