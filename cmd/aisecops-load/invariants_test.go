package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// TestInvariantsHoldOnARealLog: a log written by the real decision path,
// budget denials included, satisfies every invariant.
func TestInvariantsHoldOnARealLog(t *testing.T) {
	t.Parallel()
	p := newInProcess(t)
	ctx := context.Background()
	var seen []seenAllow
	for _, w := range []*runner{
		newRunner(p.mix, loadAgent, "inv", 7, 0),
		newRunner(p.mix, cappedAgent, "inv-capped", int(cappedLimits.calls)+5, 1),
	} {
		for range 40 {
			c, err := w.next()
			if err != nil {
				t.Fatal(err)
			}
			a := check(ctx, p, c.req, time.Minute)
			if a.allowed {
				seen = append(seen, seenAllow{decisionID: a.decisionID, requestID: c.requestID, run: c.run, agent: c.agent})
			}
			if c.kind == kindRead { // a client retry of the same request: answered as before, not debited again
				check(ctx, p, c.req, time.Minute)
			}
		}
	}
	recs := readAudit(t, p.audit)
	_, routes, _ := routesFile()
	inv, err := checkInvariants(ctx, recs, seen, p.store, budgets(routes), 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Violations) > 0 {
		t.Fatalf("violations on a good log:\n%s", strings.Join(inv.Violations, "\n"))
	}
	if inv.RunsAtBudget == 0 || inv.DuplicateAnswers == 0 || inv.CommittedDebits == 0 || inv.AllowedSeen != len(seen) {
		t.Fatalf("the log did not exercise the invariants: %+v", inv)
	}
}

func readAudit(t *testing.T, path string) []audit.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := audit.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestInvariantsCatchViolations: each broken invariant is reported.
func TestInvariantsCatchViolations(t *testing.T) {
	t.Parallel()
	const binding = "0123456789abcdef0123456789abcdef-rest"
	allow := func(decision, request, run string, committed bool) audit.Record {
		return audit.Record{DecisionID: decision, RequestID: request, RunID: run, AgentID: cappedAgent, Binding: binding,
			Decision: "allow", Committed: committed, Reasons: []audit.Reason{{Code: "allowed"}}}
	}
	idem := func(request string) string { return request + "/" + binding[:32] }
	ref := func(run string) riskstore.RunRef { return riskstore.RunRef{Agent: cappedAgent, ID: run} }
	commit := func(t *testing.T, s *riskstore.Memory, run, request, decision string, write bool) {
		t.Helper()
		res, err := s.Commit(context.Background(), ref(run), riskstore.Step{RequestID: idem(request), DecisionID: decision, Write: write,
			ExpectVersion: riskstore.AnyVersion}, riskstore.Limits{}, time.Hour)
		if err != nil || res.Outcome != riskstore.Committed {
			t.Fatalf("commit: %v %v", res.Outcome, err)
		}
	}
	limits := map[string]budget{cappedAgent: {calls: 2, writes: 1, costMicros: 1000}}
	for name, tc := range map[string]struct {
		recs  []audit.Record
		seen  []seenAllow
		state func(t *testing.T, s *riskstore.Memory)
		want  string // "" for no violation
	}{
		"good": {
			recs:  []audit.Record{allow("d1", "q1", "r", true)},
			seen:  []seenAllow{{decisionID: "d1"}},
			state: func(t *testing.T, s *riskstore.Memory) { commit(t, s, "r", "q1", "d1", false) },
		},
		"allowed but not audited": {
			recs:  []audit.Record{allow("d1", "q1", "r", true)},
			seen:  []seenAllow{{decisionID: "d1"}, {decisionID: "d-lost", requestID: "q2", run: "r"}},
			state: func(t *testing.T, s *riskstore.Memory) { commit(t, s, "r", "q1", "d1", false) },
			want:  "allowed without its audit record",
		},
		"allowed but not debited": {
			recs:  []audit.Record{allow("d1", "q1", "r", true), allow("d2", "q2", "r", true)},
			state: func(t *testing.T, s *riskstore.Memory) { commit(t, s, "r", "q1", "d1", false) },
			want:  "allowed without a committed debit",
		},
		"one request committed by two decisions": {
			recs:  []audit.Record{allow("d1", "q1", "r", true), allow("d2", "q1", "r", true)},
			state: func(t *testing.T, s *riskstore.Memory) { commit(t, s, "r", "q1", "d1", false) },
			want:  "double debit",
		},
		"a debit no request id accounts for": {
			recs: []audit.Record{allow("d1", "q1", "r", true)},
			state: func(t *testing.T, s *riskstore.Memory) {
				commit(t, s, "r", "q1", "d1", false)
				commit(t, s, "r", "q-unaudited", "dx", false)
			},
			want: "debits without a request id",
		},
		"over the write budget": {
			recs: []audit.Record{allow("d1", "q1", "r", true), allow("d2", "q2", "r", true)},
			state: func(t *testing.T, s *riskstore.Memory) {
				commit(t, s, "r", "q1", "d1", true)
				commit(t, s, "r", "q2", "d2", true)
			},
			want: "over budget",
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := riskstore.NewMemory(nil)
			tc.state(t, s)
			inv, err := checkInvariants(context.Background(), tc.recs, tc.seen, s, limits, 2)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(inv.Violations, "\n")
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("violations:\n%s\nwant %q", got, tc.want)
			}
		})
	}
}
