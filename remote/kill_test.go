package remote

import (
	"bytes"
	"testing"
)

func TestPIDCatcher(t *testing.T) {
	var out bytes.Buffer
	p := &pidCatcher{w: &out}
	for _, chunk := range []string{"bashrc noise\ninstactl-p", "id:4242\nreal ", "stderr\n"} {
		p.Write([]byte(chunk))
	}
	if p.remotePID() != 4242 || out.String() != "bashrc noise\nreal stderr\n" {
		t.Errorf("pid %d, passed %q", p.remotePID(), out.String())
	}
}

func TestWireCommand(t *testing.T) {
	got := wireCommand(Cmd("echo", "a b"))
	if want := `printf 'instactl-pid:%s\n' "$$" >&2; echo 'a b'`; got != want {
		t.Errorf("got %s want %s", got, want)
	}
}
