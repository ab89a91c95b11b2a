package riskstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// t0 starts the fake clocks of the memory-only and approval tests.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

// The runs of the scenarios. runB is agent b under agent a's run id.
var (
	runA  = RunRef{Agent: "agent-a", ID: "run-1"}
	runA2 = RunRef{Agent: "agent-a", ID: "run-2"}
	runA3 = RunRef{Agent: "agent-a", ID: "run-3"}
	runA4 = RunRef{Agent: "agent-a", ID: "run-4"}
	runB  = RunRef{Agent: "agent-b", ID: "run-1"}
	runB2 = RunRef{Agent: "agent-b", ID: "run-b"}
	runC  = RunRef{Agent: "agent-c", ID: "run-c"}
)

// day is the agent window of the scenarios: long, so no scenario crosses one.
const day = 24 * time.Hour

type opKind int

const (
	opCommit opKind = iota
	opLoad
	opClaim
	opSleep
)

// convOp is one call in a conformance scenario.
type convOp struct {
	kind  opKind
	run   RunRef
	req   string // Load's request id
	step  Step
	lim   Limits
	sleep time.Duration

	// Expected of a Commit (its full result is also compared across stores).
	outcome Outcome
	limit   string
	// Expected of a Load: whether a Prior is found, and the tool calls.
	prior bool
	calls int64
	// Expected of a ClaimRun.
	owner string
	// check, when set, holds the State a Commit or Load returns to more.
	check func(State) error
}

func st(req string, risk float64, facts ...string) Step {
	return Step{RequestID: req, DecisionID: "d-" + req, Risk: risk, Facts: facts, ExpectVersion: AnyVersion}
}

func commitOn(run RunRef, s Step, lim Limits, outcome Outcome, limit string) convOp {
	return convOp{kind: opCommit, run: run, step: s, lim: lim, outcome: outcome, limit: limit}
}

// commit is a Commit on runA at any version.
func commit(req string, risk float64, lim Limits, outcome Outcome, limit string) convOp {
	return commitOn(runA, st(req, risk), lim, outcome, limit)
}

// commitV is commit with an expected version.
func commitV(req string, risk float64, lim Limits, version int64, outcome Outcome, limit string) convOp {
	op := commit(req, risk, lim, outcome, limit)
	op.step.ExpectVersion = version
	return op
}

func loadOn(run RunRef, req string, prior bool, calls int64) convOp {
	return convOp{kind: opLoad, run: run, req: req, prior: prior, calls: calls}
}

func claimOn(run RunRef, owner string) convOp { return convOp{kind: opClaim, run: run, owner: owner} }

func sleepFor(d time.Duration) convOp { return convOp{kind: opSleep, sleep: d} }

func (op convOp) with(f func(*convOp)) convOp { f(&op); return op }

func checking(op convOp, check func(State) error) convOp {
	op.check = check
	return op
}

func wantAgent(calls, cost int64) func(State) error {
	return func(s State) error {
		if s.Agent.ToolCalls != calls || s.Agent.CostMicros != cost {
			return fmt.Errorf("agent usage %+v, want %d calls, %d µ", s.Agent, calls, cost)
		}
		if calls != 0 && s.Agent.WindowStart.IsZero() {
			return errors.New("agent usage without a window start")
		}
		return nil
	}
}

func wantFacts(facts ...string) func(State) error {
	return func(s State) error {
		if diff := cmp.Diff(facts, s.Facts); diff != "" {
			return fmt.Errorf("facts (-want +got):\n%s", diff)
		}
		return nil
	}
}

