package backup

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/instactl/instactl/cloud"
	awscloud "github.com/instactl/instactl/cloud/aws"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/stack"
)

// tagSimStart carries a snapshot's simulated start time. moto stamps every snapshot with the
// real time of the call, so a simulated year would fall in one minute: simTimes reads this tag
// back as StartTime on the way out of DescribeSnapshots. Nothing else is faked: the sets are
// created, listed, tagged and deleted through the real AWS provider against moto.
const tagSimStart = "test:sim-start"

// It also works around a moto leak: moto keeps a deleted snapshot's tags, and every later
// tag-filtered describe scans them, so a year of deletes would slow it to seconds per call.
// dropTags removes the tags of the snapshots deleted since its last call.
type simTimes struct {
	cloud.Provider
	ec2 *ec2.Client
	mu  sync.Mutex
	// keys are the tag keys of every snapshot described, by id; deleted lists deletions.
	keys    map[string][]string
	deleted []string
}

func (p *simTimes) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	if err := p.Provider.DeleteSnapshot(ctx, snapshotID); err != nil {
		return err
	}
	p.mu.Lock()
	p.deleted = append(p.deleted, snapshotID)
	p.mu.Unlock()
	return nil
}

func (p *simTimes) dropTags(t *testing.T, ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := map[string]bool{}
	for _, id := range p.deleted {
		for _, k := range p.keys[id] {
			keys[k] = true
		}
	}
	var tags []ec2types.Tag
	for k := range keys {
		tags = append(tags, ec2types.Tag{Key: aws.String(k)})
	}
	for ids := range slices.Chunk(p.deleted, 200) {
		if _, err := p.ec2.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: ids, Tags: tags}); err != nil {
			t.Fatalf("drop tags of deleted snapshots: %v", err)
		}
	}
	p.deleted = nil
}

func (p *simTimes) DescribeSnapshots(ctx context.Context, stackName string) ([]cloud.Snapshot, error) {
	snaps, err := p.Provider.DescribeSnapshots(ctx, stackName)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range snaps {
		p.keys[snaps[i].ID] = slices.Collect(maps.Keys(snaps[i].Tags))
		if v := snaps[i].Tags[tagSimStart]; v != "" {
			t, perr := time.Parse(time.RFC3339, v)
			if perr != nil {
				return nil, perr
			}
			snaps[i].StartTime = t
		}
	}
	return snaps, err
}

// startMoto is testenv.Moto without its process-wide environment (which would keep this test
// from running in parallel): the caller configures the SDK explicitly, IMDS disabled.
func startMoto(t *testing.T) string {
	t.Helper()
	bin := testenv.Require(t, "moto_server", "python3-moto (or: pip install 'moto[server]')")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
	host, port, _ := net.SplitHostPort(addr)
	proc := testenv.Start(t, syscall.SIGTERM, bin, "-H", host, "-p", port)
	if err := testenv.WaitTCP(addr, 30*time.Second); err != nil {
		t.Fatalf("moto_server: %v\n%s", err, proc.Log.String())
	}
	return "http://" + addr
}

// simSet is the ground truth of one set the simulation created.
type simSet struct {
	id, series string
	at         time.Time
	usable     bool // neither short of a volume nor tagged partial
	verified   bool
}

