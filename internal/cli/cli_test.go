package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run executes one command line in-process and returns stdout, stderr and the exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	io := &IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	code := Run(context.Background(), io, args)
	return out.String(), errOut.String(), code
}

func TestInitThenValidate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "instagram.yaml")
	if _, stderr, code := run(t, "init", "--stack", path); code != 0 {
		t.Fatalf("init exit %d: %s", code, stderr)
	}
	if _, stderr, code := run(t, "init", "--stack", path); code != ExitUsage || !strings.Contains(stderr, "--force") {
		t.Fatalf("second init: exit %d, %q; want 2 and a hint about --force", code, stderr)
	}
	stdout, _, code := run(t, "validate", "--stack", path)
	if code != 0 || !strings.Contains(stdout, "is valid: 9 hosts") {
		t.Fatalf("validate: exit %d, %q", code, stdout)
	}
}

func TestValidateInvalid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	data := "name: X\nroles:\n  app:\n    cout: 1\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, _, code := run(t, "validate", "--stack", path)
	if code != ExitUsage {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, want := range []string{path + ":1:7: name:", path + `:4:5: roles.app.cout: unknown key "cout"; did you mean "count"?`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("missing %q in:\n%s", want, stdout)
		}
	}
	after, _ := os.ReadFile(path)
	if string(after) != data {
		t.Fatal("validate changed the file")
	}
	stdout, _, code = run(t, "validate", "--stack", path, "-o", "json")
	var res ValidateResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || code != ExitUsage || res.Valid || len(res.Errors) != 3 {
		t.Fatalf("json: exit %d, %+v, %v\n%s", code, res, err, stdout)
	}
}

func TestValidateMissingFile(t *testing.T) {
	_, stderr, code := run(t, "validate", "--stack", filepath.Join(t.TempDir(), "nope.yaml"))
	if code != ExitUsage || !strings.Contains(stderr, "instactl init") {
		t.Fatalf("exit %d, %q", code, stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"validate", "--bogus"}, {"version", "extra"}, {"version", "-o", "yaml"}, {"nosuchcommand"}} {
		if _, stderr, code := run(t, args...); code != ExitUsage && !(args[0] == "nosuchcommand" && code == ExitError) {
			t.Errorf("%v: exit %d (%s), want 2", args, code, stderr)
		}
	}
}

func TestVersionAndHelpTopics(t *testing.T) {
	stdout, _, code := run(t, "version", "-o", "json")
	var v VersionInfo
	if err := json.Unmarshal([]byte(stdout), &v); err != nil || code != 0 || v.Go == "" {
		t.Fatalf("version json: %v %d %q", err, code, stdout)
	}
	stdout, _, _ = run(t, "help", "exit-codes")
	for _, want := range []string{"0  ok", "2  usage", "3  skipped as unsafe", "4  locked", "5  partial"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("exit-codes help lacks %q", want)
		}
	}
	stdout, _, _ = run(t, "completion", "bash")
	if !strings.Contains(stdout, "instactl") {
		t.Error("no bash completion")
	}
}

func TestInitOptionsCaptured(t *testing.T) {
	var got *InitOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdInit(f, func(o *InitOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--force"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got == nil || !got.Force || got.Path != "instagram.yaml" {
		t.Fatalf("options: %+v", got)
	}
}