func conformanceScenarios() map[string][]convOp {
	calls3 := Limits{MaxToolCalls: 3}
	calls1 := Limits{MaxToolCalls: 1}
	zeroExpect := commit("z2", 0, Limits{}, Stale, "")
	zeroExpect.step = Step{RequestID: "z2"} // the zero value expects version 0

	costOp := func(run RunRef, req string, cost int64, lim Limits, outcome Outcome, limit string) convOp {
		return commitOn(run, st(req, 0), lim, outcome, limit).with(func(op *convOp) { op.step.CostMicros = cost })
	}
	runCost := Limits{MaxCostMicros: 1_000_000}
	writeOp := func(req string, write bool, outcome Outcome, limit string) convOp {
		return commit(req, 0, Limits{MaxWriteOperations: 1}, outcome, limit).with(func(op *convOp) { op.step.Write = write })
	}
	riskLim := Limits{MaxRisk: 1.335}
	agentCalls := Limits{AgentWindow: day, AgentMaxToolCalls: 3}
	agentCost := Limits{AgentWindow: day, AgentMaxCostMicros: 1_000_000}
	exec := Limits{MaxExecutionTime: 100 * time.Millisecond}

	f64 := strings.Repeat("f", MaxFactLen)
	var many []string
	for i := range 70 {
		many = append(many, fmt.Sprintf("g%02d", i))
	}
	full := append([]string{"\x00{x}", "a", "b", "c"}, many[:MaxFacts-5]...)
	full = append(full, f64)
	slices.Sort(full)

	sticky := []convOp{commit("first", 0.1, Limits{}, Committed, "").with(func(op *convOp) { op.step.Facts = []string{"untrusted_context"} })}
	for i := range 100 {
		sticky = append(sticky, commit("s"+strconv.Itoa(i), 0.001, Limits{}, Committed, ""))
	}
	sticky = append(sticky,
		checking(loadOn(runA, "", false, 101), wantFacts("untrusted_context")),
		commit("late", 0, Limits{}, Committed, "").with(func(op *convOp) { op.step.Facts = []string{"read:crm"} }),
		checking(loadOn(runA, "", false, 102), wantFacts("read:crm", "untrusted_context")),
	)

	// Ids are opaque bytes, the same to every store: braces (hash tags in
	// Redis), separators, NUL, unicode, MaxIDLen bytes.
	odd := []RunRef{
		{Agent: "a+/=", ID: "{x}"},
		{Agent: "a+/=", ID: "}{"},
		{Agent: "nul\x00agent", ID: "\x00"},
		{Agent: "é🙂", ID: strings.Repeat("r", MaxIDLen)},
		{Agent: strings.Repeat("a", MaxIDLen), ID: "run\x00{}\n:r:state"},
	}
	var oddOps []convOp
	for i, run := range odd {
		req := "req{" + strconv.Itoa(i) + "}\x00"
		oddOps = append(oddOps,
			loadOn(run, req, false, 0),
			commitOn(run, st(req, 0.25, "{fact}", "\x00"), Limits{AgentWindow: day, AgentMaxToolCalls: 2}, Committed, ""),
			commitOn(run, st(req, 0.25), Limits{}, Duplicate, ""),
			checking(loadOn(run, req, true, 1), wantFacts("\x00", "{fact}")),
			claimOn(run, run.Agent),
		)
	}
	oddOps = append(oddOps,
		// Agents and runs are told apart by every byte.
		commitOn(RunRef{Agent: "{a+/=}", ID: "{x}"}, st("x", 0), Limits{}, Refused, RunOwned),
		claimOn(RunRef{Agent: "{a+/=}", ID: "{x}"}, "a+/="),
		commitOn(RunRef{Agent: "{a+/=}", ID: "x"}, st("x", 0), Limits{}, Committed, ""),
		checking(commitOn(RunRef{Agent: "a+/=", ID: "x"}, st("y", 0), Limits{AgentWindow: day, AgentMaxToolCalls: 3}, Refused, RunOwned), wantAgent(2, 0)),
		checking(commitOn(RunRef{Agent: "a+/=", ID: "{x} "}, st("y", 0), Limits{AgentWindow: day, AgentMaxToolCalls: 3}, Committed, ""), wantAgent(3, 0)),
	)

	return map[string][]convOp{
		"commit, duplicate, prior on load": {
			commit("r1", 0.1, Limits{}, Committed, ""),
			commit("r1", 0.1, Limits{}, Duplicate, ""),
			loadOn(runA, "r1", true, 1),
			loadOn(runA, "", false, 1),
			loadOn(runA, "unknown", false, 1),
		},
		"load of an unknown run": {
			loadOn(runA, "r1", false, 0),
		},
		"tool calls budget": {
			commit("a", 0, calls3, Committed, ""),
			commit("b", 0, calls3, Committed, ""),
			commit("c", 0, calls3, Committed, ""),
			commit("d", 0, calls3, Refused, BudgetToolCalls),
			commit("c", 0, calls3, Duplicate, ""), // a retry is answered before the limits
		},
		"write operations budget": {
			writeOp("a", true, Committed, ""),
			writeOp("b", false, Committed, ""),
			writeOp("c", true, Refused, BudgetWriteOps),
		},
		"cost budget in micro-units": {
			costOp(runA, "a", 600_000, runCost, Committed, ""),
			costOp(runA, "b", 400_000, runCost, Committed, ""), // exactly at the budget
			costOp(runA, "c", 1, runCost, Refused, BudgetCost),
			costOp(runA, "d", 0, runCost, Committed, ""),
			costOp(runA, "e", -5, runCost, Committed, ""), // a refund
		},
		"risk threshold with the worked example and epsilon": {
			commit("s1", 0.10, riskLim, Committed, ""),
			commit("s2", 0.96, riskLim, Committed, ""),
			commit("s3", 0.275, riskLim, Committed, ""), // lands on 1.335
			commit("s4", 0.01, riskLim, Refused, BudgetRisk),
			loadOn(runA, "s3", true, 3),
		},
		"epsilon absorbs rounding on the threshold": {
			commit("a", 0.1, Limits{MaxRisk: 0.3}, Committed, ""),
			commit("b", 0.2, Limits{MaxRisk: 0.3}, Committed, ""), // 0.30000000000000004
			commit("c", 1e-8, Limits{MaxRisk: 0.3}, Refused, BudgetRisk),
		},
		"first limit in order wins": {
			commit("a", 0.5, Limits{MaxToolCalls: 1, MaxRisk: 0.6}, Committed, ""),
			commit("b", 0.5, Limits{MaxToolCalls: 1, MaxRisk: 0.6}, Refused, BudgetToolCalls),
			commit("c", 0.5, Limits{MaxRisk: 0.6, MaxCostMicros: 1}, Refused, BudgetRisk),
		},
		"agent limits come after the run's, calls before cost": {
			costOp(runA, "a", 1, Limits{AgentWindow: day, AgentMaxToolCalls: 1, AgentMaxCostMicros: 1}, Committed, ""),
			commit("b", 0.5, Limits{MaxRisk: 0.1, AgentWindow: day, AgentMaxToolCalls: 1}, Refused, BudgetRisk),
			commit("c", 0, Limits{MaxToolCalls: 1, AgentWindow: day, AgentMaxToolCalls: 1}, Refused, BudgetToolCalls),
			costOp(runA2, "d", 1, Limits{AgentWindow: day, AgentMaxToolCalls: 1, AgentMaxCostMicros: 1}, Refused, BudgetAgentToolCalls),
			costOp(runA2, "e", 1, Limits{AgentWindow: day, AgentMaxToolCalls: 2, AgentMaxCostMicros: 1}, Refused, BudgetAgentCost),
			costOp(runA2, "f", 0, Limits{AgentWindow: day, AgentMaxToolCalls: 2, AgentMaxCostMicros: 1}, Committed, ""),
		},
		"agent tool calls across runs: fresh run ids do not multiply them": {
			checking(commitOn(runA, st("a", 0), agentCalls, Committed, ""), wantAgent(1, 0)),
			checking(commitOn(runA2, st("b", 0), agentCalls, Committed, ""), wantAgent(2, 0)),
			commitOn(runA3, st("c", 0), Limits{MaxToolCalls: 1, AgentWindow: day, AgentMaxToolCalls: 3}, Committed, ""),
			commitOn(runA3, st("c2", 0), Limits{MaxToolCalls: 1, AgentWindow: day, AgentMaxToolCalls: 3}, Refused, BudgetToolCalls), // not counted
			checking(commitOn(runA4, st("d", 0), agentCalls, Refused, BudgetAgentToolCalls), wantAgent(3, 0)),
			commitOn(runA, st("e", 0), agentCalls, Refused, BudgetAgentToolCalls),
			commitOn(runA, st("a", 0), agentCalls, Duplicate, ""),
			checking(commitOn(runB2, st("f", 0), agentCalls, Committed, ""), wantAgent(1, 0)), // another agent's own budget
			checking(loadOn(runA, "", false, 1), wantAgent(3, 0)),
			checking(loadOn(runA4, "", false, 0), wantAgent(3, 0)),
			checking(loadOn(runB, "", false, 0), wantAgent(1, 0)),
		},
		"agent cost across runs": {
			costOp(runA, "a", 600_000, agentCost, Committed, ""),
			costOp(runA2, "b", 400_000, agentCost, Committed, ""),
			costOp(runA3, "c", 1, agentCost, Refused, BudgetAgentCost),
			costOp(runA3, "d", 0, agentCost, Committed, ""),
			checking(loadOn(runA, "", false, 1), wantAgent(3, 1_000_000)),
		},
		"agent usage is reported whatever the step's limits": {
			checking(commit("a", 0, agentCalls, Committed, ""), wantAgent(1, 0)),
			checking(commit("b", 0, Limits{}, Committed, ""), wantAgent(1, 0)), // not counted
			checking(commit("c", 0, Limits{MaxToolCalls: 2}, Refused, BudgetToolCalls), wantAgent(1, 0)),
			checking(commitV("d", 0, Limits{}, 0, Stale, ""), wantAgent(1, 0)),
			checking(commit("b", 0, Limits{}, Duplicate, ""), wantAgent(1, 0)),
			checking(loadOn(runA, "", false, 2), wantAgent(1, 0)),
			checking(commitOn(runA2, st("e", 0), Limits{}, Committed, ""), wantAgent(1, 0)),
		},
		"a second agent on the first agent's run id": {
			commitOn(runA, st("a", 0.2, "read:crm"), Limits{AgentWindow: day, AgentMaxToolCalls: 5}, Committed, ""),
			checking(commitOn(runB, st("a", 0.2), Limits{}, Refused, RunOwned), wantFacts()), // even a request id agent a used
			commitOn(runB, st("b", 0).with0(), Limits{}, Refused, RunOwned),
			commitOn(runB, st("c", 0).withVersion(7), Limits{MaxToolCalls: 1}, Refused, RunOwned),
			checking(commitOn(runB, st("d", 0), Limits{AgentWindow: day, AgentMaxToolCalls: 5}, Refused, RunOwned), wantAgent(0, 0)),
			loadOn(runB, "a", false, 0),
			checking(loadOn(runA, "a", true, 1), wantAgent(1, 0)),
			claimOn(runB, "agent-a"),
			claimOn(runA, "agent-a"),
			commitOn(runA, st("e", 0.2), Limits{}, Committed, ""),
			checking(loadOn(runA, "", false, 2), wantFacts("read:crm")),
		},
		"claim run": {
			claimOn(runA, "agent-a"),
			loadOn(runA, "", false, 0), // a claim makes no run
			claimOn(runB, "agent-a"),
			commitOn(runB, st("a", 0), Limits{}, Refused, RunOwned),
			commitOn(runA, st("b", 0), Limits{}, Committed, ""),
			claimOn(runA, "agent-a"),
			claimOn(runC, "agent-c"),
			commitOn(runC, st("c", 0), Limits{}, Committed, ""),
		},
		"refused first step leaves no run and claims nothing": {
			commit("a", 0.7, Limits{MaxRisk: 0.5}, Refused, BudgetRisk),
			loadOn(runA, "a", false, 0),
			claimOn(runB, "agent-b"),
			commit("b", 0, Limits{}, Refused, RunOwned),
		},
		"stale first step leaves no run and claims nothing": {
			commitV("a", 0.1, Limits{}, 2, Stale, ""),
			loadOn(runA, "a", false, 0),
			commitOn(runB, st("b", 0), Limits{}, Committed, ""),
			commitV("a", 0.1, Limits{}, 0, Refused, RunOwned),
		},
		"a refused request id may commit later": {
			commit("a", 0, Limits{MaxToolCalls: 1}, Committed, ""),
			commit("b", 0, Limits{MaxToolCalls: 1}, Refused, BudgetToolCalls),
			commit("b", 0, Limits{MaxToolCalls: 2}, Committed, ""),
		},
		"empty request id commits every time": {
			commit("", 0.1, Limits{}, Committed, ""),
			commit("", 0.1, Limits{}, Committed, ""),
			loadOn(runA, "", false, 2),
		},
		"long request id": {
			commit(string(make([]byte, 300)), 0.1, Limits{}, Committed, ""),
			commit(string(make([]byte, 300)), 0.1, Limits{}, Duplicate, ""),
			loadOn(runA, string(make([]byte, 300)), true, 1),
		},
		"facts merge sorted, bounded and sticky": {
			checking(commitOn(runA, st("a", 0, "b", "a", "a", "", f64+"x", f64, "\x00{x}"), Limits{}, Committed, ""),
				wantFacts("\x00{x}", "a", "b", f64)),
			checking(commitOn(runA, st("r", 0, "refused"), Limits{MaxToolCalls: 1}, Refused, BudgetToolCalls),
				wantFacts("\x00{x}", "a", "b", f64)),
			checking(commitOn(runA, st("s", 0, "stale").withVersion(0), Limits{}, Stale, ""), wantFacts("\x00{x}", "a", "b", f64)),
			checking(commitOn(runA, st("c", 0, "c", "a"), Limits{}, Committed, ""), wantFacts("\x00{x}", "a", "b", "c", f64)),
			checking(commitOn(runA, st("d", 0, many...), Limits{}, Committed, ""), wantFacts(full...)), // filled in order
			checking(commitOn(runA, st("e", 0, "0"), Limits{}, Committed, ""), wantFacts(full...)),     // full: not even first in order
			checking(commitOn(runB2, st("f", 0, "b"), Limits{}, Committed, ""), wantFacts("b")),        // per run
			checking(loadOn(runA, "", false, 4), wantFacts(full...)),
		},
		"sticky facts survive any number of later commits": sticky,
		"ids are opaque bytes":                             oddOps,
		"execution time on the store's clock": {
			commit("a", 0, exec, Committed, ""),
			commit("b", 0, exec, Committed, ""),
			sleepFor(150 * time.Millisecond),
			commit("c", 0, exec, Refused, BudgetExecutionTime),
			commit("b", 0, exec, Duplicate, ""),
			commit("d", 0, Limits{}, Committed, ""),
		},
		"execution time budget does not apply before the first step": {
			commit("a", 0, Limits{MaxExecutionTime: time.Microsecond}, Committed, ""),
			sleepFor(5 * time.Millisecond),
			commit("b", 0, Limits{MaxExecutionTime: time.Microsecond}, Refused, BudgetExecutionTime),
			commit("c", 0, Limits{MaxExecutionTime: time.Hour}, Committed, ""),
		},

		"version increments per commit": {
			loadOn(runA, "", false, 0),
			commitV("v1", 0.1, Limits{}, 0, Committed, ""),
			commitV("v2", 0.1, Limits{}, 1, Committed, ""),
			commitV("v3", 0.1, calls3, 2, Committed, ""),
			commitV("v4", 0.1, calls3, 3, Refused, BudgetToolCalls), // version unchanged
			commitV("v4", 0.1, Limits{}, 3, Committed, ""),
			loadOn(runA, "v4", true, 4),
		},
		"stale expectation changes nothing and returns the current state": {
			commit("a", 0.1, Limits{}, Committed, ""),
			commit("b", 0.2, Limits{}, Committed, ""),
			commit("c", 0.3, Limits{}, Committed, ""),
			commitV("d", 0.4, Limits{}, 1, Stale, ""),
			commitV("d", 0.4, Limits{}, 0, Stale, ""),
			commitV("d", 0.4, Limits{}, 9, Stale, ""), // ahead of the run
			loadOn(runA, "d", false, 3),               // a stale step is not remembered
			commitV("d", 0.4, Limits{}, 3, Committed, ""),
		},
		"the zero expected version means an empty run": {
			commitV("z1", 0, Limits{}, 0, Committed, ""),
			zeroExpect,
		},
		"duplicate beats stale": {
			commitV("a", 0.1, Limits{}, 0, Committed, ""),
			commitV("a", 0.1, Limits{}, 0, Duplicate, ""), // a retry of the same decision
			commitV("a", 0.1, Limits{}, 7, Duplicate, ""),
			commitV("a", 0.1, calls1, 0, Duplicate, ""),
		},
		"stale beats refused": {
			commitV("a", 0, calls1, 0, Committed, ""),
			commitV("b", 0, calls1, 0, Stale, ""), // decided on a gone state: no limit reported
			commitV("b", 0, calls1, 1, Refused, BudgetToolCalls),
		},
		"any version skips the check": {
			commitV("a", 0.1, Limits{}, AnyVersion, Committed, ""),
			commitV("b", 0.1, Limits{}, AnyVersion, Committed, ""),
			commitV("c", 0.1, Limits{}, 2, Committed, ""),
			commitV("d", 0.1, calls3, AnyVersion, Refused, BudgetToolCalls),
			commitV("c", 0.1, Limits{}, AnyVersion, Duplicate, ""),
		},
	}
}

