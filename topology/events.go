package topology

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Event is one finished change of a group's roles: a switchover, a failover or a rejoin.
type Event struct {
	Group      string `json:"group"`
	Op         string `json:"op"` // switchover, failover, rejoin
	OldPrimary string `json:"old_primary"`
	NewPrimary string `json:"new_primary"`
	Epoch      int64  `json:"epoch"`
	// WriteBlock is how long writes were held or refused, as the operation measured it (zero
	// when it does not apply, e.g. a rejoin).
	WriteBlock time.Duration `json:"write_block_ns"`
	// LossBytes is a failover's possible loss window in bytes of WAL or replication offset;
	// -1 when it could not be known.
	LossBytes int64     `json:"loss_bytes"`
	Detail    string    `json:"detail,omitempty"`
	At        time.Time `json:"at"`
}

// RecordEvent appends e to the group's history in the control database.
func RecordEvent(ctx context.Context, db DB, e Event) error {
	_, err := db.Exec(ctx, `INSERT INTO replication_events
		(group_name, op, old_primary, new_primary, epoch, write_block_ms, loss_bytes, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		e.Group, e.Op, e.OldPrimary, e.NewPrimary, e.Epoch,
		float64(e.WriteBlock)/float64(time.Millisecond), e.LossBytes, e.Detail)
	if err != nil {
		return fmt.Errorf("record %s of %s: %w", e.Op, e.Group, err)
	}
	return nil
}

// LastEvents returns, per group, its newest event of op ("" for any op).
func LastEvents(ctx context.Context, db DB, op string) (map[string]Event, error) {
	rows, err := db.Query(ctx, `SELECT DISTINCT ON (group_name) group_name, op, old_primary,
		new_primary, epoch, coalesce(write_block_ms, 0), coalesce(loss_bytes, -1), detail, at
		FROM replication_events WHERE $1 = '' OR op = $1 ORDER BY group_name, id DESC`, op)
	if err != nil {
		return nil, fmt.Errorf("read replication events: %w", err)
	}
	out := map[string]Event{}
	var e Event
	var blockMS float64
	_, err = pgx.ForEachRow(rows, []any{&e.Group, &e.Op, &e.OldPrimary, &e.NewPrimary, &e.Epoch,
		&blockMS, &e.LossBytes, &e.Detail, &e.At}, func() error {
		e.WriteBlock = time.Duration(blockMS * float64(time.Millisecond))
		out[e.Group] = e
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read replication events: %w", err)
	}
	return out, nil
}
