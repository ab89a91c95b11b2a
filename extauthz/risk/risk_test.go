package risk

import (
	"math"
	"slices"
	"testing"

	"github.com/aisecops/aisecops-envoy/riskstore"
)

// workedExampleRules are the escalations the worked example applies: step 2's
// E = 1.2 for an external send after an internal read.
var workedExampleRules = []EscalationRule{
	{Name: "external_send_after_internal_read", When: []string{"external_send"}, After: []string{"read"}, AfterTrust: []string{"internal"}, E: 1.2},
	{Name: "exec_after_internal_read", When: []string{"exec"}, After: []string{"read"}, AfterTrust: []string{"internal"}, E: 2.0},
}

// TestWorkedExample pins the worked example of the AISecOps specification's
// risk aggregation model (v1.0, section 8): step risks 0.10, 0.96,
// 0.275 (printed 0.28), R_total 1.335 (printed 1.34), with a write budget of 10
// so step 3's B is 1 + 1/10.
func TestWorkedExample(t *testing.T) {
	t.Parallel()
	limits := riskstore.Limits{MaxWriteOperations: 10}
	steps := []struct {
		tool, class, trust string
		base               float64
		write              bool
		want               Factors
	}{
		{"db.read", "read", "internal", 0.2, false, Factors{RStep: 0.2, E: 1.0, T: 0.5, B: 1.0, Step: 0.10}},
		{"send_email", "external_send", "untrusted", 0.4, false, Factors{RStep: 0.4, E: 1.2, T: 2.0, B: 1.0, Step: 0.96}},
		{"db.write", "write", "internal", 0.5, true, Factors{RStep: 0.5, E: 1.0, T: 0.5, B: 1.1, Step: 0.275}},
	}
	var st riskstore.State
	for i, s := range steps {
		got := Compute(Step{BaseRisk: s.base, Class: s.class, Trust: s.trust,
			Consumption: Consumption(st, limits, s.write, 0, 0)}, st.HasFact, workedExampleRules)
		for name, pair := range map[string][2]float64{"r": {got.RStep, s.want.RStep}, "e": {got.E, s.want.E}, "t": {got.T, s.want.T}, "b": {got.B, s.want.B}, "step": {got.Step, s.want.Step}} {
			if math.Abs(pair[0]-pair[1]) > 1e-9 {
				t.Errorf("step %d %s: got %v, want %v", i+1, name, pair[0], pair[1])
			}
		}
		st.ToolCalls++
		if s.write {
			st.WriteOps++
		}
		st.RiskTotal += got.Step
		st.Facts = slices.Sorted(slices.Values(append(slices.Clone(st.Facts), StepFacts(s.class, s.trust, false, nil)...)))
	}
	if math.Abs(st.RiskTotal-1.335) > 1e-9 {
		t.Errorf("R_total = %v, want 1.335", st.RiskTotal)
	}
}

func TestFactors(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		step  Step
		facts []string
		want  Factors
	}{
		"untrusted provenance raises T on an internal route": {
			step: Step{BaseRisk: 0.5, Class: "write", Trust: "internal", Labels: []string{"unverified"}},
			want: Factors{RStep: 0.5, E: 1, T: 2, B: 1, Step: 1},
		},
		"trusted provenance does not lower an untrusted route": {
			step: Step{BaseRisk: 0.4, Class: "external_send", Trust: "untrusted", Labels: []string{"trusted"}},
			want: Factors{RStep: 0.4, E: 1, T: 2, B: 1, Step: 0.8},
		},
		"exec after internal read escalates to 2": {
			step:  Step{BaseRisk: 0.9, Class: "exec", Trust: "neutral"},
			facts: []string{FactStep("read", "internal")},
			want:  Factors{RStep: 0.9, E: 2, T: 1, B: 1, Step: 1.8, Escalations: []string{"exec_after_internal_read"}},
		},
		"read of neutral data does not escalate a send": {
			step:  Step{BaseRisk: 0.4, Class: "external_send", Trust: "untrusted"},
			facts: []string{FactStep("read", "neutral")},
			want:  Factors{RStep: 0.4, E: 1, T: 2, B: 1, Step: 0.8},
		},
		"B is clipped at 2": {
			step: Step{BaseRisk: 1, Class: "read", Trust: "neutral", Consumption: map[string]float64{"max_tool_calls": 3.5}},
			want: Factors{RStep: 1, E: 1, T: 1, B: 2, Step: 2},
		},
		"unknown label counts as untrusted": {
			step: Step{BaseRisk: 0.1, Class: "read", Trust: "internal", Labels: []string{"weird"}},
			want: Factors{RStep: 0.1, E: 1, T: 2, B: 1, Step: 0.2},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := Compute(tc.step, func(f string) bool { return slices.Contains(tc.facts, f) }, workedExampleRules)
			if math.Abs(got.Step-tc.want.Step) > 1e-9 || got.E != tc.want.E || got.T != tc.want.T || got.B != tc.want.B || len(got.Escalations) != len(tc.want.Escalations) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
