package shardmove

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// Check is one pre-check of a move plan.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// TableInfo is one table of the shard being moved, as the source reports it.
type TableInfo struct {
	Name  string `json:"name"`
	Rows  int64  `json:"rows_estimate"`
	Bytes int64  `json:"bytes"`
}

// MovePlan is a printable, JSON-encodable plan for one shard move: where from and to, what
// will be copied, the pre-check results and the steps Move will run.
type MovePlan struct {
	Shard  int    `json:"shard"`
	Schema string `json:"schema"`
	From   string `json:"from"`
	To     string `json:"to"`
	// FromEpoch is the shard's epoch now; the flip succeeds only if it is unchanged.
	FromEpoch int64       `json:"from_epoch"`
	Bytes     int64       `json:"bytes"`
	Rows      int64       `json:"rows_estimate"`
	Tables    []TableInfo `json:"tables"`
	Checks    []Check     `json:"checks"`
	Steps     []string    `json:"steps"`
	// Copy is how the data is copied: CopyLogical or CopySnapshot (empty: CopyLogical).
	Copy string `json:"copy,omitempty"`
	// ParentID is set on a rollback: the move being reversed.
	ParentID int64 `json:"parent_id,omitempty"`
}

// Refusals returns the failed checks.
func (p MovePlan) Refusals() []Check {
	var out []Check
	for _, c := range p.Checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

// String renders the plan for a terminal.
func (p MovePlan) String() string {
	var b strings.Builder
	what := "move"
	if p.ParentID != 0 {
		what = fmt.Sprintf("rollback of move %d:", p.ParentID)
	}
	fmt.Fprintf(&b, "%s shard %d (%s) %s -> %s at epoch %d: %d tables, ~%d rows, %s\n",
		what, p.Shard, p.Schema, p.From, p.To, p.FromEpoch, len(p.Tables), p.Rows, humanBytes(p.Bytes))
	b.WriteString("checks:\n")
	for _, c := range p.Checks {
		mark := "ok"
		if !c.OK {
			mark = "REFUSED"
		}
		fmt.Fprintf(&b, "  %-8s %-22s %s\n", mark, c.Name, c.Detail)
	}
	b.WriteString("steps:\n")
	for i, s := range p.Steps {
		fmt.Fprintf(&b, "  %2d. %s\n", i+1, s)
	}
	return b.String()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// stepsFor describes the steps of a plan in execution order.
func stepsFor(p MovePlan) []string {
	var s []string
	if p.ParentID != 0 {
		s = append(s, StepDropStale+": drop the fenced old copy of "+p.Schema+" on "+p.To+" and move "+fmt.Sprint(p.ParentID)+"'s replication objects")
	}
	s = append(s,
		StepPrepare+": create "+p.Schema+".move_marker on "+p.From+", mark the shard moving",
		StepCopySchema+": create "+p.Schema+" (tables, next_id, sequence) on "+p.To+" with its fence enabled",
		StepPublication+": CREATE PUBLICATION ... FOR TABLES IN SCHEMA "+p.Schema+" on "+p.From)
	if p.Copy == CopySnapshot {
		s = append(s,
			StepCopyData+": slot on "+p.From+" with an exported snapshot; parallel binary COPY under it into "+p.To+"'s bare tables",
			StepIndexes+": build the indexes and key constraints on "+p.To,
			StepSubscription+": CREATE SUBSCRIPTION on "+p.To+" streaming from the slot (no copy)")
	} else {
		s = append(s, StepSubscription+": CREATE SUBSCRIPTION on "+p.To+" (copy_data, slot on "+p.From+")")
	}
	return append(s,
		StepWaitSync+": wait until every table is ready (pg_subscription_rel 'r')",
		StepVerify+": chunked checksums "+p.From+" vs "+p.To+" until equal (hot chunks re-checked in the cutover)",
		StepSyncCommit+": subscription synchronous_commit=on, wait the lead time",
		StepCutover+": fence "+p.From+" + marker, wait marker on "+p.To+", setval past the source, clock guard, flip map, unfence "+p.To,
		StepRevoke+": revoke next_id()/sequence use on the old copy on "+p.From,
		"then: `instactl shard complete MOVE` after the grace period drops the old copy and replication objects",
	)
}

// PlanMove checks that shard can move to toNode now and returns the plan. When a check fails
// the plan is returned with the error, which wraps ErrRefused and names every failed check.
// Nothing is changed.
func (m *Mover) PlanMove(ctx context.Context, shard int, toNode string) (MovePlan, error) {
	return m.plan(ctx, shard, toNode, 0)
}

func (m *Mover) plan(ctx context.Context, shard int, toNode string, parent int64) (MovePlan, error) {
	p := MovePlan{Shard: shard, To: toNode, ParentID: parent}
	ctl, err := m.control(ctx)
	if err != nil {
		return p, err
	}
	defer closeAll(ctl)
	mp, err := shardmap.Load(ctx, ctl)
	if err != nil {
		return p, fmt.Errorf("plan move: %w", err)
	}
	add := func(name string, ok bool, format string, args ...any) {
		p.Checks = append(p.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	a, _, err := mp.Route(shard)
	if err != nil {
		add("shard", false, "unknown shard: %v", err)
		return p, refused(p)
	}
	p.Schema, p.From, p.FromEpoch = shardmap.SchemaName(shard), a.Node, a.Epoch
	if _, ok := mp.Nodes[toNode]; !ok {
		known := make([]string, 0, len(mp.Nodes))
		for n := range mp.Nodes {
			known = append(known, n)
		}
		slices.Sort(known)
		add("target node", false, "unknown node %q (known: %s)", toNode, strings.Join(known, ", "))
		return p, refused(p)
	}
	add("target", a.Node != toNode, "shard %d is on %s", shard, a.Node)
	if a.Node == toNode {
		return p, refused(p)
	}
	open, err := openMoveOf(ctx, ctl, shard)
	if err != nil {
		return p, fmt.Errorf("plan move (is the journal installed? run `instactl shard init`): %w", err)
	}
	switch {
	case open == nil:
		add("no other move", true, "no open move of shard %d", shard)
	case parent != 0 && open.ID == parent:
		add("no other move", true, "reversing move %d", parent)
	default:
		add("no other move", false, "move %d of shard %d is %s at step %s", open.ID, shard, open.State, open.Step)
	}
	src, err := m.connectNode(ctx, mp, a.Node)
	if err != nil {
		return p, fmt.Errorf("plan move: %w", err)
	}
	defer closeAll(src)
	dst, err := m.connectNode(ctx, mp, toNode)
	if err != nil {
		return p, fmt.Errorf("plan move: %w", err)
	}
	defer closeAll(dst)
	if err := m.checkSource(ctx, src, &p, add); err != nil {
		return p, err
	}
	if err := m.checkTarget(ctx, dst, &p, add); err != nil {
		return p, err
	}
	p.Copy = m.copyMethodFor(p.Bytes)
	p.Steps = stepsFor(p)
	return p, refused(p)
}

func refused(p MovePlan) error {
	bad := p.Refusals()
	if len(bad) == 0 {
		return nil
	}
	var parts []string
	for _, c := range bad {
		parts = append(parts, c.Name+": "+c.Detail)
	}
	return fmt.Errorf("move shard %d %s -> %s: %s: %w", p.Shard, p.From, p.To, strings.Join(parts, "; "), ErrRefused)
}

type addFunc func(name string, ok bool, format string, args ...any)

func settingInt(ctx context.Context, conn *pgx.Conn, name string) (int, error) {
	var v int
	if err := conn.QueryRow(ctx, "SELECT current_setting($1)::int", name).Scan(&v); err != nil {
		return 0, fmt.Errorf("read setting %s: %w", name, err)
	}
	return v, nil
}

func (m *Mover) checkSource(ctx context.Context, src *pgx.Conn, p *MovePlan, add addFunc) error {
	var walLevel string
	var version int
	if err := src.QueryRow(ctx, "SELECT current_setting('wal_level'), current_setting('server_version_num')::int").Scan(&walLevel, &version); err != nil {
		return fmt.Errorf("plan move: read source settings: %w", err)
	}
	add("source wal_level", walLevel == "logical", "wal_level=%s on %s (logical replication needs logical; set it and restart)", walLevel, p.From)
	add("source version", version >= 150000, "server_version_num %d (FOR TABLES IN SCHEMA needs 15+)", version)
	rows, err := src.Query(ctx, `
		SELECT c.relname, greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid),
		       c.relreplident = 'f'
		       OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
		       OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname`, p.Schema)
	if err != nil {
		return fmt.Errorf("plan move: list source tables: %w", err)
	}
	var noKey, extra []string
	for rows.Next() {
		var t TableInfo
		var hasKey bool
		if err := rows.Scan(&t.Name, &t.Rows, &t.Bytes, &hasKey); err != nil {
			rows.Close()
			return fmt.Errorf("plan move: list source tables: %w", err)
		}
		if !hasKey {
			noKey = append(noKey, t.Name)
		}
		if !slices.Contains(shardmap.Tables, t.Name) && t.Name != markerTable {
			extra = append(extra, t.Name)
		}
		p.Tables = append(p.Tables, t)
		p.Bytes += t.Bytes
		p.Rows += t.Rows
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("plan move: list source tables: %w", err)
	}
	add("source schema", len(p.Tables) > 0, "%s on %s has %d tables", p.Schema, p.From, len(p.Tables))
	add("keys", len(noKey) == 0, "tables without a primary key or replica identity: %s", listOrNone(noKey))
	add("schema matches", len(extra) == 0, "tables not in the shard schema (the target copy would lack them): %s", listOrNone(extra))
	maxSlots, err := settingInt(ctx, src, "max_replication_slots")
	if err != nil {
		return fmt.Errorf("plan move: %w", err)
	}
	maxSenders, err := settingInt(ctx, src, "max_wal_senders")
	if err != nil {
		return fmt.Errorf("plan move: %w", err)
	}
	var slots, senders int
	if err := src.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_stat_replication)").Scan(&slots, &senders); err != nil {
		return fmt.Errorf("plan move: count source slots: %w", err)
	}
	// One slot for the subscription plus one for a table-sync worker at a time.
	add("source slots", maxSlots-slots >= 2, "%d of max_replication_slots=%d free on %s (need 2)", maxSlots-slots, maxSlots, p.From)
	add("source wal senders", maxSenders-senders >= 2, "%d of max_wal_senders=%d free on %s (need 2)", maxSenders-senders, maxSenders, p.From)
	return nil
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// Room needed on the target: the shard's size on the source times this, plus roomFixed.
const (
	roomFactor = 1.5
	roomFixed  = 64 << 20
)

func (m *Mover) checkTarget(ctx context.Context, dst *pgx.Conn, p *MovePlan, add addFunc) error {
	var exists bool
	if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", p.Schema).Scan(&exists); err != nil {
		return fmt.Errorf("plan move: look for %s on target: %w", p.Schema, err)
	}
	if p.ParentID != 0 {
		add("target copy", true, "%s on %s is the old copy of move %d and will be replaced", p.Schema, p.To, p.ParentID)
	} else {
		add("target copy", !exists, "%s does not exist on %s yet (a leftover copy must be dropped by hand after checking it)", p.Schema, p.To)
	}
	maxWorkers, err := settingInt(ctx, dst, "max_logical_replication_workers")
	if err != nil {
		return fmt.Errorf("plan move: %w", err)
	}
	var workers int
	if err := dst.QueryRow(ctx, "SELECT count(pid) FROM pg_stat_subscription").Scan(&workers); err != nil {
		return fmt.Errorf("plan move: count target workers: %w", err)
	}
	// The apply worker plus one table-sync worker.
	add("target workers", maxWorkers-workers >= 2, "%d of max_logical_replication_workers=%d free on %s (need 2)", maxWorkers-workers, maxWorkers, p.To)
	need := int64(float64(p.Bytes)*roomFactor) + roomFixed
	if m.cfg.FreeBytes == nil {
		add("target room", true, "not checked (no free-space source configured); shard needs ~%s", humanBytes(need))
		return nil
	}
	free, err := m.cfg.FreeBytes(ctx, p.To)
	if err != nil {
		add("target room", false, "cannot read free space on %s: %v", p.To, err)
		return nil
	}
	add("target room", free >= need, "%s free on %s, need %s (shard %s x %.1f + %s)", humanBytes(free), p.To,
		humanBytes(need), humanBytes(p.Bytes), roomFactor, humanBytes(roomFixed))
	return nil
}
