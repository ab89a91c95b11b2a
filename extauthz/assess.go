package extauthz

import (
	"context"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// RunView is the run as the Check sees it before deciding.
type RunView struct {
	State riskstore.State
	// Links are the other runs the call's context came from (linkRuns).
	Links []Link
	// Cached: the state came from this replica's run cache, not from the
	// store, and may have moved on another replica since.
	Cached bool
}

// loadRun: Principal → RunView, from this replica's cache when it holds the
// run, else from the store. prior is set when the store has already committed
// this very request (an Envoy retry).
//
// optimistic (a Check, which commits) decides a run this replica does not
// hold as a new one, without reading it: most such runs are new, and this
// makes their first step one store round trip. It is safe because the view
// is marked Cached — so the commit is conditional on version 0 and a denial
// is confirmed against the store — and a run that did exist comes back
// Stale with its state, to be decided again. Explain and dry-run, which
// commit nothing, read the store.
func loadRun(ctx context.Context, rs RunStore, cache *runCache, who *Principal, now time.Time, optimistic bool) (RunView, *riskstore.Prior, error) {
	if st, ok := cache.get(who.Run, now); ok {
		return RunView{State: st, Cached: true}, nil, nil
	}
	if optimistic {
		return RunView{State: riskstore.State{Run: who.Run}, Cached: true}, nil, nil
	}
	return readRun(ctx, rs, cache, who, now)
}

// readRun reads the run from the store and caches it.
func readRun(ctx context.Context, rs RunStore, cache *runCache, who *Principal, now time.Time) (RunView, *riskstore.Prior, error) {
	st, err := rs.Load(ctx, who.Run, who.IdemKey)
	if err != nil {
		return RunView{State: riskstore.State{Run: who.Run}}, nil, err
	}
	prior := st.Prior
	st.Prior = nil
	cache.put(who.Run, st, now)
	return RunView{State: st}, prior, nil
}

// storeFault turns a store error into the Check's denial, counted and logged.
func (s *Server) storeFault(op string, run riskstore.RunRef, err error, msg string) *reason.Error {
	s.metrics.storeErrors.WithLabelValues(op).Inc()
	s.log.Warn("store "+op+" failed; denying", "run_id", run.ID, "err", err)
	return reason.Wrap(reason.StoreUnavailable, err, "%s", msg)
}

// Assessment is the step's place in its run: the limits that apply, the
// budgets' consumption including this step, its chain risk, and the step the
// store would record.
type Assessment struct {
	Limits      riskstore.Limits
	Consumption map[string]float64
	Factors     risk.Factors
	Step        riskstore.Step
	// Exceeded names the first budget this step would exceed, or "".
	Exceeded string
	// TTL is the run's idle lifetime: a refused or halted run must outlive the
	// agent's budget window, or a fresh run would come back sooner.
	TTL time.Duration
	// Elapsed is the run's age at this step and Agent the agent's use of its
	// current window, as the consumption was computed from them.
	Elapsed time.Duration
	Agent   riskstore.AgentUsage
	// Protocol: MCP protocol traffic (plan.Plan.Protocol), decided but not
	// counted.
	Protocol bool
}

// limits are the agent's budgets as the store checks them.
func limits(a config.Agent) riskstore.Limits {
	return riskstore.Limits{
		MaxToolCalls:       a.Budgets.MaxToolCalls,
		MaxWriteOperations: a.Budgets.MaxWriteOperations,
		MaxExecutionTime:   time.Duration(a.Budgets.MaxExecutionTime),
		MaxCostMicros:      config.Micros(a.Budgets.MaxCost),
		MaxRisk:            a.Thresholds.Halt,
		AgentWindow:        time.Duration(a.AgentBudgets.Window),
		AgentMaxToolCalls:  a.AgentBudgets.MaxToolCalls,
		AgentMaxCostMicros: config.Micros(a.AgentBudgets.MaxCost),
	}
}

// assess: Plan, Principal, Findings, RunView → Assessment. Time is the
// store's clock as of the run's last read when there was one (execution time
// and agent windows are the store's), else the Check's.
func assess(p *plan.Plan, who *Principal, f Findings, rv RunView, rules []risk.EscalationRule, runTTL time.Duration, decisionID string, now time.Time) (Assessment, *reason.Error) {
	r, st := p.Route, rv.State
	if !rv.Cached && !st.Now.IsZero() {
		now = st.Now
	}
	a := Assessment{Limits: limits(who.Agent), TTL: max(runTTL, time.Duration(who.Agent.AgentBudgets.Window))}
	st.Agent = st.Agent.Current(a.Limits.AgentWindow, now)
	a.Agent = st.Agent
	write := r.ToolClass == config.ClassWrite
	cost := config.Micros(r.Cost)
	if !st.StartedAt.IsZero() {
		a.Elapsed = now.Sub(st.StartedAt)
	}
	if p.Protocol() {
		// MCP protocol traffic reaches no tool: it adds no risk, spends no
		// budget and is never committed as a step.
		a.Protocol = true
		a.Factors = risk.Factors{E: risk.MinE, T: risk.Trust(r.Trust), B: risk.MinB}
		a.Consumption = map[string]float64{}
		return a, nil
	}
	a.Consumption = risk.Consumption(st, a.Limits, write, cost, int64(a.Elapsed))
	labels := make([]string, len(p.Provenance))
	for i, l := range p.Provenance {
		labels[i] = l.TrustLevel
	}
	classes := f.Classes()
	a.Factors = risk.Compute(risk.Step{BaseRisk: r.BaseRisk, Class: r.ToolClass, Trust: r.Trust, Labels: labels,
		Findings: classes, Consumption: a.Consumption}, st.HasFact, rules)
	a.Step = riskstore.Step{
		RequestID:     who.IdemKey,
		DecisionID:    decisionID,
		ExpectVersion: st.Version,
		Write:         write,
		CostMicros:    cost,
		Risk:          a.Factors.Step,
		Facts:         risk.StepFacts(r.ToolClass, r.Trust, f.Untrusted, classes),
	}
	budgetOnly := a.Limits
	budgetOnly.MaxRisk = 0 // the risk thresholds are policy's to decide
	a.Exceeded = riskstore.Exceeds(st, a.Step, budgetOnly, now)
	if c := who.Claims; c != nil && c.Constraints.MaxCost != nil && float64(st.CostMicros+cost)/1e6 > *c.Constraints.MaxCost+1e-9 {
		return a, reason.New(reason.TokenConstraint, "the run's cost would exceed the token's max_cost")
	}
	if g := who.Grant.MaxCost; g > 0 && float64(st.CostMicros+cost)/1e6 > g+1e-9 {
		return a, reason.New(reason.TokenConstraint, "the run's cost would exceed what the agent is granted on this tool")
	}
	return a, nil
}
