package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// parse: CheckRequest → Plan.
func (s *Server) parse(_ context.Context, c *check) *reason.Error {
	p, err := plan.FromCheckRequest(c.req, s.cfg.Plan)
	if p != nil {
		c.plan = p // a partial plan still names the route for the audit line
		c.dryRun = p.DryRun || p.Explain
	}
	if err != nil {
		return asReason(err, reason.BadRequest)
	}
	c.plan = p
	c.call = p.Call0()
	c.argsHash = plan.Hash(c.call.Arguments)
	return nil
}

// authenticate: Plan → verified token → agent.
func (s *Server) authenticate(ctx context.Context, c *check) *reason.Error {
	p := c.plan
	llm := p.Route.ToolClass == config.ClassLLM
	if p.Token == "" {
		if !llm {
			return reason.New(reason.TokenMissing, "a capability token is required for tool calls")
		}
		// Model calls may come without a capability token; the agent is then
		// unauthenticated and named only by the plan, and policy decides.
		c.agentID = p.AgentID
	} else {
		claims, err := s.cfg.Verifier.Verify(ctx, p.Token, c.now)
		if err != nil {
			return asReason(err, reason.TokenMalformed)
		}
		if err := s.cfg.Verifier.CheckRoute(claims, p.Route.Tool); err != nil {
			return asReason(err, reason.TokenToolMismatch)
		}
		if s.cfg.Revocations != nil {
			if err := s.cfg.Revocations.Check(claims); err != nil {
				return asReason(err, reason.TokenRevoked)
			}
		}
		c.claims = claims
		c.agentID = claims.AgentID
		c.authenticated = true
		if p.AgentID != "" && p.AgentID != claims.AgentID {
			return reason.New(reason.AgentMismatch, "the plan names another agent than the token")
		}
		if claims.RunID != "" {
			if p.RunID != "" && p.RunID != claims.RunID {
				return reason.New(reason.RunMismatch, "the token is bound to another run")
			}
			p.RunID = claims.RunID
		}
		if err := checkMaxRows(claims.Constraints.MaxRows, c.call.Arguments); err != nil {
			return err
		}
		if err := checkScope(claims.Scope, c.call.Arguments); err != nil {
			return err
		}
	}
	a, ok := s.cfg.Directory.Agent(c.agentID)
	if !ok {
		return reason.New(reason.AgentUnknown, "the agent is not configured")
	}
	c.agent = a
	if p.RunID == "" {
		// Calls that name no run share one run per agent, so their risk and
		// budgets still accumulate rather than reset on every call.
		p.RunID = "agent:" + c.agentID
	}
	c.planHash = plan.PlanHash(c.call.Tool, c.call.Arguments, p.RunID)
	if p.RequestID != "" {
		// The idempotency key binds the request id to the exact plan: a retry
		// of the same call is answered as before, but a request id reused for
		// another call is just a new call, never a free pass.
		c.idemKey = p.RequestID + "/" + c.planHash[:32]
	}
	return nil
}

// rowArgs are the argument names a tool may use for how many rows it returns.
var rowArgs = []string{"max_rows", "limit", "rows", "row_limit", "top_k"}