func (s Step) withVersion(v int64) Step { s.ExpectVersion = v; return s }
func (s Step) with0() Step              { return s.withVersion(0) }

// opResult is what one op answered, as compared across stores.
type opResult struct {
	Op     int
	Commit *CommitResult
	Load   *State
	Owner  string
}

// comparable drops what comes from each store's own clock: the time of
// reading, and the values (not the presence) of the run's start and the
// agent's window start.
func comparable(s State) State {
	s.Now = time.Time{}
	if !s.StartedAt.IsZero() {
		s.StartedAt = time.Unix(1, 0)
	}
	if !s.Agent.WindowStart.IsZero() {
		s.Agent.WindowStart = time.Unix(2, 0)
	}
	return s
}

// checkClock holds a State to its own store's clock: the run started before
// it was read, and the agent's window is the day holding the read.
func checkClock(s State) error {
	if s.Now.IsZero() {
		return errors.New("no Now")
	}
	if s.StartedAt.After(s.Now) {
		return fmt.Errorf("started %v after now %v", s.StartedAt, s.Now)
	}
	if !s.Agent.WindowStart.IsZero() && !s.Agent.WindowStart.Equal(WindowStart(s.Now, day)) {
		return fmt.Errorf("agent window starts %v, want the day holding %v", s.Agent.WindowStart, s.Now)
	}
	return nil
}

