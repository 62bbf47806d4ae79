package shardmove

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// ShardLoad is what the rebalance planner knows about one logical shard.
type ShardLoad struct {
	Shard        int     `json:"shard"`
	Node         string  `json:"node"`
	Bytes        int64   `json:"bytes"`
	WritesPerSec float64 `json:"writes_per_sec"`
}

// RebalanceOptions tunes Rebalance. The zero value means the defaults.
type RebalanceOptions struct {
	// Target is the wanted max/mean node load (default 1.15).
	Target float64
	// SizeWeight is the weight of size in a shard's load; write rate gets 1-SizeWeight
	// (default 0.5). Each part is the shard's share of the cluster total.
	SizeWeight float64
	// MaxMoves bounds the plan (default 256).
	MaxMoves int
}

// PlannedMove is one proposed shard move.
type PlannedMove struct {
	Shard int     `json:"shard"`
	From  string  `json:"from"`
	To    string  `json:"to"`
	Load  float64 `json:"load"`
	Bytes int64   `json:"bytes"`
}

// RebalancePlan is the outcome of Rebalance.
type RebalancePlan struct {
	Moves []PlannedMove `json:"moves"`
	// Before and After are max/mean node load.
	Before float64 `json:"before"`
	After  float64 `json:"after"`
	// Reached says whether After is within the target; when not, no single further move
	// helps (for instance one shard alone is above the target).
	Reached bool `json:"reached"`
	// Loads is each node's load after the moves (the mean is 1/len(nodes)).
	Loads map[string]float64 `json:"loads"`
}

// Rebalance proposes moves that bring max/mean node load to at most opt.Target. nodes lists
// every node, including empty ones; every shard's Node must be one of them. It is a pure
// function: greedy, it repeatedly moves from the most loaded node to the least loaded one the
// shard whose load is closest to half their difference, never moving a shard twice.
func Rebalance(nodes []string, shards []ShardLoad, opt RebalanceOptions) (RebalancePlan, error) {
	if opt.Target <= 0 {
		opt.Target = 1.15
	}
	if opt.SizeWeight == 0 {
		opt.SizeWeight = 0.5
	}
	if opt.SizeWeight < 0 || opt.SizeWeight > 1 {
		return RebalancePlan{}, fmt.Errorf("rebalance: size weight must be in [0,1] (got %g)", opt.SizeWeight)
	}
	if opt.MaxMoves <= 0 {
		opt.MaxMoves = 256
	}
	if len(nodes) == 0 {
		return RebalancePlan{}, errors.New("rebalance: no nodes")
	}
	var totalBytes, totalRate float64
	for _, s := range shards {
		if !slices.Contains(nodes, s.Node) {
			return RebalancePlan{}, fmt.Errorf("rebalance: shard %d is on unknown node %q", s.Shard, s.Node)
		}
		if s.Bytes < 0 || s.WritesPerSec < 0 {
			return RebalancePlan{}, fmt.Errorf("rebalance: shard %d has a negative size or rate", s.Shard)
		}
		totalBytes += float64(s.Bytes)
		totalRate += s.WritesPerSec
	}
	sw, rw := opt.SizeWeight, 1-opt.SizeWeight
	if totalRate == 0 {
		sw, rw = 1, 0
	}
	if totalBytes == 0 {
		sw, rw = 0, 1
	}
	shardLoad := make([]float64, len(shards))
	loads := map[string]float64{}
	for _, n := range nodes {
		loads[n] = 0
	}
	for i, s := range shards {
		if totalBytes > 0 {
			shardLoad[i] += sw * float64(s.Bytes) / totalBytes
		}
		if totalRate > 0 {
			shardLoad[i] += rw * s.WritesPerSec / totalRate
		}
		loads[s.Node] += shardLoad[i]
	}
	where := make([]string, len(shards))
	for i, s := range shards {
		where[i] = s.Node
	}
	plan := RebalancePlan{Before: ratio(loads), Loads: loads}
	if len(shards) == 0 || totalBytes+totalRate == 0 {
		plan.After, plan.Reached = plan.Before, true
		return plan, nil
	}
	moved := make([]bool, len(shards))
	for len(plan.Moves) < opt.MaxMoves && ratio(loads) > opt.Target+1e-12 {
		hi := argmax(nodes, loads)
		i, to := bestMove(nodes, loads, hi, where, shardLoad, moved)
		if i < 0 {
			break
		}
		loads[hi] -= shardLoad[i]
		loads[to] += shardLoad[i]
		where[i], moved[i] = to, true
		plan.Moves = append(plan.Moves, PlannedMove{Shard: shards[i].Shard, From: hi, To: to, Load: shardLoad[i], Bytes: shards[i].Bytes})
	}
	plan.After = ratio(loads)
	plan.Reached = plan.After <= opt.Target+1e-12
	return plan, nil
}

// bestMove picks, for the most loaded node hi, the shard and destination that lower the pair's
// maximum the most: destinations from least loaded up, shards with load strictly below the gap.
func bestMove(nodes []string, loads map[string]float64, hi string, where []string, shardLoad []float64, moved []bool) (int, string) {
	order := slices.Clone(nodes)
	slices.SortStableFunc(order, func(a, b string) int { return cmpFloat(loads[a], loads[b]) })
	for _, to := range order {
		gap := loads[hi] - loads[to]
		if to == hi || gap <= 1e-12 {
			continue
		}
		best, bestDist := -1, math.Inf(1)
		for i := range where {
			if where[i] != hi || moved[i] || shardLoad[i] <= 0 || shardLoad[i] >= gap {
				continue
			}
			if d := math.Abs(shardLoad[i] - gap/2); d < bestDist {
				best, bestDist = i, d
			}
		}
		if best >= 0 {
			return best, to
		}
	}
	return -1, ""
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func argmax(nodes []string, loads map[string]float64) string {
	best := nodes[0]
	for _, n := range nodes[1:] {
		if loads[n] > loads[best] {
			best = n
		}
	}
	return best
}

// ratio is max/mean of the node loads (1 when everything is empty).
func ratio(loads map[string]float64) float64 {
	var sum, mx float64
	for _, l := range loads {
		sum += l
		mx = max(mx, l)
	}
	if sum == 0 {
		return 1
	}
	return mx / (sum / float64(len(loads)))
}
