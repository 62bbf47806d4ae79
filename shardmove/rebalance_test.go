package shardmove

import (
	"strings"
	"testing"
)

func TestRebalance(t *testing.T) {
	uniform := func(node string, first, n int, bytes int64, rate float64) []ShardLoad {
		var out []ShardLoad
		for i := 0; i < n; i++ {
			out = append(out, ShardLoad{Shard: first + i, Node: node, Bytes: bytes, WritesPerSec: rate})
		}
		return out
	}
	cat := func(parts ...[]ShardLoad) []ShardLoad {
		var out []ShardLoad
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name      string
		nodes     []string
		shards    []ShardLoad
		opt       RebalanceOptions
		wantMoves int // -1: do not check
		reached   bool
		wantErr   string
	}{
		{name: "balanced already", nodes: []string{"a", "b"},
			shards: cat(uniform("a", 0, 8, 100, 10), uniform("b", 8, 8, 100, 10)), wantMoves: 0, reached: true},
		{name: "all on one of two", nodes: []string{"a", "b"},
			shards: uniform("a", 0, 16, 100, 10), wantMoves: -1, reached: true},
		{name: "new empty node", nodes: []string{"a", "b", "c"},
			shards: cat(uniform("a", 0, 30, 100, 5), uniform("b", 30, 30, 100, 5)), wantMoves: -1, reached: true},
		{name: "hot shard by write rate", nodes: []string{"a", "b"},
			shards: cat(uniform("a", 0, 10, 100, 1), []ShardLoad{{Shard: 10, Node: "a", Bytes: 100, WritesPerSec: 40}},
				uniform("b", 11, 10, 100, 1)), wantMoves: -1, reached: true},
		{name: "size only", nodes: []string{"a", "b"}, opt: RebalanceOptions{SizeWeight: 1},
			shards: cat(uniform("a", 0, 4, 1000, 0), uniform("b", 4, 4, 10, 0)), wantMoves: -1, reached: true},
		{name: "one giant shard cannot be split", nodes: []string{"a", "b"},
			shards:    []ShardLoad{{Shard: 0, Node: "a", Bytes: 1000, WritesPerSec: 100}, {Shard: 1, Node: "b", Bytes: 1, WritesPerSec: 1}},
			wantMoves: 0, reached: false},
		{name: "no shards", nodes: []string{"a", "b"}, wantMoves: 0, reached: true},
		{name: "unknown node", nodes: []string{"a"}, shards: uniform("x", 0, 1, 1, 1), wantErr: "unknown node"},
		{name: "bad weight", nodes: []string{"a"}, opt: RebalanceOptions{SizeWeight: 2}, wantErr: "size weight"},
		{name: "max moves bounds the plan", nodes: []string{"a", "b"}, opt: RebalanceOptions{MaxMoves: 2},
			shards: uniform("a", 0, 16, 100, 10), wantMoves: 2, reached: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := Rebalance(tc.nodes, tc.shards, tc.opt)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantMoves >= 0 && len(plan.Moves) != tc.wantMoves {
				t.Errorf("moves = %d, want %d: %+v", len(plan.Moves), tc.wantMoves, plan.Moves)
			}
			if plan.Reached != tc.reached {
				t.Errorf("reached = %v (after %.3f), want %v", plan.Reached, plan.After, tc.reached)
			}
			if plan.Reached && plan.After > 1.15+1e-9 {
				t.Errorf("after = %.3f > 1.15", plan.After)
			}
			// Replaying the moves gives the reported ratio, and no shard moves twice.
			where := map[int]string{}
			for _, s := range tc.shards {
				where[s.Shard] = s.Node
			}
			seen := map[int]bool{}
			for _, m := range plan.Moves {
				if seen[m.Shard] {
					t.Errorf("shard %d moved twice", m.Shard)
				}
				seen[m.Shard] = true
				if where[m.Shard] != m.From || m.From == m.To {
					t.Errorf("move %+v does not start where the shard is (%s)", m, where[m.Shard])
				}
				where[m.Shard] = m.To
			}
			var replay []ShardLoad
			for _, s := range tc.shards {
				s.Node = where[s.Shard]
				replay = append(replay, s)
			}
			again, err := Rebalance(tc.nodes, replay, RebalanceOptions{SizeWeight: tc.opt.SizeWeight, MaxMoves: 1})
			if err != nil {
				t.Fatal(err)
			}
			if d := again.Before - plan.After; d > 1e-9 || d < -1e-9 {
				t.Errorf("replayed ratio %.4f, plan says %.4f", again.Before, plan.After)
			}
		})
	}
}
