package riskstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

var idxT0 = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)

// stepLogs are the stores with a step log, fresh for each test.
func stepLogs(t *testing.T) map[string]func(t *testing.T) StepLog {
	out := map[string]func(t *testing.T) StepLog{}
	for _, kind := range storeKinds() {
		out[kind.name] = func(t *testing.T) StepLog { return kind.open(t, time.Now).(StepLog) }
	}
	return out
}

// waitRuns polls until the index lists want runs (Redis writes in the
// background) and returns the full listing, paged by limit.
func waitRuns(t *testing.T, l StepLog, q RunQuery, want int) []RunSummary {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := listAll(t, l, q)
		if len(got) >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func listAll(t *testing.T, l StepLog, q RunQuery) []RunSummary {
	t.Helper()
	var all []RunSummary
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatal("listing does not end")
		}
		page, err := l.ListRuns(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Runs...)
		if page.Next == 0 {
			return all
		}
		if q.Before != 0 && page.Next >= q.Before {
			t.Fatalf("cursor went backwards: %d after %d", page.Next, q.Before)
		}
		q.Before = page.Next
	}
}

func refsOf(s []RunSummary) []string {
	out := make([]string, len(s))
	for i, r := range s {
		out[i] = r.Run.Agent + "@" + r.Run.ID
	}
	return out
}

// TestRunIndex: runs appended from any client list newest first, every run
// exactly once across pages, filtered by agent, decision and time; a run id
// two agents used names both; a summary counts steps and keeps the committed
// risk.
func TestRunIndex(t *testing.T) {
	for name, open := range stepLogs(t) {
		t.Run(name, func(t *testing.T) {
			l := open(t)
			ctx := context.Background()
			// 23 runs of three agents, one step each, a second apart; run 7 also
			// used by agent "a" (a refused attempt on another's run id).
			var want []string
			for i := range 23 {
				ref := RunRef{Agent: []string{"a", "b", "c"}[i%3], ID: fmt.Sprintf("run-%02d", i)}
				dec := "allow"
				if i%5 == 0 {
					dec = "deny"
				}
				l.AppendStep(ref, StepMeta{TS: idxT0.Add(time.Duration(i) * time.Second), Decision: dec, CumulativeRisk: float64(i), Committed: dec == "allow"}, []byte("s"))
				want = append([]string{ref.Agent + "@" + ref.ID}, want...)
			}
			l.AppendStep(RunRef{Agent: "a", ID: "run-07"}, StepMeta{TS: idxT0.Add(30 * time.Second), Decision: "deny"}, []byte("s"))
			want = append([]string{"a@run-07"}, want...)

			got := waitRuns(t, l, RunQuery{Limit: 4}, len(want))
			if diff := cmp.Diff(want, refsOf(got)); diff != "" {
				t.Fatalf("listing by 4 (-want +got):\n%s", diff)
			}
			for _, limit := range []int{1, 7, 24, MaxRunsPage} {
				if diff := cmp.Diff(want, refsOf(listAll(t, l, RunQuery{Limit: limit}))); diff != "" {
					t.Errorf("listing by %d (-want +got):\n%s", limit, diff)
				}
			}

			// A step on a listed run moves it to the front: a listing under way
			// never returns it twice.
			page, err := l.ListRuns(ctx, RunQuery{Limit: 5})
			if err != nil {
				t.Fatal(err)
			}
			moved := page.Runs[1].Run
			l.AppendStep(moved, StepMeta{TS: idxT0.Add(40 * time.Second), Decision: "require_approval", CumulativeRisk: 99}, []byte("s2"))
			deadline := time.Now().Add(10 * time.Second)
			for {
				if first, _ := l.ListRuns(ctx, RunQuery{Limit: 1}); len(first.Runs) == 1 && first.Runs[0].Run == moved {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the updated run did not move to the front")
				}
				time.Sleep(20 * time.Millisecond)
			}
			rest := listAll(t, l, RunQuery{Limit: 5, Before: page.Next})
			seen := append(refsOf(page.Runs), refsOf(rest)...)
			for i, r := range seen {
				if slices.Contains(seen[:i], r) {
					t.Errorf("%s listed twice in one pass", r)
				}
			}

			sum, err := l.Run(ctx, moved)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Steps != 2 || sum.LastDecision != "require_approval" || !sum.Updated.Equal(idxT0.Add(40*time.Second)) ||
				sum.Decisions["require_approval"] != 1 || sum.CumulativeRisk == 99 {
				t.Errorf("summary of %v: %+v (an uncommitted step's risk is not the run's)", moved, sum)
			}
			if _, err := l.Run(ctx, RunRef{Agent: "a", ID: "nope"}); !errors.Is(err, ErrNotFound) {
				t.Errorf("unknown run: %v, want ErrNotFound", err)
			}

			// Filters.
			for _, r := range listAll(t, l, RunQuery{Limit: 3, Agent: "b"}) {
				if r.Run.Agent != "b" {
					t.Errorf("agent filter let %v through", r.Run)
				}
			}
			if n := len(listAll(t, l, RunQuery{Limit: 3, Agent: "a"})); n != 9 {
				t.Errorf("agent a has %d runs listed, want 9", n)
			}
			denied := refsOf(listAll(t, l, RunQuery{Limit: 2, Decision: "deny"}))
			if diff := cmp.Diff([]string{"a@run-07", "c@run-20", "a@run-15", "b@run-10", "c@run-05", "a@run-00"}, denied); diff != "" {
				t.Errorf("runs with a deny (-want +got):\n%s", diff)
			}
			since := listAll(t, l, RunQuery{Limit: 10, Since: idxT0.Add(20 * time.Second)})
			for _, r := range since {
				if r.Updated.Before(idxT0.Add(20 * time.Second)) {
					t.Errorf("since let %v (%v) through", r.Run, r.Updated)
				}
			}
			if len(since) != 4 { // runs 20, 21, 22 (moved, at 40 s) and a@run-07
				t.Errorf("since: %v, want 4 runs", refsOf(since))
			}

			agents, err := l.RunAgents(ctx, "run-07")
			if err != nil || !slices.Equal(agents, []string{"a", "b"}) {
				t.Errorf("agents of run-07: %v %v", agents, err)
			}
			if agents, _ := l.RunAgents(ctx, "no-such-run"); len(agents) != 0 {
				t.Errorf("agents of an unknown run: %v", agents)
			}

			for _, q := range []RunQuery{{Limit: 0}, {Limit: MaxRunsPage + 1}, {Limit: 1, Decision: string(make([]byte, 65))}} {
				if _, err := l.ListRuns(ctx, q); !errors.Is(err, ErrBadQuery) {
					t.Errorf("ListRuns(%+v): %v, want ErrBadQuery", q, err)
				}
			}
		})
	}
}

