package deploy

import (
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Hosts finishing at once save the journal at once: every save must land (one temporary file,
// written in turn) and the journal ends with the newest state.
func TestJournalConcurrentSaves(t *testing.T) {
	const n = 40
	a := Artifact{ID: "abcdef012345", SHA256: "00", Size: 1, Path: "/dev/null"}
	p, err := NewPlan(KindDeploy, testConfig(t.TempDir()), testHosts(n), a, "", "R1")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var fails []string
	d := &Deployer{OnEvent: func(ev Event) {
		if ev.Status == StatusFail {
			mu.Lock()
			fails = append(fails, ev.Message+" "+ErrorLine(ev.Err))
			mu.Unlock()
		}
	}}
	r := newRun(d, p, nil, nil)
	var wg sync.WaitGroup
	for _, h := range p.Hosts {
		wg.Go(func() { r.update(h.Name, func(hr *HostReport) { hr.State = OutcomeActivated }) })
	}
	wg.Wait()
	if len(fails) > 0 {
		t.Fatalf("%d saves failed; first: %s", len(fails), fails[0])
	}
	_, rep, err := LoadJournal(p.Config.StateDir, "R1")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range rep.Hosts {
		if h.State != OutcomeActivated {
			t.Errorf("journal: %s is %s, want activated", h.Host, h.State)
		}
	}
}

// Updates saved in the background (updateSoon) all reach the journal once the writer stops,
// and nothing writes the journal after that: Deploy may return and the caller remove it.
func TestJournalBackgroundSaves(t *testing.T) {
	const n = 40
	a := Artifact{ID: "abcdef012345", SHA256: "00", Size: 1, Path: "/dev/null"}
	p, err := NewPlan(KindDeploy, testConfig(t.TempDir()), testHosts(n), a, "", "R1")
	if err != nil {
		t.Fatal(err)
	}
	r := newRun(&Deployer{}, p, nil, nil)
	r.startJournal()
	var wg sync.WaitGroup
	for _, h := range p.Hosts {
		wg.Go(func() { r.updateSoon(h.Name, func(hr *HostReport) { hr.State = OutcomeStaged }) })
	}
	wg.Wait()
	r.stopJournal()
	path := JournalPath(p.Config.StateDir, "R1")
	_, rep, err := LoadJournal(p.Config.StateDir, "R1")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range rep.Hosts {
		if h.State != OutcomeStaged {
			t.Errorf("journal: %s is %s, want staged", h.Host, h.State)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	// After the stop an update saves at once, as update does.
	r.updateSoon(p.Hosts[0].Name, func(hr *HostReport) { hr.State = OutcomeActivated })
	if _, rep, err := LoadJournal(p.Config.StateDir, "R1"); err != nil || rep.Hosts[0].State != OutcomeActivated {
		t.Fatalf("update after the writer stopped: %v, want the journal saved with it", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a stray background write would recreate the file
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal written after the writer stopped: %v", err)
	}
}

// ErrorLine folds a multi-line remote error onto one line and keeps all of it, however long.
func TestErrorLineKeepsTheCause(t *testing.T) {
	cause := strings.Repeat("context ", 300) + "THE-CAUSE"
	got := ErrorLine(errors.New("restart on app-0:\n    " + cause + "\n"))
	if got != "restart on app-0: "+cause {
		t.Errorf("ErrorLine cut or mangled the cause (%d bytes): ...%s", len(got), got[max(0, len(got)-60):])
	}
}

// The final verdict says the batch is back on its previous release only when every host is.
func TestBatchState(t *testing.T) {
	rep := &Report{Release: "r2", Hosts: []HostReport{
		{Host: "a", Batch: 1, State: OutcomeRolledBack, Flipped: true},
		{Host: "b", Batch: 1, State: OutcomeFailed, Stage: StageConnect},
		{Host: "c", Batch: 2, State: OutcomeNotStarted},
	}}
	if got := rep.BatchState(1); got != "batch 1 is back on its previous release" {
		t.Errorf("all back: %q", got)
	}
	rep.Hosts = append(rep.Hosts, HostReport{Host: "d", Batch: 1, State: OutcomeStopped, Flipped: true},
		HostReport{Host: "e", Batch: 1, State: OutcomeFailed, Flipped: true})
	got := rep.BatchState(1)
	for _, want := range []string{"of the 4 hosts of batch 1", "2 on their previous release", "1 had no earlier release",
		"release r2 stays staged", "instactl deploy again", "1 could not be rolled back"} {
		if !strings.Contains(got, want) {
			t.Errorf("verdict lacks %q: %s", want, got)
		}
	}
	if strings.Contains(got, "back on its previous release") {
		t.Errorf("verdict claims the batch is back: %s", got)
	}
}
