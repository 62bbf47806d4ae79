package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/topology"
)

// TestAppFollowsRedisPrimary seeds a Redis group of two real servers in the control database,
// moves its primary with topology.RecordPrimary, and shows the app's writes (owner index, feed
// fan-out) and reads go to the new master; a stale epoch (from the control database or a
// notification) is refused.
func TestAppFollowsRedisPrimary(t *testing.T) {
	comps := apptest.StartComponents(t, 4)
	redis2 := testenv.Redis(t)
	ctx := context.Background()
	control, err := pgx.Connect(ctx, comps.ControlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close(ctx)
	topo := topology.Topology{Groups: []topology.Group{{Name: "redis-0", Kind: topology.KindRedis, Primary: "redis-0", Epoch: 1,
		Members: []topology.Member{{Host: "redis-0", Addr: netip.MustParseAddrPort(comps.RedisAddr)},
			{Host: "redis-1", Addr: netip.MustParseAddrPort(redis2)}}}}}
	if err := topology.Seed(ctx, control, topo); err != nil {
		t.Fatal(err)
	}
	cfg := comps.Config()
	cfg.MapRefresh = time.Hour // only NOTIFY delivers the new epoch
	srv := apptest.StartApp(t, cfg)
	r := srv.App.Router()
	c := client{t: t, base: srv.URL}
	old := redis.NewClient(&redis.Options{Addr: comps.RedisAddr})
	defer old.Close()
	cur := redis.NewClient(&redis.Options{Addr: redis2})
	defer cur.Close()

	alice, bob := c.signUp("alice"), c.signUp("bob")
	if code := c.call("POST", fmt.Sprintf("/users/%d/follow/%d", bob.ID, alice.ID), nil, nil); code != http.StatusOK {
		t.Fatalf("follow: %d", code)
	}
	feedHas := func(rdb *redis.Client, photo int64) bool {
		ids, err := rdb.LRange(ctx, "feed:"+strconv.FormatInt(bob.ID, 10), 0, -1).Result()
		return err == nil && slices.Contains(ids, strconv.FormatInt(photo, 10))
	}
	p1 := c.upload(alice.ID, "before", randomBytes(1000))
	waitUntil(t, "photo 1 in bob's feed on the first master", func() bool { return feedHas(old, p1.ID) })

	if _, err := topology.RecordPrimary(ctx, control, "redis-0", "redis-1", 1); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "epoch 2 of redis-0", func() bool { return r.GroupEpoch("redis-0") == 2 })
	p2 := c.upload(alice.ID, "after", randomBytes(1000))
	waitUntil(t, "photo 2 in bob's feed on the new master", func() bool { return feedHas(cur, p2.ID) })
	if feedHas(old, p2.ID) {
		t.Fatal("photo 2 was also pushed to the old master")
	}
	var feed struct{ Photos []struct{ ID int64 } }
	if code := c.call("GET", fmt.Sprintf("/users/%d/feed", bob.ID), nil, &feed); code != http.StatusOK ||
		len(feed.Photos) != 1 || feed.Photos[0].ID != p2.ID {
		t.Fatalf("bob's feed read from the new master: %d %+v (want only photo %d)", code, feed, p2.ID)
	}

	// A stale control database (an old primary still answering) shows epoch 1 again: refused.
	if _, err := control.Exec(ctx, "UPDATE replication_groups SET epoch = 1, primary_host = 'redis-0' WHERE name = 'redis-0'"); err != nil {
		t.Fatal(err)
	}
	if err := r.RefreshTopology(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.StaleRefused(); n != 1 || r.GroupEpoch("redis-0") != 2 {
		t.Fatalf("after a stale topology: refused %d, epoch %d; want 1 and 2", n, r.GroupEpoch("redis-0"))
	}
	// So is a stale announcement.
	if _, err := control.Exec(ctx, "SELECT pg_notify($1, 'redis-0 1')", topology.NotifyChannel); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stale notification to be refused", func() bool { return r.StaleRefused() == 2 })
	p3 := c.upload(alice.ID, "still new", randomBytes(1000))
	waitUntil(t, "photo 3 on the new master", func() bool { return feedHas(cur, p3.ID) })
	if feedHas(old, p3.ID) {
		t.Fatal("a stale epoch sent photo 3 to the old master")
	}

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`instagram_topology_epoch{group="redis-0"} 2`, "instagram_topology_stale_refused_total 2",
		"instagram_failover_retries_total 0", "instagram_control_listener_connects_total 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// waitUntil polls cond until it holds or a generous deadline passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
