package riskstore

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// checkHeap verifies that the expiry heap holds exactly the runs of the map,
// each at its recorded index, in heap order.
func checkHeap(t *testing.T, m *Memory) {
	t.Helper()
	if len(m.expiry) != len(m.runs) {
		t.Fatalf("heap holds %d runs, map %d", len(m.expiry), len(m.runs))
	}
	for i, r := range m.expiry {
		if r.idx != i {
			t.Fatalf("run %+v at heap position %d records %d", r.state.Run, i, r.idx)
		}
		if m.runs[r.state.Run] != r {
			t.Fatalf("run %+v in the heap is not the map's", r.state.Run)
		}
		if i > 0 && r.expires.Before(m.expiry[(i-1)/2].expires) {
			t.Fatalf("heap order broken at %d", i)
		}
	}
}

// TestMemorySweepsExpiredRuns: runs nobody touches again are removed by later
// calls on other runs, sweepBatch per call, with their owners and agents'
// usage, and live runs are kept.
func TestMemorySweepsExpiredRuns(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: t0}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	seq := 0
	commit := func(id string, ttl time.Duration) {
		t.Helper()
		seq++
		ref := RunRef{Agent: "agent-" + id, ID: id}
		lim := Limits{AgentWindow: time.Second, AgentMaxToolCalls: 100}
		res, err := m.Commit(ctx, ref, st(strconv.Itoa(seq), 0), lim, ttl)
		if err != nil || res.Outcome != Committed {
			t.Fatalf("commit %s: %v %v", id, res.Outcome, err)
		}
	}
	const dead, live = 1000, 10
	for i := range dead {
		commit("dead-"+strconv.Itoa(i), time.Minute)
	}
	for i := range live {
		commit("live-"+strconv.Itoa(i), time.Hour)
	}
	// A run committed again has its expiry pushed back: it must survive.
	clk.Advance(30 * time.Second)
	commit("dead-7", time.Hour)
	checkHeap(t, m)

	clk.Advance(time.Minute)
	if len(m.runs) != dead+live {
		t.Fatalf("%d runs before any sweep, want %d", len(m.runs), dead+live)
	}
	const calls = (dead - 1) / sweepBatch
	for i := range calls {
		if i%2 == 0 {
			commit("new-"+strconv.Itoa(i), time.Hour)
		} else if _, err := m.Load(ctx, RunRef{Agent: "nobody", ID: "nothing"}, ""); err != nil {
			t.Fatal(err)
		}
	}
	checkHeap(t, m)
	left := dead - 1 - calls*sweepBatch // expired runs not yet swept
	want := left + 1 + live + (calls+1)/2
	if len(m.runs) != want {
		t.Errorf("%d runs after %d calls, want %d (%d expired left)", len(m.runs), calls, want, left)
	}
	if _, err := m.Load(ctx, RunRef{Agent: "nobody", ID: "nothing"}, ""); err != nil {
		t.Fatal(err)
	}
	for ref := range m.runs {
		if strings.HasPrefix(ref.ID, "dead") && ref.ID != "dead-7" {
			t.Errorf("expired run %+v still held", ref)
		}
	}
	if len(m.owners) != len(m.runs) || len(m.agents) != len(m.runs) {
		t.Errorf("%d owners and %d agents' usage held for %d live runs", len(m.owners), len(m.agents), len(m.runs))
	}
	for id, version := range map[string]int64{"dead-7": 2, "live-0": 1, "live-9": 1} {
		if got, _ := m.Load(ctx, RunRef{Agent: "agent-" + id, ID: id}, ""); got.Version != version {
			t.Errorf("live run %s: %+v, want version %d", id, got, version)
		}
	}
	checkHeap(t, m)
}

