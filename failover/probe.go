package failover

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Probe writes through the path the app servers use, as fast as one connection can, while an
// operation runs, so the command can report the write block a client saw, not only the one the
// pooler measured. Each probe is one transaction that takes a transaction id (SELECT
// txid_current()): a write that a standby refuses and a paused pooler holds.
type Probe struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	acks    []time.Time
	failed  int
	lastErr error
}

// ProbeResult is what a probe saw.
type ProbeResult struct {
	// MaxGap is the longest time between two acknowledged probes (or from the start to the
	// first, or from the last to the stop), over the whole operation.
	MaxGap time.Duration `json:"max_gap"`
	Acked  int           `json:"acked"`
	Failed int           `json:"failed"`
	// LastError is the last failed probe's error ("" when none failed).
	LastError string `json:"last_error,omitempty"`
}

// StartProbe starts probing dsn (PgBouncer in transaction mode: no prepared statements) every
// interval; a failed probe drops the connection and the next one reconnects.
func StartProbe(ctx context.Context, dsn string, interval time.Duration) (*Probe, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithCancel(ctx)
	p := &Probe{cancel: cancel, done: make(chan struct{}), acks: []time.Time{time.Now()}}
	// Connect before returning, so the operation starts with a working probe.
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		cancel()
		return nil, err
	}
	go p.loop(ctx, cfg, conn, interval)
	return p, nil
}

func (p *Probe) loop(ctx context.Context, cfg *pgx.ConnConfig, conn *pgx.Conn, interval time.Duration) {
	defer close(p.done)
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		var err error
		if conn == nil {
			conn, err = pgx.ConnectConfig(ctx, cfg)
		}
		if err == nil {
			_, err = conn.Exec(ctx, "SELECT txid_current()")
		}
		now := time.Now()
		p.mu.Lock()
		if err == nil {
			p.acks = append(p.acks, now)
		} else if ctx.Err() == nil {
			p.failed++
			p.lastErr = err
		}
		p.mu.Unlock()
		if err != nil && conn != nil {
			conn.Close(context.Background())
			conn = nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}

// Stop ends the probe and returns what it saw.
func (p *Probe) Stop() ProbeResult {
	stopped := time.Now()
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	r := ProbeResult{Acked: len(p.acks) - 1, Failed: p.failed}
	if p.lastErr != nil {
		r.LastError = p.lastErr.Error()
	}
	acks := append(p.acks, stopped)
	for i := 1; i < len(acks); i++ {
		r.MaxGap = max(r.MaxGap, acks[i].Sub(acks[i-1]))
	}
	return r
}
