package riskstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

// convOp is one call in a conformance scenario: a Commit, or a Load when load is set.
type convOp struct {
	load bool
	req  string // request id (Load's or the step's)
	at   time.Duration
	step Step
	lim  Limits
	// Expected for a Commit; the full results are also compared across stores.
	outcome Outcome
	limit   string
	// Expected for a Load: whether a Prior is found, and the tool calls.
	prior bool
	calls int64
}

func sum(tool string, risk float64) StepSummary {
	return StepSummary{Tool: tool, Class: "read", Trust: "internal", Risk: risk, At: t0}
}

func commit(req string, s StepSummary, lim Limits, outcome Outcome, limit string) convOp {
	return convOp{req: req, step: Step{ExpectVersion: AnyVersion, RequestID: req, DecisionID: "d-" + req, Summary: s}, lim: lim, outcome: outcome, limit: limit}
}

// commitV is commit with an expected version.
func commitV(req string, s StepSummary, lim Limits, version int64, outcome Outcome, limit string) convOp {
	op := commit(req, s, lim, outcome, limit)
	op.step.ExpectVersion = version
	return op
}

func conformanceScenarios() map[string][]convOp {
	calls3 := Limits{MaxToolCalls: 3}
	calls1 := Limits{MaxToolCalls: 1}
	zeroExpect := commit("z2", sum("x", 0), Limits{}, Stale, "")
	zeroExpect.step = Step{RequestID: "z2"} // the zero value expects version 0
	window := make([]convOp, 0, Window+5)
	for i := range Window + 4 {
		window = append(window, commit("w"+strconv.Itoa(i), sum("tool"+strconv.Itoa(i), 0.01), Limits{}, Committed, ""))
	}
	window = append(window, convOp{load: true, calls: Window + 4})

	costOp := func(req string, cost int64, outcome Outcome, limit string) convOp {
		op := commit(req, sum("pay", 0), Limits{MaxCostMicros: 1_000_000}, outcome, limit)
		op.step.CostMicros = cost
		return op
	}
	writeOp := func(req string, write bool, outcome Outcome, limit string) convOp {
		op := commit(req, sum("w", 0), Limits{MaxWriteOperations: 1}, outcome, limit)
		op.step.Write = write
		return op
	}
	execOp := func(req string, at time.Duration, outcome Outcome, limit string) convOp {
		op := commit(req, sum("t", 0), Limits{MaxExecutionTime: 10 * time.Second}, outcome, limit)
		op.at = at
		op.step.Summary.At = t0.Add(at)
		return op
	}
	riskLim := Limits{MaxRisk: 1.335}
	odd := StepSummary{Tool: "a|b:c\x00{}", Class: "", Trust: "é", Untrusted: true, Risk: 1e-7}

	return map[string][]convOp{
		"commit, duplicate, prior on load": {
			commit("r1", sum("read_crm", 0.1), Limits{}, Committed, ""),
			commit("r1", sum("read_crm", 0.1), Limits{}, Duplicate, ""),
			{load: true, req: "r1", prior: true, calls: 1},
			{load: true, req: "", calls: 1},
			{load: true, req: "unknown", calls: 1},
		},
		"load of an unknown run": {
			{load: true, req: "r1"},
		},
		"tool calls budget": {
			commit("a", sum("x", 0), calls3, Committed, ""),
			commit("b", sum("x", 0), calls3, Committed, ""),
			commit("c", sum("x", 0), calls3, Committed, ""),
			commit("d", sum("x", 0), calls3, Refused, BudgetToolCalls),
			commit("c", sum("x", 0), calls3, Duplicate, ""), // a retry is answered before the limits
		},
		"write operations budget": {
			writeOp("a", true, Committed, ""),
			writeOp("b", false, Committed, ""),
			writeOp("c", true, Refused, BudgetWriteOps),
		},
		"cost budget in micro-units": {
			costOp("a", 600_000, Committed, ""),
			costOp("b", 400_000, Committed, ""), // exactly at the budget
			costOp("c", 1, Refused, BudgetCost),
			costOp("d", 0, Committed, ""),
		},
		"execution time since the run's start": {
			execOp("a", 0, Committed, ""),
			execOp("b", 10*time.Second, Committed, ""), // not above the budget
			execOp("c", 10*time.Second+time.Nanosecond, Refused, BudgetExecutionTime),
			execOp("d", -time.Hour, Committed, ""),
		},
		"execution time budget does not apply before the first step": {
			execOp("a", 1000*time.Hour, Committed, ""),
			execOp("b", 1000*time.Hour+10*time.Second+1, Refused, BudgetExecutionTime),
		},
		"risk threshold with the worked example and epsilon": {
			commit("s1", sum("read_crm", 0.10), riskLim, Committed, ""),
			commit("s2", sum("read_doc", 0.96), riskLim, Committed, ""),
			commit("s3", sum("send_email", 0.275), riskLim, Committed, ""), // lands on 1.335
			commit("s4", sum("x", 0.01), riskLim, Refused, BudgetRisk),
			{load: true, req: "s3", prior: true, calls: 3},
		},
		"epsilon absorbs rounding on the threshold": {
			commit("a", sum("x", 0.1), Limits{MaxRisk: 0.3}, Committed, ""),
			commit("b", sum("x", 0.2), Limits{MaxRisk: 0.3}, Committed, ""), // 0.30000000000000004
			commit("c", sum("x", 1e-8), Limits{MaxRisk: 0.3}, Refused, BudgetRisk),
		},
		"first limit in order wins": {
			commit("a", sum("x", 0.5), Limits{MaxToolCalls: 1, MaxRisk: 0.6}, Committed, ""),
			commit("b", sum("x", 0.5), Limits{MaxToolCalls: 1, MaxRisk: 0.6}, Refused, BudgetToolCalls),
			commit("c", sum("x", 0.5), Limits{MaxRisk: 0.6, MaxCostMicros: 1}, Refused, BudgetRisk),
		},
		"refused first step leaves no run": {
			commit("a", sum("x", 0.7), Limits{MaxRisk: 0.5}, Refused, BudgetRisk),
			{load: true, req: "a"},
		},
		"a refused request id may commit later": {
			commit("a", sum("x", 0), Limits{MaxToolCalls: 1}, Committed, ""),
			commit("b", sum("x", 0), Limits{MaxToolCalls: 1}, Refused, BudgetToolCalls),
			commit("b", sum("x", 0), Limits{MaxToolCalls: 2}, Committed, ""),
		},
		"empty request id commits every time": {
			commit("", sum("x", 0.1), Limits{}, Committed, ""),
			commit("", sum("x", 0.1), Limits{}, Committed, ""),
			{load: true, req: "", calls: 2},
		},
		"long request id": {
			commit(string(make([]byte, 300)), sum("x", 0.1), Limits{}, Committed, ""),
			commit(string(make([]byte, 300)), sum("x", 0.1), Limits{}, Duplicate, ""),
			{load: true, req: string(make([]byte, 300)), prior: true, calls: 1},
		},
		"odd summaries round-trip": {
			commit("a", odd, Limits{}, Committed, ""),
			commit("b", StepSummary{}, Limits{}, Committed, ""),
			{load: true, calls: 2},
		},
		"recent window is bounded": window,

		"version increments per commit": {
			{load: true},
			commitV("v1", sum("x", 0.1), Limits{}, 0, Committed, ""),
			commitV("v2", sum("x", 0.1), Limits{}, 1, Committed, ""),
			commitV("v3", sum("x", 0.1), calls3, 2, Committed, ""),
			commitV("v4", sum("x", 0.1), calls3, 3, Refused, BudgetToolCalls), // version unchanged
			commitV("v4", sum("x", 0.1), Limits{}, 3, Committed, ""),
			{load: true, req: "v4", prior: true, calls: 4},
		},
		"stale expectation changes nothing and returns the current state": {
			commit("a", sum("read_crm", 0.1), Limits{}, Committed, ""),
			commit("b", sum("read_doc", 0.2), Limits{}, Committed, ""),
			commit("c", sum("send_email", 0.3), Limits{}, Committed, ""),
			commitV("d", sum("x", 0.4), Limits{}, 1, Stale, ""),
			commitV("d", sum("x", 0.4), Limits{}, 0, Stale, ""),
			commitV("d", sum("x", 0.4), Limits{}, 9, Stale, ""), // ahead of the run
			{load: true, req: "d", calls: 3},                    // a stale step is not remembered
			commitV("d", sum("x", 0.4), Limits{}, 3, Committed, ""),
		},
		"the zero expected version means an empty run": {
			commitV("z1", sum("x", 0), Limits{}, 0, Committed, ""),
			zeroExpect,
		},
		"stale on an unknown run leaves no run": {
			commitV("a", sum("x", 0.1), Limits{}, 2, Stale, ""),
			{load: true, req: "a"},
			commitV("a", sum("x", 0.1), Limits{}, 0, Committed, ""),
		},
		"duplicate beats stale": {
			commitV("a", sum("x", 0.1), Limits{}, 0, Committed, ""),
			commitV("a", sum("x", 0.1), Limits{}, 0, Duplicate, ""), // a retry of the same decision
			commitV("a", sum("x", 0.1), Limits{}, 7, Duplicate, ""),
			commitV("a", sum("x", 0.1), calls1, 0, Duplicate, ""),
		},
		"stale beats refused": {
			commitV("a", sum("x", 0), calls1, 0, Committed, ""),
			commitV("b", sum("x", 0), calls1, 0, Stale, ""), // decided on a gone state: no limit reported
			commitV("b", sum("x", 0), calls1, 1, Refused, BudgetToolCalls),
		},
		"any version skips the check": {
			commitV("a", sum("x", 0.1), Limits{}, AnyVersion, Committed, ""),
			commitV("b", sum("x", 0.1), Limits{}, AnyVersion, Committed, ""),
			commitV("c", sum("x", 0.1), Limits{}, 2, Committed, ""),
			commitV("d", sum("x", 0.1), calls3, AnyVersion, Refused, BudgetToolCalls),
			commitV("c", sum("x", 0.1), Limits{}, AnyVersion, Duplicate, ""),
		},
	}
}