// TestRunIndexIsBounded: past its capacity the index forgets the least
// recently updated runs, in memory and in Redis alike.
func TestRunIndexIsBounded(t *testing.T) {
	for name, open := range stepLogs(t) {
		t.Run(name, func(t *testing.T) {
			l := open(t)
			switch s := l.(type) {
			case *Memory:
				s.log.cap = 10
			case *Redis:
				s.log.cap = 10
			}
			for i := range 25 {
				l.AppendStep(RunRef{Agent: "a", ID: fmt.Sprint(i)}, StepMeta{TS: idxT0, Decision: "allow"}, []byte("s"))
			}
			l.AppendStep(RunRef{Agent: "a", ID: "last"}, StepMeta{TS: idxT0, Decision: "allow"}, []byte("s"))
			deadline := time.Now().Add(10 * time.Second)
			var got []RunSummary
			for {
				got = listAll(t, l, RunQuery{Limit: 100})
				if len(got) > 0 && got[0].Run.ID == "last" || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			want := []string{"a@last"}
			for i := 24; i >= 16; i-- {
				want = append(want, fmt.Sprintf("a@%d", i))
			}
			if diff := cmp.Diff(want, refsOf(got)); diff != "" {
				t.Fatalf("bounded index (-want +got):\n%s", diff)
			}
			// What the index forgot, the log forgets too: its memory is
			// bounded by the index, not by a day of traffic.
			deadline = time.Now().Add(10 * time.Second)
			for {
				steps, err := l.Steps(context.Background(), RunRef{Agent: "a", ID: "0"})
				if err != nil {
					t.Fatal(err)
				}
				if len(steps) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the log of a run the index forgot is kept")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if steps, _ := l.Steps(context.Background(), RunRef{Agent: "a", ID: "24"}); len(steps) != 1 {
				t.Fatalf("an indexed run's log holds %d steps, want 1", len(steps))
			}
		})
	}
}

// TestMemoryStepLogBytesBounded: the memory store's records are bounded in
// bytes, not only in count.
func TestMemoryStepLogBytesBounded(t *testing.T) {
	m := NewMemory(time.Now)
	rec := make([]byte, 1<<20)
	for i := range 300 { // 300 MiB offered
		m.AppendStep(RunRef{Agent: "a", ID: fmt.Sprint(i)}, StepMeta{TS: idxT0, Decision: "allow"}, rec)
	}
	if m.log.bytes > maxMemLogBytes {
		t.Fatalf("memory step log holds %d bytes, bound %d", m.log.bytes, maxMemLogBytes)
	}
	if steps, _ := m.Steps(context.Background(), RunRef{Agent: "a", ID: "299"}); len(steps) != 1 {
		t.Fatal("the newest run was evicted")
	}
	if steps, _ := m.Steps(context.Background(), RunRef{Agent: "a", ID: "0"}); len(steps) != 0 {
		t.Fatal("the oldest run was kept past the bound")
	}
}

// TestRunIndexScanBudget: a selective filter over many runs returns short
// pages with a cursor rather than scanning without end, and still lists every
// matching run exactly once.
func TestRunIndexScanBudget(t *testing.T) {
	for name, open := range stepLogs(t) {
		t.Run(name, func(t *testing.T) {
			l := open(t)
			switch s := l.(type) {
			case *Memory:
				s.log.scan = 4
			case *Redis:
				s.log.scan = 4
			}
			var want []string
			for i := range 40 {
				ref := RunRef{Agent: "busy", ID: fmt.Sprint(i)}
				if i%9 == 0 {
					ref.Agent = "rare"
					want = append([]string{"rare@" + ref.ID}, want...)
				}
				l.AppendStep(ref, StepMeta{TS: idxT0, Decision: "allow"}, []byte("s"))
			}
			if all := waitRuns(t, l, RunQuery{Limit: 100}, 40); len(all) < 40 {
				t.Fatalf("the index lists %d of 40 runs; %d steps dropped", len(all), l.DroppedSteps())
			}
			var got []string
			q, pages, short := RunQuery{Limit: 2, Agent: "rare"}, 0, 0
			for ; ; pages++ {
				page, err := l.ListRuns(context.Background(), q)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, refsOf(page.Runs)...)
				if page.Next == 0 {
					break
				}
				if len(page.Runs) < q.Limit {
					short++
				}
				q.Before = page.Next
			}
			if diff := cmp.Diff(want, got); diff != "" || short == 0 {
				t.Fatalf("listing with a scan budget of 4 (%d short pages) (-want +got):\n%s", short, diff)
			}
		})
	}
}