// runScenario plays ops and returns every result, for comparison across stores.
// Besides each op's expectation it holds every store to two invariants: a
// run's version is the number of Committed outcomes on it so far, and a
// Commit's State — whatever the outcome — is exactly what a Load returns
// right after it (but for the time of reading).
func runScenario(t *testing.T, s Store, ops []convOp) []opResult {
	ctx := context.Background()
	var out []opResult
	commits := map[RunRef]int64{}
	check := func(i int, what string, op convOp, st State) {
		t.Helper()
		if err := checkClock(st); err != nil {
			t.Errorf("op %d: %s: %v", i, what, err)
		}
		if st.Version != commits[op.run] {
			t.Errorf("op %d: %s: version %d after %d commits", i, what, st.Version, commits[op.run])
		}
		if st.Run != op.run {
			t.Errorf("op %d: %s: state of run %+v", i, what, st.Run)
		}
		if op.check != nil {
			if err := op.check(st); err != nil {
				t.Errorf("op %d: %s: %v", i, what, err)
			}
		}
	}
	for i, op := range ops {
		switch op.kind {
		case opSleep:
			time.Sleep(op.sleep)
		case opClaim:
			owner, err := s.ClaimRun(ctx, op.run, time.Hour)
			if err != nil {
				t.Fatalf("op %d: claim: %v", i, err)
			}
			if owner != op.owner {
				t.Errorf("op %d: claim %+v: owner %q, want %q", i, op.run, owner, op.owner)
			}
			out = append(out, opResult{Op: i, Owner: owner})
		case opLoad:
			st, err := s.Load(ctx, op.run, op.req)
			if err != nil {
				t.Fatalf("op %d: load: %v", i, err)
			}
			if (st.Prior != nil) != op.prior || st.ToolCalls != op.calls {
				t.Errorf("op %d: load: prior %v calls %d, want prior %v calls %d", i, st.Prior != nil, st.ToolCalls, op.prior, op.calls)
			}
			check(i, "load", op, st)
			st = comparable(st)
			out = append(out, opResult{Op: i, Load: &st})
		case opCommit:
			res, err := s.Commit(ctx, op.run, op.step, op.lim, time.Hour)
			if err != nil {
				t.Fatalf("op %d: commit: %v", i, err)
			}
			if res.Outcome != op.outcome || res.Limit != op.limit {
				t.Errorf("op %d: commit: %v %q, want %v %q", i, res.Outcome, res.Limit, op.outcome, op.limit)
			}
			if (res.Outcome == Duplicate) != (res.Prior != nil) || res.State.Prior != nil {
				t.Errorf("op %d: outcome %v with prior %v, state prior %v", i, res.Outcome, res.Prior, res.State.Prior)
			}
			if res.Outcome == Committed {
				commits[op.run]++
			}
			check(i, res.Outcome.String(), op, res.State)
			after, err := s.Load(ctx, op.run, "")
			if err != nil {
				t.Fatalf("op %d: load after commit: %v", i, err)
			}
			after.Now, res.State.Now = time.Time{}, time.Time{}
			if diff := cmp.Diff(after, res.State); diff != "" {
				t.Errorf("op %d: %v: state differs from the run's (-load +commit):\n%s", i, res.Outcome, diff)
			}
			res.State = comparable(res.State)
			out = append(out, opResult{Op: i, Commit: &res})
		}
	}
	return out
}