// TestMemoryExpiredRunStartsOver: an expired run reads as new (version 0)
// even before the sweep reaches it, and a commit expecting its old version is
// stale.
func TestMemoryExpiredRunStartsOver(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: t0}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	for i := range 3 {
		if _, err := m.Commit(ctx, runA, st(strconv.Itoa(i), 0).withVersion(int64(i)), Limits{}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(2 * time.Minute)
	res, err := m.Commit(ctx, runA, st("3", 0).withVersion(3), Limits{}, time.Minute)
	if err != nil || res.Outcome != Stale || res.State.Version != 0 || res.State.ToolCalls != 0 {
		t.Fatalf("commit on an expired run = %+v, %v; want stale at version 0", res, err)
	}
	if len(m.runs) != 0 {
		t.Errorf("a stale commit left %d runs", len(m.runs))
	}
	checkHeap(t, m)
}

// TestMemoryUnCommittedRunsLeaveNothing: refused and stale first steps do not
// create runs (they used to stay forever: a run without an expiry), claim no
// run id and count nothing against the agent.
func TestMemoryUnCommittedRunsLeaveNothing(t *testing.T) {
	t.Parallel()
	m := NewMemory(nil)
	ctx := context.Background()
	for i := range 100 {
		run := RunRef{Agent: "a", ID: "r" + strconv.Itoa(i)}
		lim := Limits{MaxRisk: 0.5, AgentWindow: time.Hour}
		if res, err := m.Commit(ctx, run, st("a", 1), lim, time.Hour); err != nil || res.Outcome != Refused {
			t.Fatalf("%v %v", res.Outcome, err)
		}
		if res, err := m.Commit(ctx, run, st("b", 0).withVersion(4), lim, time.Hour); err != nil || res.Outcome != Stale {
			t.Fatalf("%v %v", res.Outcome, err)
		}
	}
	if len(m.runs) != 0 || len(m.expiry) != 0 || len(m.owners) != 0 || len(m.agents) != 0 {
		t.Errorf("%d runs, %d heap entries, %d owners, %d agents after only refused and stale steps",
			len(m.runs), len(m.expiry), len(m.owners), len(m.agents))
	}
}

// alive reports whether run is live without refreshing it: a Stale commit
// touches nothing.
func alive(t *testing.T, s Store, run RunRef) bool {
	t.Helper()
	res, err := s.Commit(context.Background(), run, st("probe", 0).withVersion(maxExactInt), Limits{}, time.Hour)
	if err != nil || res.Outcome != Stale {
		t.Fatalf("probe: %v %v", res.Outcome, err)
	}
	return res.State.Version > 0
}

// TestMemoryLifetime: a run lives ttl after its last touch: a commit, a
// refusal (with the refusal's ttl), a Load (with the last commit's ttl); a
// duplicate or stale commit does not touch it. Its owner lives as long, and
// another agent may take the run id once both are gone.
func TestMemoryLifetime(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: t0}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	mustCommit := func(run RunRef, s Step, lim Limits, ttl time.Duration, want Outcome) {
		t.Helper()
		if res, err := m.Commit(ctx, run, s, lim, ttl); err != nil || res.Outcome != want {
			t.Fatalf("commit %s: %v %v, want %v", s.RequestID, res.Outcome, err, want)
		}
	}
	mustCommit(runA, st("a", 0), Limits{}, 10*time.Minute, Committed)
	clk.Advance(5 * time.Minute)
	mustCommit(runA, st("b", 0), Limits{MaxToolCalls: 1}, time.Hour, Refused) // lives to +65m
	clk.Advance(59 * time.Minute)                                             // +64m
	if !alive(t, m, runA) {
		t.Fatal("a refusal did not refresh the run")
	}
	if owner, _ := m.ClaimRun(ctx, runB, time.Hour); owner != runA.Agent {
		t.Fatalf("owner %q: a refusal did not refresh the owner", owner)
	}
	if _, err := m.Load(ctx, runA, ""); err != nil { // the last commit's ttl: lives to +74m
		t.Fatal(err)
	}
	clk.Advance(9 * time.Minute) // +73m
	mustCommit(runA, st("a", 0), Limits{}, time.Hour, Duplicate)
	if !alive(t, m, runA) {
		t.Fatal("a Load did not refresh the run")
	}
	clk.Advance(2 * time.Minute) // +75m: a Load with the refusal's hour would still hold it
	if alive(t, m, runA) {
		t.Fatal("the run outlived the ttl of its last commit after a Load, or a duplicate refreshed it")
	}
	if owner, _ := m.ClaimRun(ctx, runB, time.Hour); owner != runB.Agent {
		t.Fatalf("owner %q after the run expired, want %q", owner, runB.Agent)
	}
}

