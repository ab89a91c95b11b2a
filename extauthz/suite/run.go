package suite

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Report is the outcome of running suites against one routes file and one
// policy bundle.
type Report struct {
	Routes        string        `json:"routes"`
	PolicyVersion string        `json:"policy_version"`
	PolicyHash    string        `json:"policy_hash"`
	Suites        []SuiteResult `json:"suites"`
	Passed        int           `json:"passed"`
	Failed        int           `json:"failed"`
	// Classes and Maturity are set when some case names a threat class.
	Classes  []ClassResult `json:"classes,omitempty"`
	Maturity *Maturity     `json:"maturity,omitempty"`
}

// OK reports whether every expectation held.
func (r *Report) OK() bool { return r.Failed == 0 }

// SuiteResult is one suite's cases.
type SuiteResult struct {
	Name   string       `json:"name"`
	Source string       `json:"source"`
	Cases  []CaseResult `json:"cases"`
}

// CaseResult is one case's steps. Pass: every step answered as expected.
type CaseResult struct {
	Name        string        `json:"name"`
	Class       string        `json:"class,omitempty"`
	Description string        `json:"description,omitempty"`
	Pass        bool          `json:"pass"`
	Steps       []StepResult  `json:"steps"`
	Duration    time.Duration `json:"duration_ns"`
}

// Failures are the case's mismatches, one line each, naming the step.
func (c CaseResult) Failures() []string {
	var out []string
	for _, s := range c.Steps {
		for _, d := range s.Diff {
			out = append(out, fmt.Sprintf("step %d %s: %s", s.Index, s.Label(), d))
		}
	}
	return out
}

// StepResult is one step: what was expected, what the pipeline answered and,
// when they differ, how.
type StepResult struct {
	Index  int      `json:"step"`
	Name   string   `json:"name,omitempty"`
	Agent  string   `json:"agent"`
	Tool   string   `json:"tool"`
	Expect Expect   `json:"expect"`
	Got    Outcome  `json:"got"`
	Pass   bool     `json:"pass"`
	Diff   []string `json:"diff,omitempty"`
}

// Label names the step for a reader: "(send_email)" or "send to attacker (send_email)".
func (s StepResult) Label() string {
	if s.Name != "" {
		return fmt.Sprintf("%q (%s %s)", s.Name, s.Agent, s.Tool)
	}
	return fmt.Sprintf("(%s %s)", s.Agent, s.Tool)
}

// ClassResult is one threat class: it is stopped when it has cases and every
// one of them passed.
type ClassResult struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Cases   int    `json:"cases"`
	Failed  int    `json:"failed"`
	Stopped bool   `json:"stopped"`
}

// Maturity is what the threat classes stopped support on the specification's
// self-assessment rubric (section 12): level 2 asks for a regression suite
// covering at least 3 of the 5 threat classes; every class stopped with chain
// risk enforced (the worked example) is the evaluation evidence of level 3,
// whose other criteria (gateway, telemetry, CI gating) lie outside a test run.
type Maturity struct {
	Stopped int    `json:"threat_classes_stopped"`
	Of      int    `json:"of"`
	Level   int    `json:"level"`
	Basis   string `json:"basis"`
}

// Run runs suites against routes (named routesName in messages) with h's
// bundle. Each case gets a fresh store and clock. An error means a suite
// could not run at all (it does not fit the routes file); a mismatch is a
// failed case in the report, not an error.
func Run(ctx context.Context, h *Harness, routes *config.File, routesName string, suites []*Suite) (*Report, error) {
	rep := &Report{Routes: routesName, PolicyVersion: h.PolicyVersion(), PolicyHash: h.PolicyHash()}
	for _, s := range suites {
		f, err := s.Overlay(routes, routesName)
		if err != nil {
			return nil, err
		}
		sr := SuiteResult{Name: s.Name, Source: s.Source}
		for _, c := range s.Cases {
			cr, err := runCase(ctx, h, f, c)
			if err != nil {
				return nil, fmt.Errorf("%s: case %q: %w", s.Source, c.Name, err)
			}
			if cr.Pass {
				rep.Passed++
			} else {
				rep.Failed++
			}
			sr.Cases = append(sr.Cases, cr)
		}
		rep.Suites = append(rep.Suites, sr)
	}
	rep.Classes, rep.Maturity = classes(rep.Suites)
	return rep, nil
}

