package controldb

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Listener follows the control database's notifications on one dedicated connection, for as
// long as its Run's context lives: it connects, LISTENs on Channels, calls OnListen (a change
// made while nobody listened sent nothing, so the follower reloads there), then hands every
// notification to OnNotify and calls OnIdle whenever Idle passes without one. When the
// connection fails, it reconnects with a bounded backoff (MinBackoff doubling up to
// MaxBackoff, back to MinBackoff after a connection that got as far as listening).
//
// The app server's shard map and topology follower and its switch board both run one.
type Listener struct {
	// DSN is the control database's connection string; a multi-host DSN with
	// target_session_attrs=read-write reconnects to whichever member is primary now.
	DSN      string
	Channels []string
	// Idle is how long to wait for a notification before OnIdle runs.
	Idle time.Duration
	// OnListen runs once listening, on every (re)connect.
	OnListen func(ctx context.Context, conn *pgx.Conn)
	// OnNotify handles one notification.
	OnNotify func(ctx context.Context, conn *pgx.Conn, n *pgconn.Notification)
	// OnIdle runs after Idle without a notification, such as a periodic re-read or a ping that
	// proves a silent connection alive; an error drops the connection and reconnects.
	OnIdle func(ctx context.Context, conn *pgx.Conn) error
	// OnLost is told why the connection was lost (or could not be made), the attempt since the
	// last good connection and when the next one starts.
	OnLost func(err error, attempt int, retryIn time.Duration)
}

// Bounds of a Listener's reconnect backoff, and its connect timeout when the DSN sets none (an
// unreachable control host must not hold the listener for minutes).
const (
	MinBackoff     = 100 * time.Millisecond
	MaxBackoff     = 5 * time.Second
	ConnectTimeout = 5 * time.Second
)

// Run listens until ctx ends.
func (l Listener) Run(ctx context.Context) {
	backoff := MinBackoff
	for attempt := 1; ctx.Err() == nil; attempt++ {
		connected, err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			backoff, attempt = MinBackoff, 1
		}
		if l.OnLost != nil {
			l.OnLost(err, attempt, backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, MaxBackoff)
	}
}

// session is one connection's life; connected says whether it got as far as listening.
func (l Listener) session(ctx context.Context) (connected bool, err error) {
	cfg, err := pgx.ParseConfig(l.DSN)
	if err != nil {
		return false, fmt.Errorf("parse control dsn: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = ConnectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, fmt.Errorf("connect to control database: %w", err)
	}
	defer conn.Close(context.Background())
	for _, ch := range l.Channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return false, fmt.Errorf("listen %s: %w", ch, err)
		}
	}
	if l.OnListen != nil {
		l.OnListen(ctx, conn)
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, l.Idle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return true, ctx.Err()
		case err != nil && wctx.Err() != nil && !conn.IsClosed():
			if l.OnIdle != nil {
				if err := l.OnIdle(ctx, conn); err != nil {
					return true, err
				}
			}
		case err != nil:
			return true, fmt.Errorf("wait for notification: %w", err)
		default:
			if l.OnNotify != nil {
				l.OnNotify(ctx, conn, n)
			}
		}
	}
}
