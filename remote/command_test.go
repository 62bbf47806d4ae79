package remote

import (
	"os/exec"
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"ls", "-l", "/srv/app"}, "ls -l /srv/app"},
		{[]string{""}, "''"},
		{[]string{"a b"}, "'a b'"},
		{[]string{"it's"}, `'it'\''s'`},
		{[]string{"'"}, `''\'''`},
		{[]string{"$HOME", "`id`", "a;b", "a&&b", "*", "~", "x\ny"}, "'$HOME' '`id`' 'a;b' 'a&&b' '*' '~' 'x\ny'"},
		{[]string{"--opt=val", "k=v", "_x1=2", "1=2", "user@host:22", "a,b%c+d"}, "--opt=val 'k=v' '_x1=2' 1=2 user@host:22 a,b%c+d"},
		{[]string{"ünï"}, "'ünï'"},
	}
	for _, tt := range tests {
		if got := Quote(tt.args...); got != tt.want {
			t.Errorf("Quote(%q) = %s, want %s", tt.args, got, tt.want)
		}
	}
}

// TestQuoteRoundTrip checks with a real shell that quoted words reach the
// command unchanged.
func TestQuoteRoundTrip(t *testing.T) {
	args := []string{"plain", "", "a b", "it's", `"dq"`, "$HOME", "`id`", "\\", "a\nb", "k=v", "*", "!x", "'''", "#c", "-n"}
	out, err := exec.Command("/bin/sh", "-c", Quote(append([]string{"printf", "[%s]"}, args...)...)).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, a := range args {
		want.WriteString("[" + a + "]")
	}
	if string(out) != want.String() {
		t.Errorf("got %q\nwant %q", out, want.String())
	}
}

func TestCommandStrings(t *testing.T) {
	tests := []struct {
		cmd  Command
		want string
	}{
		{Cmd("systemctl", "restart", "instagram-app"), "systemctl restart instagram-app"},
		{Script("ln -sfn /srv/app/releases/v2 /srv/app/current && echo ok"), "sh -c 'ln -sfn /srv/app/releases/v2 /srv/app/current && echo ok'"},
		{Script("echo 'hi'"), `sh -c 'echo '\''hi'\'''`},
	}
	for _, tt := range tests {
		if got := tt.cmd.String(); got != tt.want {
			t.Errorf("got  %s\nwant %s", got, tt.want)
		}
	}
}

func TestUploadCommand(t *testing.T) {
	got := UploadCommand("/srv/app/releases/v2/app", 25779081, 0o755).String()
	want := `sh -c 'set -e
dir=/srv/app/releases/v2 dst=/srv/app/releases/v2/app base=app
[ -d "$dir" ] || mkdir -p -- "$dir"
tmp=$(mktemp -- "$dir/.$base.instactl.XXXXXX")
trap '\''rm -f -- "$tmp"'\'' EXIT
if ! dd of="$tmp" bs=256K count=25779081 iflag=count_bytes,fullblock status=none; then
  [ ! -s "$tmp" ] || exit 1
  head -c 25779081 > "$tmp"
fi
IFS= read -r want
if command -v openssl >/dev/null 2>&1; then
  got=$(openssl dgst -sha256 -r < "$tmp")
else
  got=$(sha256sum < "$tmp")
fi
got=${got%% *}
if [ "$got" != "$want" ]; then
  size=$(wc -c < "$tmp")
  echo "upload of $dst: received $size bytes with sha256 $got, expected 25779081 bytes with sha256 $want" >&2
  exit 3
fi
chmod 0755 "$tmp"
mv -f -- "$tmp" "$dst"
trap - EXIT
echo "$got"'`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if got := UploadCommand("rel dir/it's", 1, 0o600).String(); !strings.Contains(got, `dir='\''rel dir'\'' dst='\''rel dir/it'\''\'\'''\''s'\'' base='\''it'\''\'\'''\''s'\''`) {
		t.Errorf("quoting of odd paths:\n%s", got)
	}
}
