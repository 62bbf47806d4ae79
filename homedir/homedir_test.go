package homedir

import "testing"

func TestExpand(t *testing.T) {
	t.Setenv("HOME", "/home/ann")
	for in, want := range map[string]string{
		"~":                 "/home/ann",
		"~/":                "/home/ann",
		"~/.ssh/id_ed25519": "/home/ann/.ssh/id_ed25519",
		"/etc/x":            "/etc/x",
		"rel/~/x":           "rel/~/x",
		"~bob/x":            "~bob/x",
		"":                  "",
	} {
		if got := Expand(in); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
	t.Setenv("HOME", "")
	if got := Expand("~/x"); got != "~/x" {
		t.Errorf("without a home: Expand(~/x) = %q, want it unchanged", got)
	}
}