// motoHost creates an instance of stack with n data volumes attached.
func motoHost(t *testing.T, p cloud.Provider, stackName, role string, n int) (cloud.Instance, []string) {
	t.Helper()
	ctx := context.Background()
	name := stack.HostName(role, 1)
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: name, Role: role, Index: 1, Type: "t2.micro", Image: "ami-785db401",
		Zone: "us-east-1a", ClientToken: stackName + "/" + name, Tags: map[string]string{cloud.TagStack: stackName}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range n {
		v, err := p.CreateVolume(ctx, cloud.VolumeSpec{Zone: "us-east-1a", SizeGiB: 1 + i, Type: "gp3", Tags: map[string]string{cloud.TagStack: stackName}})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.AttachVolume(ctx, v.ID, in.ID, fmt.Sprintf("/dev/sd%c", 'f'+i)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
	}
	return in, ids
}

// TestMotoRetentionYear simulates a year of backups of a Postgres replica with four data
// volumes and a Redis replica with one, against moto: every set is one CreateSnapshots call with
// its tags in the call; some sets come out partial (a volume short, or tagged partial after the
// call), some are verified or fail a drill (tags added later). Every simulated 40 days the
// stack is pruned for real, and the safety rules are checked against the ground truth.
func TestMotoRetentionYear(t *testing.T) {
	t.Parallel() // moto works while the sandbox test waits on its hosts
	ctx := context.Background()
	endpoint := startMoto(t)
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion("us-east-1"), config.WithBaseEndpoint(endpoint),
		config.WithEC2IMDSClientEnableState(imds.ClientDisabled),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("testing", "testing", "")))
	if err != nil {
		t.Fatal(err)
	}
	real := awscloud.New(cfg, awscloud.Options{})
	p := &simTimes{Provider: real, ec2: ec2.NewFromConfig(cfg), keys: map[string][]string{}}
	ret := stack.Retention{Hourly: 12, Daily: 7, Weekly: 4, Monthly: 12, MinVerified: 3}
	env := Env{Stack: &stack.Stack{Name: "yr", Provider: "aws", Backup: stack.Backup{Retention: ret}}, Provider: p, StateDir: t.TempDir()}

	pg, pgVols := motoHost(t, real, "yr", "pg", 4)
	rd, rdVols := motoHost(t, real, "yr", "redis", 1)
	// Another stack's sets, tagged like ours but for its stack: prune must never touch them.
	oth, othVols := motoHost(t, real, "other", "pg", 1)
	othSnaps, err := real.CreateSnapshots(ctx, oth.ID, othVols, SetTags("other", "o-1", "pg", "pg-1", StateComplete, 1))
	if err != nil {
		t.Fatal(err)
	}

	type event struct {
		at     time.Time
		in     cloud.Instance
		vols   []string
		target string
		hostnm string
	}
	rng := rand.New(rand.NewPCG(6, 2026))
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	end := start.AddDate(1, 0, 0)
	var events []event
	for at := start; at.Before(end); {
		events = append(events, event{at: at, in: pg, vols: pgVols, target: TargetPostgres, hostnm: "pg-1"})
		if rng.IntN(10) == 0 {
			at = at.Add(10 * time.Minute) // a burst: several sets in one hour
		} else {
			at = at.Add(time.Duration(2+rng.IntN(70)) * time.Hour)
		}
	}
	for at := start.Add(5 * time.Hour); at.Before(end); at = at.Add(time.Duration(72+rng.IntN(97)) * time.Hour) {
		events = append(events, event{at: at, in: rd, vols: rdVols, target: TargetRedis, hostnm: "redis-1"})
	}
	sort.Slice(events, func(i, j int) bool { return events[i].at.Before(events[j].at) })

	wal := newSimWAL(t, endpoint)
	// The WAL archive is pruned with the sets: by the start LSN of the oldest retained verified
	// set, and checked against what was pushed.
	truth := map[string]*simSet{}
	snapshots, prunes, deleted := 0, 0, 0
	nextPrune := start.Add(40 * 24 * time.Hour)
	t0 := time.Now()
	for i, ev := range events {
		if !ev.at.Before(nextPrune) {
			deleted += pruneAndCheck(t, ctx, env, p, truth, wal.open)
			wal.check(t, ctx, env)
			prunes++
			nextPrune = nextPrune.Add(40 * 24 * time.Hour)
		}
		id := fmt.Sprintf("%s-%s-%04d", ev.at.Format("20060102T150405Z"), ev.hostnm, i)
		tags := SetTags("yr", id, ev.target, ev.hostnm, StateComplete, len(ev.vols))
		tags[tagSimStart] = ev.at.Format(time.RFC3339)
		if ev.target == TargetPostgres {
			// Halfway through the year a failover: timeline 2 begins.
			if wal.tli == 1 && ev.at.After(start.AddDate(0, 6, 0)) {
				wal.failover(t)
			}
			tags[TagWALStart] = wal.setStart()
			wal.push(t, 1+rng.IntN(2))
		}
		s := &simSet{id: id, series: ev.target + "/" + ev.hostnm, at: ev.at, usable: true}
		vols := ev.vols
		r := rng.IntN(100)
		if r < 3 && len(vols) > 1 {
			vols, s.usable = vols[:len(vols)-1], false // a volume short: partial by count
		}
		snaps, err := p.CreateSnapshots(ctx, ev.in.ID, vols, tags)
		if err != nil {
			t.Fatalf("create set %s: %v", id, err)
		}
		snapshots += len(snaps)
		var ids []string
		for _, sn := range snaps {
			ids = append(ids, sn.ID)
		}
		var mark map[string]string
		switch {
		case r >= 3 && r < 6:
			mark, s.usable = map[string]string{TagPartial: "the freeze outlasted its budget"}, false
		case r >= 6 && r < 14:
			mark, s.verified = map[string]string{TagVerified: ev.at.Add(time.Hour).Format(time.RFC3339)}, true
		case r >= 14 && r < 16:
			mark = map[string]string{TagVerified: verifyFailed + ev.at.Add(time.Hour).Format(time.RFC3339)}
		}
		if mark != nil {
			if err := p.TagSnapshots(ctx, ids, mark); err != nil {
				t.Fatalf("tag set %s: %v", id, err)
			}
		}
		truth[id] = s
	}
	deleted += pruneAndCheck(t, ctx, env, p, truth, wal.open)
	wal.check(t, ctx, env)
	prunes++
	if wal.deletedTotal == 0 || wal.tli != 2 {
		t.Fatalf("the year pruned %d WAL files and ended on timeline %d; want some pruned, and timeline 2", wal.deletedTotal, wal.tli)
	}
	t.Logf("WAL: %d files pushed, %d pruned by LSN", len(wal.pushed), wal.deletedTotal)
	if snapshots < 1000 {
		t.Fatalf("the simulation created %d snapshots, want at least 1,000", snapshots)
	}
	left, err := real.DescribeSnapshots(ctx, "other")
	if err != nil || len(left) != 1 || left[0].ID != othSnaps[0].ID {
		t.Fatalf("the other stack's snapshots after %d prunes: %v %+v", prunes, err, left)
	}
	t.Logf("%d sets, %d snapshots over %s..%s; %d prunes deleted %d sets in %s", len(events), snapshots,
		start.Format("2006-01-02"), end.Format("2006-01-02"), prunes, deleted, time.Since(t0).Round(time.Millisecond))
}