func runCase(ctx context.Context, h *Harness, f *config.File, c Case) (CaseResult, error) {
	start := time.Now()
	cr := CaseResult{Name: c.Name, Class: c.Class, Description: c.Description, Pass: true}
	s, err := h.session(f)
	if err != nil {
		return cr, err
	}
	for i, st := range c.Steps {
		s.advance(time.Duration(st.Wait))
		sr := StepResult{Index: i + 1, Name: st.Name, Agent: st.Agent, Tool: st.Tool, Expect: st.Expect}
		got, err := s.do(ctx, st.call())
		if err != nil {
			sr.Diff = []string{"not run: " + err.Error()}
		} else {
			sr.Got = got
			if sr.Tool == "" {
				sr.Tool = got.Tool
			}
			sr.Diff = compare(st.Expect, got)
		}
		sr.Pass = len(sr.Diff) == 0
		cr.Pass = cr.Pass && sr.Pass
		cr.Steps = append(cr.Steps, sr)
	}
	cr.Duration = time.Since(start)
	return cr, nil
}

// compare lists how got differs from want, one line per difference.
func compare(want Expect, got Outcome) []string {
	var diff []string
	if got.Decision != want.Decision {
		diff = append(diff, fmt.Sprintf("decision: want %s, got %s (reasons %s)", want.Decision, got.Decision, codes(got.Reasons)))
	}
	var missing []string
	for _, r := range want.Reasons {
		if !slices.Contains(got.Reasons, r) {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		diff = append(diff, fmt.Sprintf("reasons: want %s among them, missing %s, got %s", codes(want.Reasons), codes(missing), codes(got.Reasons)))
	}
	if want.StepRisk != nil && math.Abs(*want.StepRisk-got.StepRisk) > riskTolerance {
		diff = append(diff, fmt.Sprintf("step_risk: want %.4g, got %.4g", *want.StepRisk, got.StepRisk))
	}
	if want.RiskTotal != nil && math.Abs(*want.RiskTotal-got.RiskTotal) > riskTolerance {
		diff = append(diff, fmt.Sprintf("risk_total: want %.4g, got %.4g", *want.RiskTotal, got.RiskTotal))
	}
	return diff
}

func codes(cs []string) string { return "[" + strings.Join(cs, ", ") + "]" }

// classes tallies the cases by threat class.
func classes(suites []SuiteResult) ([]ClassResult, *Maturity) {
	byID := map[string]*ClassResult{}
	for _, s := range suites {
		for _, c := range s.Cases {
			if c.Class == "" {
				continue
			}
			cl := byID[c.Class]
			if cl == nil {
				cl = &ClassResult{ID: c.Class, Name: ClassNames[c.Class]}
				byID[c.Class] = cl
			}
			cl.Cases++
			if !c.Pass {
				cl.Failed++
			}
		}
	}
	if len(byID) == 0 {
		return nil, nil
	}
	var out []ClassResult
	m := &Maturity{Of: len(ThreatClasses)}
	for _, id := range ClassIDs {
		cl, ok := byID[id]
		if !ok {
			cl = &ClassResult{ID: id, Name: ClassNames[id]}
		}
		cl.Stopped = cl.Cases > 0 && cl.Failed == 0
		if cl.Stopped && slices.Contains(ThreatClasses, id) {
			m.Stopped++
		}
		out = append(out, *cl)
	}
	chain := byID["8"] != nil && byID["8"].Cases > 0 && byID["8"].Failed == 0
	switch {
	case m.Stopped == m.Of && chain:
		m.Level = 3
		m.Basis = "every threat class stopped and chain risk enforced (worked example), as level 3 asks of evaluation (section 12); its gateway, telemetry and release-gating criteria are not what a test run shows"
	case m.Stopped >= 3:
		m.Level = 2
		m.Basis = "at least 3 of 5 threat classes stopped, the regression-suite criterion of level 2 (section 12)"
	case m.Stopped >= 1:
		m.Level = 1
		m.Basis = "fewer than 3 of 5 threat classes stopped, short of level 2's regression-suite criterion (section 12)"
	default:
		m.Basis = "no threat class stopped"
	}
	return out, m
}