// runScenario plays ops and returns every result, for comparison across stores.
// Besides each op's expectation it holds every store to two invariants: the
// version is the number of Committed outcomes so far, and a Commit's State —
// whatever the outcome — is exactly what a Load returns right after it.
func runScenario(t *testing.T, s Store, runID string, ops []convOp) []any {
	ctx := context.Background()
	var out []any
	var commits int64
	for i, op := range ops {
		if op.load {
			st, err := s.Load(ctx, runID, op.req)
			if err != nil {
				t.Fatalf("op %d: load: %v", i, err)
			}
			if (st.Prior != nil) != op.prior || st.ToolCalls != op.calls {
				t.Errorf("op %d: load: prior %v calls %d, want prior %v calls %d", i, st.Prior != nil, st.ToolCalls, op.prior, op.calls)
			}
			if st.Version != commits {
				t.Errorf("op %d: load: version %d after %d commits", i, st.Version, commits)
			}
			if len(st.Recent) > Window {
				t.Errorf("op %d: %d recent steps, window is %d", i, len(st.Recent), Window)
			}
			out = append(out, st)
			continue
		}
		res, err := s.Commit(ctx, runID, op.step, op.lim, t0.Add(op.at), time.Hour)
		if err != nil {
			t.Fatalf("op %d: commit: %v", i, err)
		}
		if res.Outcome != op.outcome || res.Limit != op.limit {
			t.Errorf("op %d: commit: %v %q, want %v %q", i, res.Outcome, res.Limit, op.outcome, op.limit)
		}
		if (res.Outcome == Duplicate) != (res.Prior != nil) {
			t.Errorf("op %d: outcome %v with prior %v", i, res.Outcome, res.Prior)
		}
		if res.Outcome == Committed {
			commits++
		}
		if res.State.Version != commits {
			t.Errorf("op %d: %v: version %d after %d commits", i, res.Outcome, res.State.Version, commits)
		}
		after, err := s.Load(ctx, runID, "")
		if err != nil {
			t.Fatalf("op %d: load after commit: %v", i, err)
		}
		if diff := cmp.Diff(after, res.State); diff != "" {
			t.Errorf("op %d: %v: state differs from the run's (-load +commit):\n%s", i, res.Outcome, diff)
		}
		out = append(out, res)
	}
	return out
}

