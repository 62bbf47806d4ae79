package failover

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRedisJournal(t *testing.T) {
	dir := t.TempDir()
	if j, err := redisReadJournal(dir, "redis-0"); err != nil || j != nil {
		t.Fatalf("no journal: %+v %v", j, err)
	}
	j := &redisJournal{Op: redisOpFailover, Group: "redis-0", OldMaster: "redis-0", NewMaster: "redis-1", Epoch: 3,
		Step: redisStepPromote, OldOffset: 1000, NewOffset: 900, Fenced: true, Started: time.Now().UTC().Truncate(time.Second)}
	if err := redisWriteJournal(dir, j); err != nil {
		t.Fatal(err)
	}
	got, err := redisReadJournal(dir, "redis-0")
	if err != nil || got == nil {
		t.Fatalf("read back: %v", err)
	}
	got.Updated, j.Updated = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, j) {
		t.Fatalf("read back %+v, wrote %+v", got, j)
	}
	if _, err := os.Stat(filepath.Join(dir, "redis-0.json.tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
	// A journal of another format is refused, not guessed at.
	if err := os.WriteFile(redisJournalPath(dir, "redis-0"), []byte(`{"version": 9, "group": "redis-0"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := redisReadJournal(dir, "redis-0"); err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Fatalf("other version: %v", err)
	}
	if err := redisRemoveJournal(dir, "redis-0"); err != nil {
		t.Fatal(err)
	}
	if err := redisRemoveJournal(dir, "redis-0"); err != nil {
		t.Fatalf("removing twice: %v", err)
	}

	l, err := redisLockGroup(dir, "redis-0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := redisLockGroup(dir, "redis-0"); !errors.Is(err, RedisErrBusy) {
		t.Fatalf("second lock: %v, want RedisErrBusy", err)
	}
	if l2, err := redisLockGroup(dir, "redis-2"); err != nil {
		t.Fatalf("another group: %v", err)
	} else {
		l2.release()
	}
	l.release()
	if l, err = redisLockGroup(dir, "redis-0"); err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	l.release()
	if _, err := redisLockGroup("", "redis-0"); !errors.Is(err, RedisErrBadInput) {
		t.Fatalf("no directory: %v", err)
	}
}

func TestRedisParseInfo(t *testing.T) {
	master := "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmin_slaves_good_slaves:1\r\n" +
		"slave0:ip=127.0.0.1,port=6380,state=online,offset=1234,lag=1\r\nmaster_failover_state:no-failover\r\n" +
		"master_replid:abc\r\nmaster_repl_offset:1300\r\n"
	got := parseRedisInfo(master)
	want := redisInfo{Role: "master", Offset: 1300, FailoverState: "no-failover", GoodReplicas: 1,
		Replicas: []redisReplica{{Addr: "127.0.0.1:6380", State: "online", Offset: 1234, Lag: 1}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("master:\n%+v\nwant\n%+v", got, want)
	}
	if r, ok := got.replica("127.0.0.1:6380"); !ok || r.Offset != 1234 {
		t.Fatalf("replica lookup: %+v %v", r, ok)
	}
	replica := "role:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:6379\r\nmaster_link_status:up\r\n" +
		"slave_repl_offset:99\r\nmaster_failover_state:no-failover\r\nmaster_repl_offset:99\r\n"
	got = parseRedisInfo(replica)
	want = redisInfo{Role: "slave", MasterHost: "127.0.0.1", MasterPort: 6379, LinkUp: true, Offset: 99, FailoverState: "no-failover", GoodReplicas: -1}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("replica:\n%+v\nwant\n%+v", got, want)
	}
}
