// Package risk computes one step's chain risk, step = R_step × E × T × B
// (AISecOps section 8, the chain risk model). It is pure arithmetic over the
// route, the context's provenance, the run's sticky facts and its budget
// consumption; it holds no state and decides nothing (thresholds are policy).
// It also names the facts a step leaves on its run, which the escalation rules
// and the policy read for the rest of the run.
package risk

import (
	"math"
	"slices"
	"strings"

	"github.com/aisecops/aisecops-envoy/extauthz/finding"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// Trust multipliers T of the chain-risk model: internal context halves a
// step's risk, untrusted context doubles it.
const (
	TInternal  = 0.5
	TNeutral   = 1.0
	TUntrusted = 2.0
)

// E and B bounds.
const (
	MinE, MaxE = 1.0, 3.0
	MinB, MaxB = 1.0, 2.0
)

// Facts a committed step leaves on its run. They are sticky: a read of
// internal data or untrusted context early in a run escalates an external
// send or an exec at any later step, however many steps come between.
const (
	// FactUntrusted: the run consumed untrusted context (an untrusted
	// provenance label, or instructions injected into it).
	FactUntrusted = "context:untrusted"
)

// FactStep is the fact of a step of class on a route of trust.
func FactStep(class, trust string) string { return "step:" + class + ":" + trust }

// FactFinding is the fact of a finding of class in a step.
func FactFinding(class string) string { return "finding:" + class }

// StepFacts are the facts one step leaves on its run.
func StepFacts(class, trust string, untrusted bool, findingClasses []string) []string {
	out := make([]string, 0, 2+len(findingClasses))
	out = append(out, FactStep(class, trust))
	if untrusted {
		out = append(out, FactUntrusted)
	}
	for _, c := range findingClasses {
		out = append(out, FactFinding(c))
	}
	return out
}

// trusts are the route trust levels, for rules that match any trust.
var trusts = []string{"internal", "neutral", "untrusted"}

// FindingE is the escalation a finding class brings to its step: a secret in
// the payload is as grave as an exec after a sensitive read; personal data,
// confidential documents and off-route destinations less so. 1 for the rest.
func FindingE(class string) float64 {
	switch class {
	case finding.Secret:
		return 2.0
	case finding.PII, finding.Sensitive, finding.Destination:
		return 1.5
	}
	return MinE
}

// EscalationRule raises E when a step of a class in When follows, anywhere
// earlier in the run, a step of a class in After whose trust is in AfterTrust
// (empty AfterTrust matches any trust). Rules live in the policy bundle's data.
type EscalationRule struct {
	Name       string   `json:"name"`
	When       []string `json:"when"`
	After      []string `json:"after"`
	AfterTrust []string `json:"after_trust"`
	E          float64  `json:"e"`
}

// Step is what the calculator needs to know about the step being decided.
type Step struct {
	BaseRisk float64
	Class    string
	Trust    string   // the route's trust: internal | neutral | untrusted
	Labels   []string // provenance trust levels of the context behind the call
	// Findings are the classes of the step's egress findings (secret, pii,
	// sensitive, destination, injection, size). They may raise the factors:
	// injected instructions make the context untrusted (T = 2); data that
	// should not leave escalates E (FindingE).
	Findings []string
	// Consumption is each budget's consumption ratio including this step.
	Consumption map[string]float64
}

// Factors is the computed step risk and its parts.
type Factors struct {
	RStep       float64
	E           float64
	T           float64
	B           float64
	Step        float64
	Escalations []string
}

// Compute returns the step's factors given the run's sticky facts (has
// reports whether the run has a fact).
func Compute(s Step, has func(fact string) bool, rules []EscalationRule) Factors {
	f := Factors{RStep: s.BaseRisk, E: MinE, T: Trust(s.Trust), B: MinB}
	for _, l := range s.Labels {
		f.T = math.Max(f.T, LabelTrust(l))
	}
	for _, class := range s.Findings {
		if class == finding.Injection {
			f.T = TUntrusted
		}
		if e := FindingE(class); e > f.E {
			f.E = e
			f.Escalations = append(f.Escalations, "finding:"+class)
		}
	}
	for _, r := range rules {
		if !slices.Contains(r.When, s.Class) {
			continue
		}
		if ranAfter(r, has) {
			f.E = math.Max(f.E, r.E)
			f.Escalations = append(f.Escalations, r.Name)
		}
	}
	f.E = clip(f.E, MinE, MaxE)
	var worst float64
	for _, ratio := range s.Consumption {
		worst = math.Max(worst, ratio)
	}
	f.B = clip(1+worst, MinB, MaxB)
	f.Step = f.RStep * f.E * f.T * f.B
	return f
}

// ranAfter reports whether the run had a step r escalates after.
func ranAfter(r EscalationRule, has func(string) bool) bool {
	ts := r.AfterTrust
	if len(ts) == 0 {
		ts = trusts
	}
	for _, c := range r.After {
		for _, t := range ts {
			if has(FactStep(c, t)) {
				return true
			}
		}
	}
	return false
}

// Trust maps a route's trust level to T.
func Trust(level string) float64 {
	switch level {
	case "internal":
		return TInternal
	case "neutral", "":
		return TNeutral
	default:
		return TUntrusted
	}
}

// LabelTrust maps a provenance label's trust_level to T. Unknown levels count as
// untrusted: context is untrusted by default (AISecOps v1.0, principle 4.1).
func LabelTrust(level string) float64 {
	switch strings.ToLower(level) {
	case "internal", "trusted", "verified", "system":
		return TInternal
	case "neutral":
		return TNeutral
	default:
		return TUntrusted
	}
}

// Untrusted reports whether a provenance trust level counts as untrusted.
func Untrusted(level string) bool { return LabelTrust(level) >= TUntrusted }

// Consumption returns each budget's consumption ratio after committing a step
// onto st; B is 1 + the largest of them. Budgets with no limit are left out.
func Consumption(st riskstore.State, l riskstore.Limits, write bool, costMicros int64, elapsedNS int64) map[string]float64 {
	c := make(map[string]float64, 4)
	if l.MaxToolCalls > 0 {
		c[riskstore.BudgetToolCalls] = float64(st.ToolCalls+1) / float64(l.MaxToolCalls)
	}
	if l.MaxWriteOperations > 0 {
		w := st.WriteOps
		if write {
			w++
		}
		c[riskstore.BudgetWriteOps] = float64(w) / float64(l.MaxWriteOperations)
	}
	if l.MaxCostMicros > 0 {
		c[riskstore.BudgetCost] = float64(st.CostMicros+costMicros) / float64(l.MaxCostMicros)
	}
	if l.MaxExecutionTime > 0 && elapsedNS > 0 {
		c[riskstore.BudgetExecutionTime] = float64(elapsedNS) / float64(l.MaxExecutionTime)
	}
	return c
}

func clip(v, lo, hi float64) float64 { return math.Min(math.Max(v, lo), hi) }