func TestConformance(t *testing.T) {
	scenarios := conformanceScenarios()
	// The memory store is the reference; every other store must give its answers.
	ref := make(map[string][]any)
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			for name, ops := range scenarios {
				t.Run(name, func(t *testing.T) {
					s := kind.open(t, time.Now)
					got := runScenario(t, s, "run-1.a_b:c@d", ops)
					if kind.name == "memory" {
						ref[name] = got
						return
					}
					want, ok := ref[name]
					if !ok {
						t.Skip("memory reference did not run")
					}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("%s differs from memory (-memory +%s):\n%s", kind.name, kind.name, diff)
					}
				})
			}
		})
	}
}

// TestConformanceRecentWindow pins the window's content, not only its size.
func TestConformanceRecentWindow(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			const n = Window + 5
			for i := range n {
				step := Step{ExpectVersion: AnyVersion, RequestID: strconv.Itoa(i), Summary: StepSummary{Tool: "t" + strconv.Itoa(i), At: t0.Add(time.Duration(i))}}
				if _, err := s.Commit(ctx, "w", step, Limits{}, t0, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			st, err := s.Load(ctx, "w", "")
			if err != nil {
				t.Fatal(err)
			}
			var tools []string
			for _, r := range st.Recent {
				tools = append(tools, r.Tool)
			}
			var want []string
			for i := n - Window; i < n; i++ {
				want = append(want, "t"+strconv.Itoa(i))
			}
			if diff := cmp.Diff(want, tools); diff != "" {
				t.Errorf("recent tools (-want +got):\n%s", diff)
			}
		})
	}
}

