package riskstore

import (
	"context"
	"strconv"
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
			t.Fatalf("run %s at heap position %d records %d", r.state.RunID, i, r.idx)
		}
		if m.runs[r.state.RunID] != r {
			t.Fatalf("run %s in the heap is not the map's", r.state.RunID)
		}
		if i > 0 && r.expires.Before(m.expiry[(i-1)/2].expires) {
			t.Fatalf("heap order broken at %d", i)
		}
	}
}

// TestMemorySweepsExpiredRuns: runs nobody touches again are removed by later
// calls on other runs, sweepBatch per call, and live runs are kept.
func TestMemorySweepsExpiredRuns(t *testing.T) {
	clk := &fakeClock{t: t0}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	seq := 0
	commit := func(run string, ttl time.Duration) {
		t.Helper()
		seq++
		res, err := m.Commit(ctx, run, Step{RequestID: strconv.Itoa(seq), ExpectVersion: AnyVersion}, Limits{}, t0, ttl)
		if err != nil || res.Outcome != Committed {
			t.Fatalf("commit %s: %v %v", run, res.Outcome, err)
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
		} else if _, err := m.Load(ctx, "nobody", ""); err != nil {
			t.Fatal(err)
		}
	}
	checkHeap(t, m)
	left := dead - 1 - calls*sweepBatch // expired runs not yet swept
	want := left + 1 + live + (calls+1)/2
	if len(m.runs) != want {
		t.Errorf("%d runs after %d calls, want %d (%d expired left)", len(m.runs), calls, want, left)
	}
	if _, err := m.Load(ctx, "nobody", ""); err != nil {
		t.Fatal(err)
	}
	for id := range m.runs {
		if id[:4] == "dead" && id != "dead-7" {
			t.Errorf("expired run %s still held", id)
		}
	}
	for id, version := range map[string]int64{"dead-7": 2, "live-0": 1, "live-9": 1} {
		if st, _ := m.Load(ctx, id, ""); st.Version != version {
			t.Errorf("live run %s: %+v, want version %d", id, st, version)
		}
	}
	checkHeap(t, m)
}

// TestMemoryExpiredRunStartsOver: an expired run reads as new (version 0)
// even before the sweep reaches it, and a commit expecting its old version is
// stale.
func TestMemoryExpiredRunStartsOver(t *testing.T) {
	clk := &fakeClock{t: t0}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	for i := range 3 {
		if _, err := m.Commit(ctx, "r", Step{RequestID: strconv.Itoa(i), ExpectVersion: int64(i)}, Limits{}, t0, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(2 * time.Minute)
	res, err := m.Commit(ctx, "r", Step{RequestID: "3", ExpectVersion: 3}, Limits{}, t0, time.Minute)
	if err != nil || res.Outcome != Stale || res.State.Version != 0 || res.State.ToolCalls != 0 {
		t.Fatalf("commit on an expired run = %+v, %v; want stale at version 0", res, err)
	}
	if len(m.runs) != 0 {
		t.Errorf("a stale commit left %d runs", len(m.runs))
	}
	checkHeap(t, m)
}

// TestMemoryUnCommittedRunsLeaveNothing: refused and stale first steps do not
// create runs (they used to stay forever: a run without an expiry).
func TestMemoryUnCommittedRunsLeaveNothing(t *testing.T) {
	m := NewMemory(nil)
	ctx := context.Background()
	for i := range 100 {
		run := "r" + strconv.Itoa(i)
		if res, err := m.Commit(ctx, run, Step{RequestID: "a", ExpectVersion: AnyVersion, Summary: StepSummary{Risk: 1}}, Limits{MaxRisk: 0.5}, t0, time.Hour); err != nil || res.Outcome != Refused {
			t.Fatalf("%v %v", res.Outcome, err)
		}
		if res, err := m.Commit(ctx, run, Step{RequestID: "b", ExpectVersion: 4}, Limits{}, t0, time.Hour); err != nil || res.Outcome != Stale {
			t.Fatalf("%v %v", res.Outcome, err)
		}
	}
	if len(m.runs) != 0 || len(m.expiry) != 0 {
		t.Errorf("%d runs and %d heap entries after only refused and stale steps", len(m.runs), len(m.expiry))
	}
}

// TestMemoryNonceSweep: expired nonces are dropped once the map passes the
// sweep threshold, and the threshold follows the live count so a large live
// set is not rescanned on every call.
func TestMemoryNonceSweep(t *testing.T) {
	clk := &fakeClock{t: t0}
	m := NewMemory(clk.Now)
	ctx := context.Background()
	use := func(id string, ttl time.Duration) {
		t.Helper()
		if first, err := m.UseOnce(ctx, id, ttl); err != nil || !first {
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
