package extauthz

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// Verdict is the Check's decision: the policy's, or a stage's denial.
type Verdict struct {
	Decision    string
	Reasons     []policy.Reason
	Status      int // the HTTP status Envoy answers a denial with
	Obligations map[string]any
	// Input is the policy input the decision was taken on (nil when a stage
	// before the policy denied).
	Input *policy.Input
	// Policy is what the policy decided on Input (a failed evaluation is a
	// deny with the failure's code), kept when a later stage changed the
	// Check's decision: it is what a replay of the record reproduces.
	Policy *policy.Decision
	// ApprovalID is the approval this Check requested (require_approval).
	ApprovalID string
}

// presentedApproval looks up the approval the agent presented, if any. It is
// valid only when approved and bound to this very call: the same agent, tool
// and run and the same exact request (Principal.Binding).
func (s *Server) presentedApproval(ctx context.Context, p *plan.Plan, who *Principal, rc Receipt) (policy.Approval, *reason.Error) {
	id := p.ApprovalID
	switch {
	case id == "":
		return policy.Approval{}, nil
	case rc.ApprovalUsed:
		// Consumed by this very Check before a stale commit sent it back here.
		return policy.Approval{ID: id, Present: true, Valid: true, Status: riskstore.ApprovalApproved}, nil
	}
	out := policy.Approval{ID: id, Present: true, Status: "unknown"}
	ap, err := s.cfg.Approvals.GetApproval(ctx, id)
	switch {
	case errors.Is(err, riskstore.ErrNotFound):
		return out, nil
	case err != nil:
		s.metrics.storeErrors.WithLabelValues("approval_get").Inc()
		return out, reason.Wrap(reason.StoreUnavailable, err, "approval store unavailable")
	}
	out.Status = ap.Status
	out.Valid = ap.Status == riskstore.ApprovalApproved && ap.Binding == who.Binding &&
		ap.AgentID == who.Agent.ID && ap.Tool == p.Route.Tool && ap.RunID == who.Run.ID
	return out, nil
}

// policyInput builds the Rego input from every stage's value.
func policyInput(now time.Time, p *plan.Plan, who *Principal, f Findings, rv RunView, a *Assessment, ap policy.Approval) *policy.Input {
	st, call := rv.State, p.Call0()
	in := &policy.Input{
		Time:    policy.Time{NowNS: now.UnixNano(), RFC3339: now.UTC().Format(time.RFC3339Nano)},
		Request: policy.Request{ID: p.RequestID, Method: p.Method, Host: p.Host, Path: p.Path, DryRun: p.DryRun, Explain: p.Explain},
		Route:   p.Route,
		Agent: policy.Agent{ID: who.Agent.ID, Known: true, Authenticated: who.Claims != nil,
			AllowedTools: who.Agent.AllowedTools, Approval: who.Agent.Thresholds.Approval, Halt: who.Agent.Thresholds.Halt,
			ToolAllowed: slices.Contains(who.Agent.AllowedTools, p.Route.Tool)},
		Plan: policy.Plan{Source: string(p.Source), MCPMethod: p.MCPMethod, Tool: call.Tool, Arguments: call.Arguments,
			ArgumentsHash: plan.ArgumentsHash(call.Arguments), Binding: who.Binding, TraceID: p.TraceID, RunID: who.Run.ID,
			Protocol: a.Protocol},
		Provenance:       p.Provenance,
		UntrustedContext: f.Untrusted,
		Risk: policy.Risk{RStep: a.Factors.RStep, E: a.Factors.E, T: a.Factors.T, B: a.Factors.B, Step: a.Factors.Step,
			Linked: linkedRisk(rv.Links), TotalBefore: st.RiskTotal + linkedRisk(rv.Links), Escalations: a.Factors.Escalations},
		Budget: policy.Budget{Consumption: a.Consumption, Exceeded: a.Exceeded},
		Run: policy.Run{ID: who.Run.ID, ToolCalls: st.ToolCalls, WriteOps: st.WriteOps,
			Cost: float64(st.CostMicros) / 1e6, Facts: st.Facts, ElapsedNS: int64(a.Elapsed),
			AgentToolCalls: a.Agent.ToolCalls, AgentCost: float64(a.Agent.CostMicros) / 1e6},
		Approval: ap,
		Findings: f.List,
	}
	in.Risk.Total = in.Risk.TotalBefore + in.Risk.Step
	if in.Provenance == nil {
		in.Provenance = []plan.Provenance{}
	}
	if in.Findings == nil {
		in.Findings = []policy.Finding{}
	}
	if cl := who.Claims; cl != nil {
		in.Token = policy.Token{Present: true, JTI: cl.ID, Scope: cl.Scope, PolicyVersion: cl.PolicyVersion, RunID: cl.RunID,
			SingleUse: cl.SingleUse, MaxRows: cl.Constraints.MaxRows, MaxCost: cl.Constraints.MaxCost, ExpiresNS: cl.ExpiresAt.UnixNano()}
	}
	return in
}

// evaluate: policy input → Verdict, under the Check's one bundle. A failed
// evaluation is a deny carrying the failure's code, with the input kept for
// the trace.
func evaluate(ctx context.Context, b *policy.Bundle, in *policy.Input) (Verdict, *reason.Error) {
	d, err := b.Eval(ctx, in)
	if err != nil {
		re := asReason(err, reason.PolicyError)
		return Verdict{Input: in, Policy: &policy.Decision{Decision: policy.Deny,
			Reasons: []policy.Reason{{Code: string(re.Code), Message: re.Message, ControlID: reason.ControlID(re.Code)}}}}, re
	}
	v := Verdict{Decision: d.Decision, Reasons: d.Reasons, Obligations: d.Obligations, Input: in, Status: http.StatusForbidden}
	switch d.Decision {
	case policy.Allow:
		v.Status = http.StatusOK
		if len(v.Reasons) == 0 {
			v.Reasons = []policy.Reason{{Code: string(reason.PolicyAllow), Message: "allowed by policy"}}
		}
	case policy.Deny:
		for _, r := range d.Reasons {
			if st := reason.HTTPStatus(reason.Code(r.Code)); st != http.StatusForbidden {
				v.Status = st
				break
			}
		}
	}
	v.Policy = &policy.Decision{Decision: v.Decision, Reasons: v.Reasons}
	return v, nil
}