func TestConformance(t *testing.T) {
	t.Parallel()
	scenarios := conformanceScenarios()
	// The memory store is the reference; every other store must give its answers.
	ref := make(map[string][]opResult)
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			for name, ops := range scenarios {
				t.Run(name, func(t *testing.T) {
					got := runScenario(t, kind.open(t, time.Now), ops)
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

// TestConformanceAgentWindowRolls: the agent's budget is per window aligned
// to the epoch on the store's clock; usage of an older window reads as zero
// with the current window's start. Real time: a short window, entered at its
// start.
//
// Not parallel: both commits must land inside one 400ms window, too tight for a
// CPU shared with the parallel tests.
func TestConformanceAgentWindowRolls(t *testing.T) {
	const w = 400 * time.Millisecond
	lim := Limits{AgentWindow: w, AgentMaxToolCalls: 1}
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			time.Sleep(time.Until(WindowStart(time.Now(), w).Add(w + 10*time.Millisecond)))
			res, err := s.Commit(ctx, runA, st("a", 0), lim, time.Hour)
			if err != nil || res.Outcome != Committed {
				t.Fatalf("first commit: %v %v", res.Outcome, err)
			}
			first := res.State.Agent
			if first.ToolCalls != 1 || !first.WindowStart.Equal(WindowStart(res.State.Now, w)) {
				t.Errorf("agent usage %+v at %v", first, res.State.Now)
			}
			res, err = s.Commit(ctx, runA2, st("b", 0), lim, time.Hour)
			if err != nil || res.Outcome != Refused || res.Limit != BudgetAgentToolCalls {
				t.Fatalf("second commit in the window: %v %q %v", res.Outcome, res.Limit, err)
			}
			time.Sleep(time.Until(first.WindowStart.Add(w + 10*time.Millisecond)))
			ld, err := s.Load(ctx, runA, "")
			if err != nil {
				t.Fatal(err)
			}
			if want := (AgentUsage{WindowStart: WindowStart(ld.Now, w)}); ld.Agent != want || !ld.Agent.WindowStart.After(first.WindowStart) {
				t.Errorf("in the next window a Load reports %+v, want %+v", ld.Agent, want)
			}
			res, err = s.Commit(ctx, runA2, st("b", 0), lim, time.Hour)
			if err != nil || res.Outcome != Committed || res.State.Agent.ToolCalls != 1 {
				t.Fatalf("commit in the next window: %v %+v %v", res.Outcome, res.State.Agent, err)
			}
		})
	}
}

// TestConformanceInvalidRefs: every store refuses the same references and
// accepts the same (any bytes, up to MaxIDLen).
func TestConformanceInvalidRefs(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", MaxIDLen+1)
	bad := []RunRef{{}, {Agent: "a"}, {ID: "r"}, {Agent: long, ID: "r"}, {Agent: "a", ID: long}}
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			for _, ref := range bad {
				if _, err := s.Load(ctx, ref, ""); err == nil {
					t.Errorf("Load accepted %q/%q", truncate(ref.Agent), truncate(ref.ID))
				}
				if res, err := s.Commit(ctx, ref, st("x", 0), Limits{}, time.Hour); err == nil || res.Outcome != 0 {
					t.Errorf("Commit accepted %q/%q", truncate(ref.Agent), truncate(ref.ID))
				}
				if _, err := s.ClaimRun(ctx, ref, time.Hour); err == nil {
					t.Errorf("ClaimRun accepted %q/%q", truncate(ref.Agent), truncate(ref.ID))
				}
			}
			ok := RunRef{Agent: long[:MaxIDLen], ID: "\xff" + long[:MaxIDLen-1]}
			if res, err := s.Commit(ctx, ok, st("x", 0), Limits{}, time.Hour); err != nil || res.Outcome != Committed {
				t.Errorf("ids of MaxIDLen bytes: %v %v", res.Outcome, err)
			}
		})
	}
}

