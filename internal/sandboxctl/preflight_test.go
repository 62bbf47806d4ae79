package sandboxctl

import (
	"strings"
	"testing"
)

func TestPreflightNamesMissingPackages(t *testing.T) {
	saved := requirements
	defer func() { requirements = saved }()
	requirements = append([]requirement{
		{"/nonexistent/sbin/frobd", "frob-server", "frobbing"},
		{"no-such-tool-xyz", "frob-tools", "frob checks"},
	}, saved...)
	err := Preflight()
	if err == nil {
		t.Fatal("preflight passed with missing programs")
	}
	for _, want := range []string{"frob-server (frobbing)", "frob-tools (frob checks)", "apt-get update && apt-get install -y frob-server frob-tools"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
