package loadgen_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/shardmap"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// fetch does one request and fails the test unless the status is want; it returns the body.
func fetch(t *testing.T, method, url, contentType string, body []byte, want int) []byte {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, raw)
	}
	return raw
}

// moveShard is a crude shard move under the app's feet: fence the shard on its node, copy its
// sequence and rows to the other node, flip the map, and wait until the app routes there. It
// returns the source node's DSN (the rows stay there, fenced).
func moveShard(t *testing.T, comps *apptest.Components, srv *apptest.Server, shard int) string {
	t.Helper()
	ctx := context.Background()
	control := connect(t, comps.ControlDSN)
	m, err := shardmap.Load(ctx, control)
	if err != nil {
		t.Fatal(err)
	}
	from := m.Shards[shard].Node
	to := "pg1"
	if from == to {
		to = "pg2"
	}
	src, dst := connect(t, comps.NodeDSNs[from]), connect(t, comps.NodeDSNs[to])
	if _, err := dst.Exec(ctx, shardmap.ShardSchemaSQL(shard)); err != nil {
		t.Fatal(err)
	}
	if err := shardmap.SetFence(ctx, src, shard, true, time.Second); err != nil {
		t.Fatal(err)
	}
	schema := shardmap.SchemaName(shard)
	for _, table := range shardmap.Tables {
		rows, err := src.Query(ctx, fmt.Sprintf("SELECT * FROM %s.%s", schema, table))
		if err != nil {
			t.Fatal(err)
		}
		var cols []string
		for _, f := range rows.FieldDescriptions() {
			cols = append(cols, f.Name)
		}
		all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dst.CopyFrom(ctx, pgx.Identifier{schema, table}, cols, pgx.CopyFromRows(all)); err != nil {
			t.Fatalf("copy %s.%s: %v", schema, table, err)
		}
	}
	var last int64
	src.QueryRow(ctx, "SELECT last_value FROM "+shardmap.SequenceName(shard)).Scan(&last)
	if _, err := dst.Exec(ctx, "SELECT setval($1, $2)", shardmap.SequenceName(shard), last); err != nil {
		t.Fatal(err)
	}
	if err := shardmap.Flip(ctx, control, shard, from, to, m.Shards[shard].Epoch); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); srv.App.Router().Map().Shards[shard].Node != to; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("app still routes shard %d to %s", shard, from)
		}
	}
	return comps.NodeDSNs[from]
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