// TestConcurrentCommitsExactBudget: 200 concurrent Commits on one run with 10
// calls of budget left → exactly 10 committed and the counter ends at the budget.
func TestConcurrentCommitsExactBudget(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			lim := Limits{MaxToolCalls: 15}
			for i := range 5 {
				if _, err := s.Commit(ctx, runA, st("pre"+strconv.Itoa(i), 0), lim, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			outcomes := hammer(t, 200, func(i int) (CommitResult, error) {
				return s.Commit(ctx, runA, st("c"+strconv.Itoa(i), 0.01), lim, time.Hour)
			})
			if diff := cmp.Diff(map[string]int{"committed": 10, "refused " + BudgetToolCalls: 190}, outcomes); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			got, err := s.Load(ctx, runA, "")
			if err != nil {
				t.Fatal(err)
			}
			if got.ToolCalls != lim.MaxToolCalls {
				t.Errorf("tool calls = %d, want exactly %d", got.ToolCalls, lim.MaxToolCalls)
			}
		})
	}
}

// TestConcurrentAgentBudgetAcrossRuns: 200 concurrent Commits over 5 runs of
// one agent (first commits included) with an agent budget of 10 → exactly 10
// committed, whichever runs they landed on.
func TestConcurrentAgentBudgetAcrossRuns(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			lim := Limits{MaxToolCalls: 100, AgentWindow: day, AgentMaxToolCalls: 10, AgentMaxCostMicros: 1000}
			run := func(i int) RunRef { return RunRef{Agent: "busy", ID: "run-" + strconv.Itoa(i%5)} }
			outcomes := hammer(t, 200, func(i int) (CommitResult, error) {
				step := st("c"+strconv.Itoa(i), 0)
				step.CostMicros = 10
				return s.Commit(ctx, run(i), step, lim, time.Hour)
			})
			if diff := cmp.Diff(map[string]int{"committed": 10, "refused " + BudgetAgentToolCalls: 190}, outcomes); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			var calls int64
			var agent AgentUsage
			for i := range 5 {
				got, err := s.Load(ctx, run(i), "")
				if err != nil {
					t.Fatal(err)
				}
				calls += got.ToolCalls
				agent = got.Agent
			}
			if calls != 10 || agent.ToolCalls != 10 || agent.CostMicros != 100 {
				t.Errorf("runs hold %d calls, agent usage %+v; want 10 calls, 100 µ", calls, agent)
			}
		})
	}
}

// TestConcurrentFirstCommitsOneOwner: agents racing to open the same run id →
// one of them owns it; every commit of the others is refused, RunOwned.
func TestConcurrentFirstCommitsOneOwner(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			const agents, each = 8, 5
			var mu sync.Mutex
			committed := map[string]int{}
			hammer(t, agents*each, func(i int) (CommitResult, error) {
				ref := RunRef{Agent: "agent-" + strconv.Itoa(i%agents), ID: "contested"}
				res, err := s.Commit(ctx, ref, st("c"+strconv.Itoa(i), 0), Limits{}, time.Hour)
				if err == nil && res.Outcome == Committed {
					mu.Lock()
					committed[ref.Agent]++
					mu.Unlock()
				}
				return res, err
			})
			if len(committed) != 1 {
				t.Fatalf("agents with commits on one run id: %v", committed)
			}
			for agent, n := range committed {
				if n != each {
					t.Errorf("the owner committed %d of its %d steps", n, each)
				}
				if owner, err := s.ClaimRun(ctx, RunRef{Agent: "late", ID: "contested"}, time.Hour); err != nil || owner != agent {
					t.Errorf("ClaimRun = %q, %v; want %q", owner, err, agent)
				}
			}
		})
	}
}

