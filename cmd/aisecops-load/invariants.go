package main

import (
	"context"
	"fmt"
	"math"
	"sort"
	"sync"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// runLoader reads a run, and whether a request was committed on it: the
// riskstore's own Load (State.Prior is set when it was).
type runLoader interface {
	Load(ctx context.Context, run riskstore.RunRef, requestID string) (riskstore.State, error)
}

// seenAllow is an allowed answer the load received.
type seenAllow struct {
	decisionID, requestID, run, agent string
}

// budget is what an agent's run may consume.
type budget struct{ calls, writes, costMicros int64 }

func budgets(f *config.File) map[string]budget {
	out := map[string]budget{}
	for _, a := range f.Agents {
		out[a.ID] = budget{calls: a.Budgets.MaxToolCalls, writes: a.Budgets.MaxWriteOperations, costMicros: int64(math.Round(a.Budgets.MaxCost * 1e6))}
	}
	return out
}

// invariants is what the soak proves from the audit log and the store.
type invariants struct {
	AuditRecords     int `json:"audit_records"`
	AllowedSeen      int `json:"allowed_seen_by_load"`
	AllowedAudited   int `json:"allowed_audited"`
	Runs             int `json:"runs"`
	RequestsChecked  int `json:"request_ids_checked"`
	CommittedDebits  int `json:"committed_debits"`
	RunsAtBudget     int `json:"runs_at_a_budget"`
	DuplicateAnswers int `json:"duplicate_answers"`
	// Violations, each a sentence; empty when every invariant holds.
	Violations []string `json:"violations"`
}

// maxViolations bounds what is listed of each kind (all are counted).
const maxViolations = 20

// checkInvariants checks, for every run the audit log names:
//
//   - every allowed answer the load received has its audit record, an allow;
//   - every allowed Check in the audit log has a committed debit in the store
//     (its request id is committed on its run);
//   - no request id was debited twice: at most one decision committed it, and
//     the run's call counter equals the number of its request ids committed;
//   - no run's counters are above its agent's budgets.
func checkInvariants(ctx context.Context, recs []audit.Record, seen []seenAllow, store runLoader, limits map[string]budget, workers int) (invariants, error) {
	inv := invariants{AuditRecords: len(recs), AllowedSeen: len(seen)}
	counts := map[string]int{}
	violate := func(kind, format string, args ...any) {
		counts[kind]++
		if counts[kind] <= maxViolations {
			inv.Violations = append(inv.Violations, kind+": "+fmt.Sprintf(format, args...))
		}
	}

	allowByDecision := map[string]bool{}
	type key struct{ agent, run, idem string }
	committers := map[key]map[string]bool{} // idempotency key → decisions that committed it
	allowedKeys := map[key][]string{}       // idempotency key → allowed decisions
	runKeys := map[riskstore.RunRef]map[string]bool{}
	for _, r := range recs {
		if r.Event != "" || r.DryRun || r.Explain || r.AgentID == "" || r.RunID == "" {
			continue // not a Check, or one that never reached a run
		}
		ref := riskstore.RunRef{Agent: r.AgentID, ID: r.RunID}
		if runKeys[ref] == nil {
			runKeys[ref] = map[string]bool{}
		}
		idem := idempotencyKey(r)
		if idem == "" {
			if r.Decision == "allow" {
				violate("allowed without a request id", "decision %s on run %s", r.DecisionID, r.RunID)
			}
			continue
		}
		k := key{r.AgentID, r.RunID, idem}
		runKeys[ref][idem] = true
		if r.Decision == "allow" {
			allowByDecision[r.DecisionID] = true
			allowedKeys[k] = append(allowedKeys[k], r.DecisionID)
			inv.AllowedAudited++
			if len(r.Reasons) > 0 && r.Reasons[0].Code == "duplicate_request" {
				inv.DuplicateAnswers++
			}
		}
		if r.Committed {
			if committers[k] == nil {
				committers[k] = map[string]bool{}
			}
			committers[k][r.DecisionID] = true
		}
	}
	for _, a := range seen {
		if !allowByDecision[a.decisionID] {
			violate("allowed without its audit record", "decision %s (request %s, run %s)", a.decisionID, a.requestID, a.run)
		}
	}
	for k, ds := range committers {
		if len(ds) > 1 {
			violate("double debit", "request %s on run %s committed by %d decisions", k.idem, k.run, len(ds))
		}
	}

	// Ask the store about every request id of every run.
	type result struct {
		ref       riskstore.RunRef
		state     riskstore.State
		committed map[string]string // idempotency key → committing decision
		err       error
	}
	refs := make([]riskstore.RunRef, 0, len(runKeys))
	for ref := range runKeys {
		refs = append(refs, ref)
	}
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].Agent != refs[j].Agent {
			return refs[i].Agent < refs[j].Agent
		}
		return refs[i].ID < refs[j].ID
	})
	results := make([]result, len(refs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range max(workers, 1) {
		wg.Go(func() {
			for i := range next {
				ref := refs[i]
				res := result{ref: ref, committed: map[string]string{}}
				for idem := range runKeys[ref] {
					st, err := store.Load(ctx, ref, idem)
					if err != nil {
						res.err = fmt.Errorf("load run %s: %w", ref.ID, err)
						break
					}
					res.state = st
					if st.Prior != nil {
						res.committed[idem] = st.Prior.DecisionID
					}
				}
				results[i] = res
			}
		})
	}
	for i := range refs {
		next <- i
	}
	close(next)
	wg.Wait()

	inv.Runs = len(refs)
	for _, res := range results {
		if res.err != nil {
			return inv, res.err
		}
		ref, st := res.ref, res.state
		inv.RequestsChecked += len(runKeys[ref])
		inv.CommittedDebits += len(res.committed)
		for idem := range runKeys[ref] {
			k := key{ref.Agent, ref.ID, idem}
			if len(allowedKeys[k]) > 0 && res.committed[idem] == "" {
				violate("allowed without a committed debit", "request %s on run %s (decisions %v)", idem, ref.ID, allowedKeys[k])
			}
			if d := res.committed[idem]; d != "" && len(committers[k]) == 1 && !committers[k][d] {
				violate("debit of another decision", "request %s on run %s: the store has %s, the audit log %v", idem, ref.ID, d, committers[k])
			}
		}
		if st.ToolCalls != int64(len(res.committed)) {
			violate("debits without a request id", "run %s (%s): %d calls counted, %d request ids committed", ref.ID, ref.Agent, st.ToolCalls, len(res.committed))
		}
		b, ok := limits[ref.Agent]
		if !ok {
			violate("unknown agent", "run %s of %s", ref.ID, ref.Agent)
			continue
		}
		over := func(what string, got, limit int64) {
			if limit > 0 && got > limit {
				violate("over budget", "run %s (%s): %s %d > %d", ref.ID, ref.Agent, what, got, limit)
			}
		}
		over("tool calls", st.ToolCalls, b.calls)
		over("write operations", st.WriteOps, b.writes)
		over("cost (micros)", st.CostMicros, b.costMicros)
		if (b.calls > 0 && st.ToolCalls == b.calls) || (b.writes > 0 && st.WriteOps == b.writes) {
			inv.RunsAtBudget++
		}
	}
	for kind, n := range counts {
		if n > maxViolations {
			inv.Violations = append(inv.Violations, fmt.Sprintf("%s: %d more", kind, n-maxViolations))
		}
	}
	sort.Strings(inv.Violations)
	return inv, nil
}

// idempotencyKey is the key the server commits a request under: its request
// id bound to the call's binding (extauthz.Principal.IdemKey).
func idempotencyKey(r audit.Record) string {
	if r.RequestID == "" || len(r.Binding) < 32 {
		return ""
	}
	return r.RequestID + "/" + r.Binding[:32]
}