// BenchmarkMemoryAppendStep: what the memory store's step log and run index
// add to a Check (the Redis store's append is a channel send), with the index
// full of runs so eviction and compaction are in the figure.
func BenchmarkMemoryAppendStep(b *testing.B) {
	m := NewMemory(time.Now)
	rec := make([]byte, 600)
	refs := make([]RunRef, 4096)
	for i := range refs {
		refs[i] = RunRef{Agent: "a", ID: fmt.Sprint(i)}
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		run := refs[i%len(refs)]
		if i%3 == 0 {
			run = RunRef{Agent: "b", ID: fmt.Sprint(i)} // a new run: the index grows to its bound, then evicts
		}
		m.AppendStep(run, StepMeta{TS: idxT0, Decision: "allow", Committed: true}, rec)
	}
}

// TestStepLogDropsOnlyWhatFailed: one entry Redis refuses (its log key holds
// a string) is retried, then dropped and counted alone; the entries written
// in the same pipeline land and list.
func TestStepLogDropsOnlyWhatFailed(t *testing.T) {
	t.Parallel()
	r := newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr()})
	poison := RunRef{Agent: "a", ID: "poison"}
	if err := r.c().Set(context.Background(), r.logKey(poison), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		ref := RunRef{Agent: "a", ID: fmt.Sprint(i)}
		if i == 2 {
			ref = poison
		}
		r.AppendStep(ref, StepMeta{TS: idxT0, Decision: "allow"}, []byte("s"))
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.DroppedSteps() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := waitRuns(t, r, RunQuery{Limit: 100}, 4)
	if len(got) < 4 || r.DroppedSteps() != 1 {
		t.Fatalf("listed %d runs, dropped %d; want the 4 good ones listed and 1 dropped", len(got), r.DroppedSteps())
	}
	for _, i := range []string{"0", "1", "3", "4"} {
		if steps, err := r.Steps(context.Background(), RunRef{Agent: "a", ID: i}); err != nil || len(steps) != 1 {
			t.Fatalf("run %s: %d steps, %v", i, len(steps), err)
		}
	}
}

// TestStepLogAfterScriptFlush: Redis forgets loaded scripts when it restarts
// (SCRIPT FLUSH here); the writer loads them again and the step lands, its
// log and summary expiring with the run.
func TestStepLogAfterScriptFlush(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	r := newRedisStore(t, RedisOptions{URL: "redis://" + srv.Addr()})
	c := srv.Client(t)
	ctx := context.Background()
	r.AppendStep(RunRef{Agent: "a", ID: "before"}, StepMeta{TS: idxT0, Decision: "allow"}, []byte("s"))
	waitRuns(t, r, RunQuery{Limit: 10}, 1)
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	run := RunRef{Agent: "a", ID: "after"}
	r.AppendStep(run, StepMeta{TS: idxT0, Decision: "allow"}, []byte("s"))
	if got := waitRuns(t, r, RunQuery{Limit: 10}, 2); len(got) != 2 || r.DroppedSteps() != 0 {
		t.Fatalf("listed %d runs, dropped %d after a script flush", len(got), r.DroppedSteps())
	}
	for _, k := range []string{r.logKey(run), r.sumKey(run), r.agentsKey(run.ID)} {
		if d, err := c.PTTL(ctx, k).Result(); err != nil || d <= logTTL-time.Minute || d > logTTL {
			t.Errorf("key %q lives %v (%v), want about %v", k, d, err, logTTL)
		}
	}
}