// hammer runs n calls concurrently and counts their outcomes ("refused"
// with the limit); any error fails the test.
func hammer(t *testing.T, n int, call func(i int) (CommitResult, error)) map[string]int {
	t.Helper()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		outcomes = map[string]int{}
		errs     []error
	)
	for i := range n {
		wg.Go(func() {
			res, err := call(i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			key := res.Outcome.String()
			if res.Limit != "" {
				key += " " + res.Limit
			}
			outcomes[key]++
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	return outcomes
}

// TestConcurrentCommitsSameVersion: 50 replicas decided on the same version of
// a run and commit at once → exactly one Committed; every other one is Stale
// and carries the state that commit produced.
func TestConcurrentCommitsSameVersion(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			const pre, racers = 5, 50
			for i := range pre {
				if _, err := s.Commit(ctx, runA, st("pre"+strconv.Itoa(i), 0).withVersion(int64(i)), Limits{}, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			var (
				mu      sync.Mutex
				results []CommitResult
			)
			hammer(t, racers, func(i int) (CommitResult, error) {
				step := st("c"+strconv.Itoa(i), 0.5, "t"+strconv.Itoa(i)).withVersion(pre)
				res, err := s.Commit(ctx, runA, step, Limits{MaxRisk: 100}, time.Hour)
				mu.Lock()
				results = append(results, res)
				mu.Unlock()
				return res, err
			})
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
			if winner.Version != pre+1 || winner.ToolCalls != pre+1 || winner.RiskTotal != 0.5 || len(winner.Facts) != 1 {
				t.Errorf("winner state %+v, want version and calls %d, risk 0.5, one fact", winner, pre+1)
			}
			ignoreNow := cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Now" }, cmp.Ignore())
			for _, res := range results {
				if res.Outcome == Stale {
					if diff := cmp.Diff(winner, res.State, ignoreNow); diff != "" {
						t.Errorf("a stale result does not carry the run's state (-winner +stale):\n%s", diff)
						break
					}
				}
			}
			got, err := s.Load(ctx, runA, "")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(winner, got, ignoreNow); diff != "" {
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
	t.Parallel()
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
				wg.Go(func() {
					var cached State // this replica's view: starts empty, version 0
					for i := range each {
						step := st(strconv.Itoa(w)+"-"+strconv.Itoa(i), 0.25)
						for attempt := 0; ; attempt++ {
							step.ExpectVersion = cached.Version
							res, err := s.Commit(ctx, runA, step, lim, time.Hour)
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
				})
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("%d errors, first: %v", len(errs), errs[0])
			}
			if diff := cmp.Diff(map[Outcome]int{Committed: int(lim.MaxToolCalls), Refused: 3}, outcomes); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			got, err := s.Load(ctx, runA, "")
			if err != nil {
				t.Fatal(err)
			}
			if got.Version != lim.MaxToolCalls || got.ToolCalls != lim.MaxToolCalls || got.RiskTotal != 0.25*float64(lim.MaxToolCalls) {
				t.Errorf("run ends at version %d, calls %d, risk %v; want %d, %d, %v",
					got.Version, got.ToolCalls, got.RiskTotal, lim.MaxToolCalls, lim.MaxToolCalls, 0.25*float64(lim.MaxToolCalls))
			}
		})
	}
}

// TestConformanceRejectsBadNumbers: values a store could not compare exactly
// are errors in every store, never an outcome.
func TestConformanceRejectsBadNumbers(t *testing.T) {
	t.Parallel()
	type tc struct {
		step Step
		lim  Limits
	}
	var bad []tc
	for _, v := range []int64{-2, math.MinInt64, maxExactInt + 1, math.MaxInt64} {
		bad = append(bad, tc{step: st("x", 0).withVersion(v)})
	}
	for _, risk := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		bad = append(bad, tc{step: st("x", risk), lim: Limits{MaxRisk: 2}})
	}
	bad = append(bad,
		tc{step: st("x", 0), lim: Limits{MaxRisk: math.NaN()}},
		tc{step: Step{RequestID: "x", ExpectVersion: AnyVersion, CostMicros: maxExactInt + 1}},
		tc{step: st("x", 0), lim: Limits{AgentMaxCostMicros: maxExactInt + 1}},
		tc{step: st("x", 0), lim: Limits{AgentWindow: -time.Second}},
		tc{step: st("x", 0), lim: Limits{AgentWindow: time.Microsecond}},
		tc{step: st("x", 0), lim: Limits{AgentWindow: time.Second + time.Microsecond}},
	)
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			for _, c := range bad {
				res, err := s.Commit(context.Background(), runA, c.step, c.lim, time.Hour)
				if err == nil || res.Outcome != 0 {
					t.Errorf("step %+v limits %+v: %v, %v; want an error and no outcome", c.step, c.lim, res.Outcome, err)
				}
			}
			if res, err := s.Commit(context.Background(), runA, st("x", 0).withVersion(maxExactInt), Limits{}, time.Hour); err != nil || res.Outcome != Stale {
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
		out = append(out, fmt.Sprintf("%s: id=%s status=%s binding=%s by=%s why=%s decided=%v created=%v detail=%s err=%v notfound=%v conflict=%v",
			what, a.ID, a.Status, a.Binding, a.DecidedBy, a.Why, a.DecidedAt.UnixNano(), a.CreatedAt.UnixNano(), jsonString(t, a.Detail),
			err != nil, errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict)))
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
		return Approval{ID: id, RunID: "run", AgentID: "agent", Tool: "send_email", Binding: "h-" + id,
			DecisionID: "dec-" + id, Risk: 1.3350000000000002, Reasons: []string{"chain_risk"}, CreatedAt: created,
			Detail: map[string]any{"method": "POST", "path": "/v1/send", "args": map[string]any{"to": "***"}, "n": 3}}
	}
	for _, a := range []Approval{mk("a1", t0), mk("a2", t0.Add(time.Second)), mk("a3", t0.Add(time.Second))} {
		err := s.CreateApproval(ctx, a, time.Hour)
		rec("create "+a.ID, a, err)
	}
	err := s.CreateApproval(ctx, mk("a1", t0), time.Hour)
	rec("create a1 again", Approval{}, err)
	a, err := s.GetApproval(ctx, "a1")
	rec("get a1", a, err)
	if a.Risk != 1.3350000000000002 || len(a.Reasons) != 1 || a.Tool != "send_email" || a.Detail["method"] != "POST" {
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
	rec("consume a1 other binding", a, err)
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
	t.Parallel()
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
	want := []string{"consume a1: id=a1 status=used", "consume a1 again: id=a1 status=used", "consume a1 other binding: id=a1 status=approved"}
	for _, w := range want {
		if !slices.ContainsFunc(ref, func(line string) bool { return strings.HasPrefix(line, w) }) {
			t.Errorf("memory transcript lacks %q:\n%v", w, ref)
		}
	}
}

func TestConformanceNonces(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			ctx := context.Background()
			long := string(make([]byte, 200))
			var got []bool
			// The same owner again (a client retry of a write whose reply
			// was lost) is not a replay; any other owner is.
			for _, use := range []struct{ id, owner string }{
				{"jti-1", "d1"}, {"jti-1", "d2"}, {"jti-2", "d3"}, {long, "d4"}, {long, "d5"}, {"jti-1", "d6"}, {"jti-1", "d1"},
			} {
				first, err := s.UseOnce(ctx, use.id, use.owner, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, first)
			}
			if diff := cmp.Diff([]bool{true, false, true, true, false, false, true}, got); diff != "" {
				t.Errorf("UseOnce (-want +got):\n%s", diff)
			}
		})
	}
}