// pruneAndCheck prunes for real and checks the safety rules on what is left; it returns the
// number of sets deleted.
func pruneAndCheck(t *testing.T, ctx context.Context, env Env, p *simTimes, truth map[string]*simSet, open ArchiveOpener) int {
	t.Helper()
	defer p.dropTags(t, ctx)
	plan, err := Prune(ctx, PruneOptions{Env: env, Apply: true, Archive: open})
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	var before []Set
	for _, d := range plan.Decisions {
		before = append(before, d.Set)
	}
	for _, s := range before {
		if truth[s.ID] == nil {
			t.Fatalf("listed set %s was never created by the simulation", s.ID)
		}
		want := StateComplete
		switch tr := truth[s.ID]; {
		case !tr.usable:
			want = StatePartial
		case tr.verified:
			want = StateVerified
		}
		if s.State != want {
			t.Fatalf("set %s listed %s, want %s", s.ID, s.State, want)
		}
	}
	after, err := List(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	checkRetentionRules(t, env.Stack.Backup.Retention, before, after)
	for _, d := range plan.Deletes() {
		if !d.Deleted {
			t.Fatalf("delete of set %s not confirmed", d.Set.ID)
		}
	}
	// Every bucket representative the ground truth calls for is still there (over the whole
	// history: a set deleted once can never become a bucket's newest again).
	left := map[string]Set{}
	for _, s := range after {
		left[s.ID] = s
	}
	for _, id := range representatives(truth, env.Stack.Backup.Retention) {
		if _, ok := left[id]; !ok {
			t.Fatalf("set %s, the newest of a bucket within retention, was deleted", id)
		}
	}
	if again := PlanRetention(after, env.Stack.Backup.Retention); len((&PrunePlan{Decisions: again}).Deletes()) != 0 {
		t.Fatalf("a second prune right after would delete %d more sets", len((&PrunePlan{Decisions: again}).Deletes()))
	}
	return len(plan.Deletes())
}

// checkRetentionRules checks, per series, what a prune from before to after must keep: the
// newest complete-or-verified set, the newest verified set, at least MinVerified verified sets
// (or all there were), every pending set; and that no partial set survives.
func checkRetentionRules(t *testing.T, ret stack.Retention, before, after []Set) {
	t.Helper()
	left := map[string]Set{}
	for _, s := range after {
		left[s.ID] = s
		if s.State == StatePartial {
			t.Fatalf("partial set %s survived the prune", s.ID)
		}
	}
	bySeries := map[string][]Set{}
	for _, s := range before {
		bySeries[s.Series()] = append(bySeries[s.Series()], s)
	}
	for series, sets := range bySeries {
		sort.Slice(sets, func(i, j int) bool { return sets[i].Time.After(sets[j].Time) })
		var newest, newestVer string
		verBefore, verAfter := 0, 0
		for _, s := range sets {
			usable := s.State == StateComplete || s.State == StateVerified
			if usable && newest == "" {
				newest = s.ID
			}
			if s.State == StateVerified {
				if newestVer == "" {
					newestVer = s.ID
				}
				verBefore++
				if _, ok := left[s.ID]; ok {
					verAfter++
				}
			}
			if _, ok := left[s.ID]; s.State == StatePending && !ok {
				t.Fatalf("%s: pending set %s deleted", series, s.ID)
			}
		}
		if _, ok := left[newest]; newest != "" && !ok {
			t.Fatalf("%s: newest complete set %s deleted", series, newest)
		}
		if _, ok := left[newestVer]; newestVer != "" && !ok {
			t.Fatalf("%s: newest verified set %s deleted", series, newestVer)
		}
		if verAfter < min(ret.MinVerified, verBefore) {
			t.Fatalf("%s: %d verified sets kept of %d, min_verified %d", series, verAfter, verBefore, ret.MinVerified)
		}
	}
}

// representatives returns, from the ground truth, the newest usable set of each of the newest
// Hourly hours, Daily days, Weekly weeks and Monthly months of every series: the sets
// grandfather-father-son retention must hold.
func representatives(truth map[string]*simSet, ret stack.Retention) []string {
	bySeries := map[string][]*simSet{}
	for _, s := range truth {
		if s.usable {
			bySeries[s.series] = append(bySeries[s.series], s)
		}
	}
	rules := []struct {
		keep int
		key  func(time.Time) string
	}{
		{ret.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{ret.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{ret.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprint(y, w) }},
		{ret.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
	}
	var out []string
	for _, sets := range bySeries {
		sort.Slice(sets, func(i, j int) bool { return sets[i].at.After(sets[j].at) })
		for _, r := range rules {
			var seen []string
			for _, s := range sets {
				if k := r.key(s.at); !slices.Contains(seen, k) && len(seen) < r.keep {
					seen = append(seen, k)
					out = append(out, s.id)
				}
			}
		}
	}
	return out
}