// TestConcurrentCommitsExactBudget: 200 concurrent Commits on one run with 10
// calls of budget left → exactly 10 committed and the counter ends at the budget.
func TestConcurrentCommitsExactBudget(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			lim := Limits{MaxToolCalls: 15}
			for i := range 5 {
				if _, err := s.Commit(ctx, "hot", Step{ExpectVersion: AnyVersion, RequestID: "pre" + strconv.Itoa(i)}, lim, t0, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				outcomes = map[Outcome]int{}
				errs     []error
			)
			for i := range 200 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := s.Commit(ctx, "hot", Step{ExpectVersion: AnyVersion, RequestID: "c" + strconv.Itoa(i), Summary: StepSummary{Risk: 0.01}}, lim, t0, time.Hour)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
						return
					}
					outcomes[res.Outcome]++
				}()
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("%d errors, first: %v", len(errs), errs[0])
			}
			if diff := cmp.Diff(map[Outcome]int{Committed: 10, Refused: 190}, outcomes); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			st, err := s.Load(ctx, "hot", "")
			if err != nil {
				t.Fatal(err)
			}
			if st.ToolCalls != lim.MaxToolCalls {
				t.Errorf("tool calls = %d, want exactly %d", st.ToolCalls, lim.MaxToolCalls)
			}
		})
	}
}

// TestConcurrentCommitsSameVersion: 50 replicas decided on the same version of
// a run and commit at once → exactly one Committed; every other one is Stale
// and carries the state that commit produced.
func TestConcurrentCommitsSameVersion(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			const pre, racers = 5, 50
			for i := range pre {
				if _, err := s.Commit(ctx, "race", Step{RequestID: "pre" + strconv.Itoa(i), ExpectVersion: int64(i)}, Limits{}, t0, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				results []CommitResult
				errs    []error
			)
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					step := Step{RequestID: "c" + strconv.Itoa(i), Summary: StepSummary{Tool: "t" + strconv.Itoa(i), Risk: 0.5}, ExpectVersion: pre}
					res, err := s.Commit(ctx, "race", step, Limits{MaxRisk: 100}, t0, time.Hour)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
						return
					}
					results = append(results, res)
				}()
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("%d errors, first: %v", len(errs), errs[0])
			}
			outcomes := map[Outcome]int{}
			var winner State
			for _, res := range results {
				outcomes[res.Outcome]++
				if res.Outcome == Committed {
					winner = res.State
				}
			}
			if diff := cmp.Diff(map[Outcome]int{Committed: 1, Stale: racers - 1}, outcomes); diff != "" {
				t.Fatalf("outcomes (-want +got):\n%s", diff)
			}
			if winner.Version != pre+1 || winner.ToolCalls != pre+1 || winner.RiskTotal != 0.5 {
				t.Errorf("winner state %+v, want version and calls %d, risk 0.5", winner, pre+1)
			}
			for _, res := range results {
				if res.Outcome == Stale {
					if diff := cmp.Diff(winner, res.State); diff != "" {
						t.Errorf("a stale result does not carry the run's state (-winner +stale):\n%s", diff)
						break
					}
				}
			}
			st, err := s.Load(ctx, "race", "")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(winner, st); diff != "" {
				t.Errorf("run after the race (-winner +load):\n%s", diff)
			}
		})
	}
}

