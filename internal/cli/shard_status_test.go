package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/instactl/instactl/shardmove"
)

// TestShardStatusSaysWhyNothingIsNext: a running move whose lock a session holds (a live
// move, or a killed one whose connection the server has not yet closed) gets no command to
// run next; status says so instead of printing nothing.
func TestShardStatusSaysWhyNothingIsNext(t *testing.T) {
	path := "s.yaml"
	f := NewFactory(&IOStreams{}, &path)
	held := shardmove.MoveStatus{ID: 7, Shard: 3, From: "pg-0", To: "pg-2", State: shardmove.StateRunning, Locked: true}
	var b bytes.Buffer
	if err := shardRenderMoves(&b, f, []shardmove.MoveStatus{held}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "wait: a session holds it (instactl --stack s.yaml shard status 7)") {
		t.Errorf("table of a held move:\n%s", b.String())
	}
	b.Reset()
	if err := shardRenderDetail(&b, ShardMoveDetail{Move: held}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "A session holds this move's lock") {
		t.Errorf("detail of a held move:\n%s", b.String())
	}
	if next := shardNext(f, held); next != nil {
		t.Errorf("a held move has a next command: %v", next)
	}
	crashed := held
	crashed.Locked = false
	if next := shardNext(f, crashed); len(next) != 2 || !strings.Contains(next[0], "shard resume 7") {
		t.Errorf("a crashed move's next commands: %v, want resume then abort", next)
	}
}