// TestMemoryAgentUsageFollowsItsWindow: a Load (which has no Limits) and every
// Commit outcome report the agent's usage in the current window of the length
// it was counted in — zero, with the new window's start, once that window has
// passed — and nothing once the usage has expired.
func TestMemoryAgentUsageFollowsItsWindow(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: WindowStart(t0, time.Minute).Add(10 * time.Second)}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	lim := Limits{AgentWindow: time.Minute, AgentMaxToolCalls: 1}
	res, err := m.Commit(ctx, runA, st("a", 0), lim, time.Hour)
	if err != nil || res.State.Agent.ToolCalls != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	clk.Advance(time.Minute)
	next := AgentUsage{WindowStart: WindowStart(clk.Now(), time.Minute)}
	ld, err := m.Load(ctx, runA, "")
	if err != nil || ld.Agent != next {
		t.Errorf("Load in the next window reports %+v, want %+v", ld.Agent, next)
	}
	for _, c := range []struct {
		step Step
		lim  Limits
	}{
		{st("b", 0), Limits{MaxToolCalls: 1}},   // refused, no window in its limits
		{st("c", 0).withVersion(0), Limits{}},   // stale
		{st("a", 0), Limits{}},                  // duplicate
		{st("d", 0), Limits{}},                  // committed, not counted
		{st("e", 0), Limits{MaxToolCalls: 100}}, // committed, not counted
	} {
		res, err := m.Commit(ctx, runA, c.step, c.lim, time.Hour)
		if err != nil || res.State.Agent != next {
			t.Errorf("%s %v: agent usage %+v, want %+v (%v)", c.step.RequestID, res.Outcome, res.State.Agent, next, err)
		}
	}
	if res, err := m.Commit(ctx, runA2, st("f", 0), lim, time.Hour); err != nil || res.Outcome != Committed {
		t.Errorf("the next window's budget: %v %q %v", res.Outcome, res.Limit, err)
	}
	clk.Advance(2 * time.Hour)
	if ld, err := m.Load(ctx, RunRef{Agent: runA.Agent, ID: "other"}, ""); err != nil || ld.Agent != (AgentUsage{}) {
		t.Errorf("expired usage reads %+v, want none", ld.Agent)
	}
	if len(m.agents) != 0 {
		t.Errorf("%d expired agents' usage held", len(m.agents))
	}
}

// TestMemoryNonceSweep: expired nonces are dropped once the map passes the
// sweep threshold, and the threshold follows the live count so a large live
// set is not rescanned on every call.
func TestMemoryNonceSweep(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: t0}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	use := func(id string, ttl time.Duration) {
		t.Helper()
		if first, err := m.UseOnce(ctx, id, "owner", ttl); err != nil || !first {
			t.Fatalf("UseOnce(%s) = %v, %v", id, first, err)
		}
	}
	for i := range minNonceSweep - 1 {
		use("old-"+strconv.Itoa(i), time.Minute)
	}
	clk.Advance(2 * time.Minute)
	use("new-0", time.Hour) // reaches the threshold: no sweep yet
	if len(m.nonces) != minNonceSweep {
		t.Fatalf("%d nonces, want %d", len(m.nonces), minNonceSweep)
	}
	use("new-1", time.Hour) // passes it
	if len(m.nonces) != 2 || m.nonceSweepAt != minNonceSweep {
		t.Fatalf("after the sweep: %d nonces, next sweep at %d; want 2 and %d", len(m.nonces), m.nonceSweepAt, minNonceSweep)
	}

	for i := range minNonceSweep - 1 { // the last one passes the threshold with nothing expired
		use("live-"+strconv.Itoa(i), time.Hour)
	}
	if want := 2 * (minNonceSweep + 1); m.nonceSweepAt != want {
		t.Errorf("with %d live nonces the next sweep is at %d, want %d", len(m.nonces), m.nonceSweepAt, want)
	}
}