// TestConcurrentCommitsRetryOnStale plays the protocol of a caching replica:
// decide on the cached state, commit with its version, and on Stale decide
// again on the returned state, never calling Load. Every step lands once, with
// the risk it was decided with, and the cumulative limit holds exactly.
func TestConcurrentCommitsRetryOnStale(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			const workers, each = 4, 10
			lim := Limits{MaxToolCalls: workers*each - 3}
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				outcomes = map[Outcome]int{}
				errs     []error
			)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var cached State // this replica's view: starts empty, version 0
					for i := range each {
						step := Step{RequestID: strconv.Itoa(w) + "-" + strconv.Itoa(i), Summary: StepSummary{Risk: 0.25}}
						for attempt := 0; ; attempt++ {
							step.ExpectVersion = cached.Version
							res, err := s.Commit(ctx, "retry", step, lim, t0, time.Hour)
							if err != nil || attempt > 1000 {
								mu.Lock()
								errs = append(errs, fmt.Errorf("step %s attempt %d: %v %v", step.RequestID, attempt, res.Outcome, err))
								mu.Unlock()
								return
							}
							cached = res.State
							if res.Outcome != Stale {
								mu.Lock()
								outcomes[res.Outcome]++
								mu.Unlock()
								break
							}
						}
					}
				}()
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("%d errors, first: %v", len(errs), errs[0])
			}
			if diff := cmp.Diff(map[Outcome]int{Committed: int(lim.MaxToolCalls), Refused: 3}, outcomes); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			st, err := s.Load(ctx, "retry", "")
			if err != nil {
				t.Fatal(err)
			}
			if st.Version != lim.MaxToolCalls || st.ToolCalls != lim.MaxToolCalls || st.RiskTotal != 0.25*float64(lim.MaxToolCalls) {
				t.Errorf("run ends at version %d, calls %d, risk %v; want %d, %d, %v",
					st.Version, st.ToolCalls, st.RiskTotal, lim.MaxToolCalls, lim.MaxToolCalls, 0.25*float64(lim.MaxToolCalls))
			}
		})
	}
}

func TestConformanceRejectsBadExpectedVersion(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			for _, v := range []int64{-2, math.MinInt64, maxExactInt + 1, math.MaxInt64} {
				res, err := s.Commit(context.Background(), "r", Step{RequestID: "x", ExpectVersion: v}, Limits{}, t0, time.Hour)
				if err == nil || res.Outcome != 0 {
					t.Errorf("expected version %d: %v, %v; want an error and no outcome", v, res.Outcome, err)
				}
			}
			if res, err := s.Commit(context.Background(), "r", Step{RequestID: "x", ExpectVersion: maxExactInt}, Limits{}, t0, time.Hour); err != nil || res.Outcome != Stale {
				t.Errorf("expected version 2^53: %v, %v; want stale", res.Outcome, err)
			}
		})
	}
}