// checkMaxRows enforces the token's max_rows constraint against the plan's
// row/limit argument, where the call has one.
func checkMaxRows(max *int64, args json.RawMessage) *reason.Error {
	if max == nil || len(args) == 0 {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(args, &m) != nil {
		return nil
	}
	for _, name := range rowArgs {
		raw, ok := m[name]
		if !ok {
			continue
		}
		var n float64
		if err := json.Unmarshal(raw, &n); err != nil {
			return reason.New(reason.TokenConstraint, "argument %s must be a number under the token's max_rows", name)
		}
		if n > float64(*max) {
			return reason.New(reason.TokenConstraint, "argument %s exceeds the token's max_rows", name)
		}
	}
	return nil
}

// scopeArgs are the argument names a tool may use for the resource it acts on.
var scopeArgs = []string{"resource", "scope", "table", "collection", "dataset", "project"}

// checkScope enforces a token's scope against the plan. A scope is a
// dot-separated resource path (the seed's "project.alpha.orders"); the
// resource the call names, when it names one, must be the scope or under it
// ("project.alpha.orders.eu" is inside, "project.alpha.invoices" is not). A
// call that names no resource argument is not narrowed by the scope: the route
// already fixed the tool.
func checkScope(scope string, args json.RawMessage) *reason.Error {
	if scope == "" || len(args) == 0 {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(args, &m) != nil {
		return nil
	}
	for _, name := range scopeArgs {
		raw, ok := m[name]
		if !ok {
			continue
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			return reason.New(reason.TokenScope, "argument %s must be a resource name within the token's scope", name)
		}
		if v != scope && !strings.HasPrefix(v, scope+".") {
			return reason.New(reason.TokenScope, "argument %s is outside the token's scope", name)
		}
	}
	return nil
}

// inspect: Plan → findings.
func (s *Server) inspect(_ context.Context, c *check) *reason.Error {
	c.untrusted = slices.ContainsFunc(c.plan.Provenance, func(l plan.Provenance) bool { return risk.Untrusted(l.TrustLevel) })
	if s.cfg.Inspector == nil {
		return nil
	}
	tool, _ := s.cfg.Directory.Tool(c.plan.Route.Tool)
	ins, err := s.cfg.Inspector.Inspect(c.plan, tool, c.untrusted)
	c.findings = ins.Findings
	c.derivedProvenance = ins.Provenance
	if err != nil {
		return asReason(err, reason.EgressBlocked)
	}
	for _, f := range c.findings {
		if f.Class == "injection" {
			// Injected instructions make the whole step untrusted context,
			// which the run remembers (AIS-CTX-01).
			c.untrusted = true
		}
	}
	return nil
}

// loadRun: → run state, from this replica's cache when it has the run, else
// from the store. A request id committed before is answered as before.
func (s *Server) loadRun(ctx context.Context, c *check) *reason.Error {
	if st, ok := s.runs.get(c.plan.RunID, c.now); ok {
		c.state, c.cached = st, true
		return nil
	}
	return s.readRun(ctx, c)
}

// readRun reads the run from the store.
func (s *Server) readRun(ctx context.Context, c *check) *reason.Error {
	st, err := s.cfg.Store.Load(ctx, c.plan.RunID, c.idemKey)
	if err != nil {
		s.metrics.storeErrors.WithLabelValues("load").Inc()
		s.log.Warn("run state load failed", "decision_id", c.id, "run_id", c.plan.RunID, "err", err)
		return reason.Wrap(reason.StoreUnavailable, err, "run state unavailable")
	}
	c.state, c.cached = st, false
	s.runs.put(c.plan.RunID, st, c.now)
	if st.Prior != nil && !c.dryRun {
		c.allowDuplicate(st.Prior)
	}
	return nil
}

// assess: run state → limits, budget consumption and the step's risk.
func (s *Server) assess(_ context.Context, c *check) *reason.Error {
	a, r := c.agent, c.plan.Route
	c.limits = riskstore.Limits{
		MaxToolCalls:       a.Budgets.MaxToolCalls,
		MaxWriteOperations: a.Budgets.MaxWriteOperations,
		MaxExecutionTime:   time.Duration(a.Budgets.MaxExecutionTime),
		MaxCostMicros:      config.Micros(a.Budgets.MaxCost),
		MaxRisk:            a.Thresholds.Halt,
	}
	write := r.ToolClass == config.ClassWrite
	cost := config.Micros(r.Cost)
	var elapsed int64
	if !c.state.StartedAt.IsZero() {
		elapsed = int64(c.now.Sub(c.state.StartedAt))
	}
	c.consumption = risk.Consumption(c.state, c.limits, write, cost, elapsed)
	labels := make([]string, len(c.plan.Provenance))
	for i, l := range c.plan.Provenance {
		labels[i] = l.TrustLevel
	}
	classes := make([]string, 0, len(c.findings))
	for _, f := range c.findings {
		classes = append(classes, f.Class)
	}
	c.factors = risk.Compute(risk.Step{BaseRisk: r.BaseRisk, Class: r.ToolClass, Trust: r.Trust, Labels: labels,
		Findings: classes, Consumption: c.consumption}, c.state.Recent, s.cfg.Policy.Escalation())
	c.step = riskstore.Step{
		RequestID:     c.idemKey,
		DecisionID:    c.id,
		ExpectVersion: c.state.Version,
		Write:         write,
		CostMicros:    cost,
		Summary: riskstore.StepSummary{Tool: r.Tool, Class: r.ToolClass, Trust: r.Trust, Untrusted: c.untrusted,
			Risk: c.factors.Step, At: c.now},
	}
	budgetOnly := c.limits
	budgetOnly.MaxRisk = 0 // the risk thresholds are policy's to decide
	c.exceeded = riskstore.Exceeds(c.state, c.step, budgetOnly, c.now)
	c.assessed = true
	if mc := c.claimsMaxCost(); mc != nil && float64(c.state.CostMicros+cost)/1e6 > *mc+1e-9 {
		return reason.New(reason.TokenConstraint, "the run's cost would exceed the token's max_cost")
	}
	return nil
}

// evaluate: everything above → the policy's decision.
func (s *Server) evaluate(ctx context.Context, c *check) *reason.Error {
	if id := c.plan.ApprovalID; id != "" && c.approvalUsed {
		// Consumed by this very Check before a stale commit sent it back here.
		c.approval = policy.Approval{ID: id, Present: true, Valid: true, Status: riskstore.ApprovalApproved}
	} else if id != "" {
		c.approval = policy.Approval{ID: id, Present: true, Status: "unknown"}
		if ap, err := s.cfg.Approvals.GetApproval(ctx, id); err == nil {
			c.approval.Status = ap.Status
			c.approval.Valid = ap.Status == riskstore.ApprovalApproved && ap.PlanHash == c.planHash
		} else if !errors.Is(err, riskstore.ErrNotFound) {
			s.metrics.storeErrors.WithLabelValues("approval_get").Inc()
			return reason.Wrap(reason.StoreUnavailable, err, "approval store unavailable")
		}
	}
	c.input = c.policyInput()
	d, err := s.cfg.Policy.Eval(ctx, c.input)
	if err != nil {
		s.log.Warn("policy evaluation failed; denying", "decision_id", c.id, "err", err)
		return asReason(err, reason.PolicyError)
	}
	c.setPolicyDecision(d)
	return nil
}

// enforce: commit the allowed step, or record the approval request. Dry-run and
// explain commit nothing.
func (s *Server) enforce(ctx context.Context, c *check) *reason.Error {
	if c.decision != policy.Allow && c.cached {
		// Anything but an allow decided on cached state is confirmed against
		// the store first: the run may have moved on another replica, or this
		// may be Envoy retrying a request already allowed.
		version := c.state.Version
		if err := s.readRun(ctx, c); err != nil || c.finished {
			return err
		}
		if c.state.Version != version {
			c.redecide = true
			return nil
		}
	}
	if c.dryRun {
		return nil
	}
	switch c.decision {
	case policy.RequireApproval:
		ap := riskstore.Approval{ID: newID("apr_"), RunID: c.plan.RunID, AgentID: c.agentID, Tool: c.plan.Route.Tool,
			PlanHash: c.planHash, DecisionID: c.id, Risk: c.factors.Step + c.state.RiskTotal, Status: riskstore.ApprovalPending,
			CreatedAt: c.now}
		for _, r := range c.reasons {
			ap.Reasons = append(ap.Reasons, r.Code)
		}
		if err := s.cfg.Approvals.CreateApproval(ctx, ap, s.cfg.ApprovalTTL); err != nil {
			s.metrics.storeErrors.WithLabelValues("approval_create").Inc()
			return reason.Wrap(reason.StoreUnavailable, err, "approval store unavailable")
		}
		c.approvalID = ap.ID
		return nil
	case policy.Allow:
	default:
		return nil
	}
	if err := ctx.Err(); err != nil {
		// Envoy has given up on this Check: commit nothing so the abandoned
		// call costs the run nothing.
		return reason.Wrap(reason.DeadlineExceeded, err, "the check deadline passed before commit")
	}
	if c.claims != nil && !c.jtiUsed && (c.claims.SingleUse || c.obligation("consume_jti") != nil) {
		ttl := time.Until(c.claims.ExpiresAt) + time.Minute
		first, err := s.cfg.Nonces.UseOnce(ctx, "jti:"+c.claims.ID, max(ttl, time.Minute))
		if err != nil {
			s.metrics.storeErrors.WithLabelValues("nonce").Inc()
			return reason.Wrap(reason.StoreUnavailable, err, "token store unavailable")
		}
		if !first {
			return reason.New(reason.TokenReplayed, "this single-use token was used before")
		}
		c.jtiUsed = true // a re-decision after a stale commit must not spend it twice
	}
	if c.approval.Valid && !c.approvalUsed {
		if _, err := s.cfg.Approvals.ConsumeApproval(ctx, c.approval.ID, c.planHash); err != nil {
			if errors.Is(err, riskstore.ErrConflict) || errors.Is(err, riskstore.ErrNotFound) {
				return reason.New(reason.ApprovalInvalid, "the approval was already used or does not match this call")
			}
			s.metrics.storeErrors.WithLabelValues("approval_consume").Inc()
			return reason.Wrap(reason.StoreUnavailable, err, "approval store unavailable")
		}
		c.approvalUsed = true
	}
	if c.lastAttempt {
		c.step.ExpectVersion = riskstore.AnyVersion
	}
	res, err := s.cfg.Store.Commit(ctx, c.plan.RunID, c.step, c.limits, c.now, s.cfg.RunTTL)
	if err != nil && c.idemKey != "" && ctx.Err() == nil {
		// The outcome is unknown (a reply lost or late). The idempotency key
		// makes asking again safe: a commit that did land comes back as a
		// Duplicate of this very decision instead of a second debit.
		s.metrics.storeErrors.WithLabelValues("commit_retried").Inc()
		res, err = s.cfg.Store.Commit(ctx, c.plan.RunID, c.step, c.limits, c.now, s.cfg.RunTTL)
	}
	if err != nil {
		s.runs.drop(c.plan.RunID) // the run may have moved: read it next time
		s.metrics.storeErrors.WithLabelValues("commit").Inc()
		s.log.Warn("run state commit failed; denying", "decision_id", c.id, "run_id", c.plan.RunID, "err", err)
		return reason.Wrap(reason.StoreUnavailable, err, "run state unavailable")
	}
	s.runs.put(c.plan.RunID, res.State, c.now)
	switch res.Outcome {
	case riskstore.Committed:
		c.committed = true
		c.state = res.State
		c.totalAfter = res.State.RiskTotal
	case riskstore.Duplicate:
		if res.Prior != nil && res.Prior.DecisionID == c.id {
			// Our own commit, whose reply was lost the first time.
			c.committed, c.state, c.totalAfter = true, res.State, res.Prior.RiskTotal
			break
		}
		c.allowDuplicate(res.Prior)
	case riskstore.Stale:
		// Another replica (or an expiry) moved the run: decide again on the
		// state the store returned, without reading it again.
		c.state, c.cached, c.redecide = res.State, false, true
		return nil
	case riskstore.Refused:
		c.exceeded = res.Limit
		if res.Limit == riskstore.BudgetRisk {
			return reason.New(reason.RiskHalt, "the run's cumulative risk would pass the halt threshold")
		}
		return reason.New(reason.BudgetExceeded, "the run's %s budget is spent", res.Limit)
	default:
		return reason.New(reason.Internal, "unexpected commit outcome")
	}
	return nil
}

// asReason returns err as a *reason.Error, wrapping a foreign error with code.
func asReason(err error, code reason.Code) *reason.Error {
	var re *reason.Error
	if errors.As(err, &re) {
		return re
	}
	return reason.Wrap(code, err, "request denied")
}
