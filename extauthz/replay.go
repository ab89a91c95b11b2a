package extauthz

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Redecide decides a recorded Check again from its policy input (arguments
// restored by the caller) under bundle b. Policies have no clock, network or
// randomness, so the same input and bundle give the same decision: a replay
// under the bundle that decided reproduces it exactly.
//
// With dir (a candidate routes file), the route and the agent come from dir
// instead of the record, and the parts of the input derived from them are
// recomputed from the recorded run: the agent's tools and thresholds, the
// budget consumption and the step's risk (under b's escalation rules). What
// stages before the policy decided from the request itself (the token, the
// constraints, egress findings) is taken as recorded.
func Redecide(ctx context.Context, in *policy.Input, b *policy.Bundle, dir *Directory) (Verdict, error) {
	if in == nil {
		return Verdict{}, errors.New("extauthz: redecide: no recorded policy input")
	}
	cp := *in
	if dir != nil {
		if err := rebase(&cp, dir.current(), b.Escalation()); err != nil {
			return Verdict{}, err
		}
	}
	v, rerr := evaluate(ctx, b, &cp)
	if rerr != nil {
		v.Decision, v.Reasons, v.Status = policy.Deny, []policy.Reason{{Code: string(rerr.Code), Message: rerr.Message}}, reason.HTTPStatus(rerr.Code)
	}
	return v, nil
}

// rebase rewrites the route- and agent-derived parts of a recorded input for
// the configuration d.
func rebase(in *policy.Input, d *directory, rules []risk.EscalationRule) error {
	t, ok := d.tools[in.Route.Tool]
	if !ok {
		return reason.New(reason.RouteUnconfigured, "the candidate routes file has no route for tool %s", in.Route.Tool)
	}
	in.Route = d.route(t)
	a, known := d.agent(in.Agent.ID)
	in.Agent = policy.Agent{ID: in.Agent.ID, Known: known, Authenticated: in.Agent.Authenticated,
		AllowedTools: a.AllowedTools, Approval: a.Thresholds.Approval, Halt: a.Thresholds.Halt,
		ToolAllowed: slices.Contains(a.AllowedTools, t.Name)}
	lim := limits(a)
	write := t.Class == config.ClassWrite
	cost := config.Micros(t.Cost)
	st := riskstore.State{ToolCalls: in.Run.ToolCalls, WriteOps: in.Run.WriteOps, CostMicros: config.Micros(in.Run.Cost),
		RiskTotal: in.Risk.TotalBefore, Facts: in.Run.Facts,
		Agent: riskstore.AgentUsage{ToolCalls: in.Run.AgentToolCalls, CostMicros: config.Micros(in.Run.AgentCost)}}
	if in.Run.ElapsedNS > 0 {
		now := time.Unix(0, in.Time.NowNS)
		st.StartedAt = now.Add(-time.Duration(in.Run.ElapsedNS))
	}
	consumption := risk.Consumption(st, lim, write, cost, in.Run.ElapsedNS)
	labels := make([]string, len(in.Provenance))
	for i, l := range in.Provenance {
		labels[i] = l.TrustLevel
	}
	var classes []string
	for _, f := range in.Findings {
		if !slices.Contains(classes, f.Class) {
			classes = append(classes, f.Class)
		}
	}
	f := risk.Compute(risk.Step{BaseRisk: t.BaseRisk, Class: t.Class, Trust: t.Trust, Labels: labels, Findings: classes,
		Consumption: consumption}, st.HasFact, rules)
	in.Risk = policy.Risk{RStep: f.RStep, E: f.E, T: f.T, B: f.B, Step: f.Step, TotalBefore: st.RiskTotal,
		Total: st.RiskTotal + f.Step, Escalations: f.Escalations}
	lim.MaxRisk = 0 // the risk thresholds are policy's to decide
	step := riskstore.Step{Write: write, CostMicros: cost, Risk: f.Step}
	in.Budget = policy.Budget{Consumption: consumption, Exceeded: riskstore.Exceeds(st, step, lim, st.StartedAt.Add(time.Duration(in.Run.ElapsedNS)))}
	return nil
}