// approvalsTranscript plays the approval lifecycle and records every answer.
func approvalsTranscript(t *testing.T, s fullStore, clk *fakeClock) []string {
	ctx := context.Background()
	var out []string
	rec := func(what string, a Approval, err error) {
		out = append(out, fmt.Sprintf("%s: id=%s status=%s plan=%s by=%s why=%s decided=%v created=%v err=%v notfound=%v conflict=%v",
			what, a.ID, a.Status, a.PlanHash, a.DecidedBy, a.Why, a.DecidedAt.UnixNano(), a.CreatedAt.UnixNano(), err != nil,
			errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict)))
	}
	list := func(status string) {
		as, err := s.ListApprovals(ctx, status)
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		ids := ""
		for _, a := range as {
			ids += a.ID + "/" + a.Status + " "
		}
		out = append(out, "list "+status+": "+ids)
	}
	mk := func(id string, created time.Time) Approval {
		return Approval{ID: id, RunID: "run", AgentID: "agent", Tool: "send_email", PlanHash: "h-" + id,
			DecisionID: "dec-" + id, Risk: 1.3350000000000002, Reasons: []string{"chain_risk"}, CreatedAt: created}
	}
	for _, a := range []Approval{mk("a1", t0), mk("a2", t0.Add(time.Second)), mk("a3", t0.Add(time.Second))} {
		err := s.CreateApproval(ctx, a, time.Hour)
		rec("create "+a.ID, a, err)
	}
	err := s.CreateApproval(ctx, mk("a1", t0), time.Hour)
	rec("create a1 again", Approval{}, err)
	a, err := s.GetApproval(ctx, "a1")
	rec("get a1", a, err)
	if a.Risk != 1.3350000000000002 || len(a.Reasons) != 1 || a.Tool != "send_email" {
		t.Errorf("approval did not round-trip: %+v", a)
	}
	a, err = s.GetApproval(ctx, "nope")
	rec("get nope", a, err)
	list("")
	list(ApprovalPending)
	a, err = s.ConsumeApproval(ctx, "a1", "h-a1")
	rec("consume pending a1", a, err)
	a, err = s.DecideApproval(ctx, "a1", true, "alice", "looks fine", t0.Add(time.Minute))
	rec("approve a1", a, err)
	a, err = s.DecideApproval(ctx, "a1", false, "bob", "", t0.Add(2*time.Minute))
	rec("reject decided a1", a, err)
	a, err = s.DecideApproval(ctx, "nope", true, "bob", "", t0)
	rec("decide nope", a, err)
	a, err = s.ConsumeApproval(ctx, "a1", "h-other")
	rec("consume a1 other plan", a, err)
	a, err = s.ConsumeApproval(ctx, "a1", "h-a1")
	rec("consume a1", a, err)
	a, err = s.ConsumeApproval(ctx, "a1", "h-a1")
	rec("consume a1 again", a, err)
	a, err = s.ConsumeApproval(ctx, "nope", "h")
	rec("consume nope", a, err)
	a, err = s.DecideApproval(ctx, "a2", false, "bob", "no", t0.Add(time.Minute))
	rec("reject a2", a, err)
	a, err = s.ConsumeApproval(ctx, "a2", "h-a2")
	rec("consume rejected a2", a, err)
	list("")
	list(ApprovalUsed)
	clk.Advance(time.Hour + time.Second)
	a, err = s.GetApproval(ctx, "a1")
	rec("get expired a1", a, err)
	a, err = s.ConsumeApproval(ctx, "a3", "h-a3")
	rec("consume expired a3", a, err)
	list("")
	err = s.CreateApproval(ctx, mk("a1", t0.Add(2*time.Hour)), time.Hour)
	rec("recreate expired a1", Approval{}, err)
	a, err = s.GetApproval(ctx, "a1")
	rec("get new a1", a, err)
	return out
}

func TestConformanceApprovals(t *testing.T) {
	var ref []string
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			clk := &fakeClock{t: time.Now()}
			got := approvalsTranscript(t, kind.open(t, clk.Now), clk)
			if kind.name == "memory" {
				ref = got
				return
			}
			if diff := cmp.Diff(ref, got); diff != "" {
				t.Errorf("%s differs from memory (-memory +%s):\n%s", kind.name, kind.name, diff)
			}
		})
	}
	want := []string{"consume a1: id=a1 status=used", "consume a1 again: id=a1 status=used"}
	for _, w := range want {
		found := false
		for _, line := range ref {
			if len(line) >= len(w) && line[:len(w)] == w {
				found = true
			}
		}
		if !found {
			t.Errorf("memory transcript lacks %q:\n%v", w, ref)
		}
	}
}

func TestConformanceNonces(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			long := string(make([]byte, 200))
			var got []bool
			for _, id := range []string{"jti-1", "jti-1", "jti-2", long, long, "jti-1"} {
				first, err := s.UseOnce(ctx, id, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, first)
			}
			if diff := cmp.Diff([]bool{true, false, true, true, false, false}, got); diff != "" {
				t.Errorf("UseOnce (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConformanceRejectsNonFiniteRisk(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			for _, risk := range []float64{nan(), inf()} {
				_, err := s.Commit(context.Background(), "r", Step{ExpectVersion: AnyVersion, RequestID: "x", Summary: StepSummary{Risk: risk}}, Limits{MaxRisk: 2}, t0, time.Hour)
				if err == nil {
					t.Errorf("risk %v committed; a non-finite total would never trip max_risk", risk)
				}
			}
		})
	}
}

func nan() float64 { z := 0.0; return z / z }
func inf() float64 { z := 0.0; return 1 / z }