func jsonString(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestConformanceApprovalLimits: pending approvals are bounded per run and
// per agent, deciding one makes room, and every store gives the same answers.
func TestConformanceApprovalLimits(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			switch x := s.(type) {
			case *Memory:
				x.SetApprovalLimits(ApprovalLimits{PerRun: 2, PerAgent: 3})
			case *Redis:
				x.approvalLimits = ApprovalLimits{PerRun: 2, PerAgent: 3}
			}
			ctx := context.Background()
			create := func(id, agent, run string) error {
				return s.CreateApproval(ctx, Approval{ID: id, AgentID: agent, RunID: run, Status: ApprovalPending, CreatedAt: time.Now()}, time.Hour)
			}
			for i, step := range []struct {
				id, agent, run string
				limit          bool
			}{
				{"a1", "a", "r1", false}, {"a2", "a", "r1", false},
				{"a3", "a", "r1", true}, // a third in one run
				{"a4", "a", "r2", false},
				{"a5", "a", "r3", true},  // a fourth of the agent
				{"b1", "b", "r1", false}, // another agent is not affected
			} {
				err := create(step.id, step.agent, step.run)
				if got := errors.Is(err, ErrLimit); got != step.limit || (err != nil && !got) {
					t.Fatalf("step %d (%s): %v, want limit %v", i, step.id, err, step.limit)
				}
			}
			if _, err := s.DecideApproval(ctx, "a1", false, "alice", "no", time.Now()); err != nil {
				t.Fatal(err)
			}
			if err := create("a6", "a", "r1"); err != nil {
				t.Fatalf("after a decision there is room: %v", err)
			}
		})
	}
}

// TestStepLog: each run's step records read back in order, from any client of
// the store (two replicas on one Redis), bounded.
func TestStepLog(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, time.Now)
			log, ok := s.(StepLog)
			if !ok {
				t.Skip("no step log")
			}
			run := RunRef{Agent: "a", ID: "r{1}"}
			for i := range 5 {
				log.AppendStep(run, []byte(strconv.Itoa(i)))
			}
			log.AppendStep(RunRef{Agent: "b", ID: "r{1}"}, []byte("other agent"))
			var got [][]byte
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) { // Redis appends in the background
				var err error
				if got, err = log.Steps(context.Background(), run); err != nil {
					t.Fatal(err)
				}
				if len(got) == 5 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			var s2 []string
			for _, g := range got {
				s2 = append(s2, string(g))
			}
			if diff := cmp.Diff([]string{"0", "1", "2", "3", "4"}, s2); diff != "" || log.DroppedSteps() != 0 {
				t.Fatalf("steps (-want +got):\n%s dropped %d", diff, log.DroppedSteps())
			}
		})
	}
}

// TestConformanceCommitNonces: a step's nonce is spent with its commit —
// only when it commits — and every store that commits nonces answers alike;
// a Cluster says it does not and refuses one. The nonce is the same record
// UseOnce keeps, so the two agree.
func TestConformanceCommitNonces(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			s := kind.open(t, time.Now)
			ctx := context.Background()
			nc, ok := s.(NonceCommitter)
			if !ok {
				t.Fatalf("%T does not say whether it commits nonces", s)
			}
			run := RunRef{Agent: "agent-a", ID: "nonce-" + kind.name}
			withNonce := func(s Step, id, owner string) Step {
				s.Nonce, s.NonceOwner, s.NonceTTL = id, owner, time.Minute
				return s
			}
			if !nc.CommitsNonces() {
				if _, err := s.Commit(ctx, run, withNonce(st("x", 0), "jti:x", "d-x"), Limits{}, time.Hour); err == nil {
					t.Fatal("a store that does not commit nonces accepted one")
				}
				return
			}
			var got []string
			do := func(s2 Step, lim Limits) {
				res, err := s.Commit(ctx, run, s2, lim, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, res.Outcome.String())
			}
			do(withNonce(st("a", 0.1), "jti:1", "d-a"), Limits{})                 // spends jti:1
			do(withNonce(st("b", 0.1), "jti:1", "d-b"), Limits{})                 // another call with it
			do(withNonce(st("a", 0.1), "jti:1", "d-a"), Limits{})                 // Envoy's retry of the first
			do(withNonce(st("c", 0.1).withVersion(99), "jti:2", "d-c"), Limits{}) // stale: not spent
			do(withNonce(st("d", 0.1), "jti:3", "d-d"), Limits{MaxToolCalls: 1})  // refused: not spent
			do(withNonce(st("e", 0.1), "jti:2", "d-e"), Limits{})                 // so another call may
			do(withNonce(st("f", 0.1).withVersion(2), "jti:4", "d-f"), Limits{})  // version 2: commits
			want := []string{"committed", "replayed", "duplicate", "stale", "refused", "committed", "committed"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			for id, spent := range map[string]bool{"jti:1": true, "jti:2": true, "jti:3": false, "jti:4": true} {
				first, err := s.UseOnce(ctx, id, "someone-else", time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if first == spent {
					t.Errorf("%s: spent %v, UseOnce by another owner says first=%v", id, spent, first)
				}
			}
		})
	}
}
