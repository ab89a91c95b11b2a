// Package suite owns AISecOps CI's dry runs of representative execution plans
// (AISecOps specification, sections 9 and 10; control AIS-GOV-01): suites of
// tool calls with their expected decisions, run through the real Check
// pipeline in-process, and generated chains that find where approval, halt and
// each budget fall for every agent of a routes file.
//
// Everything a run needs is made for the run and thrown away with it: an
// in-memory run store per case, an ephemeral signing key, an in-memory audit
// sink and a fixed clock. It must not touch the network, the user's state
// directory or any real store, and it decides nothing itself: every answer it
// reports is the extauthz Server's.
package suite

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Suite is one YAML file of cases. Tools and Agents are an overlay on the
// routes file the suite runs against: an entry replaces the routes file's
// entry of the same name and is otherwise added, so a suite can pin the tools
// and agents it depends on and still run against anyone's routes file.
type Suite struct {
	Name        string         `json:"name"`
	Description string         `json:"description,omitempty"`
	Tools       []config.Tool  `json:"tools,omitempty"`
	Agents      []config.Agent `json:"agents,omitempty"`
	Cases       []Case         `json:"cases"`

	// Source is the file the suite was read from, for messages.
	Source string `json:"-"`
}

// Case is one execution plan: steps run in order against one fresh run store,
// so they accumulate risk and spend budgets as one agent run would.
type Case struct {
	Name string `json:"name"`
	// Class is the threat class the case covers: "3.1" … "3.5" (the
	// specification's section 3) or "8" (the worked example); empty for none.
	Class       string `json:"class,omitempty"`
	Description string `json:"description,omitempty"`
	Steps       []Step `json:"steps"`
}

// Step is one tool call and what the pipeline must answer.
type Step struct {
	Name  string `json:"name,omitempty"`
	Agent string `json:"agent"`
	// Tool is the route the call takes. Host and Path default to the tool's
	// match in the routes file; given, they are resolved as Envoy would.
	Tool string `json:"tool,omitempty"`
	Host string `json:"host,omitempty"`
	Path string `json:"path,omitempty"`
	// Method defaults to POST.
	Method string `json:"method,omitempty"`
	// Run is the run id (default "run-1"): steps of one case in one run
	// accumulate risk.
	Run string `json:"run,omitempty"`
	// Arguments are the tool call's arguments, sent in a plain execution plan
	// body; Body is a raw body instead (an MCP message, a model request).
	Arguments  json.RawMessage   `json:"arguments,omitempty"`
	Body       string            `json:"body,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"`
	Provenance []plan.Provenance `json:"provenance,omitempty"`
	// Token shapes the capability token the step presents (default: a valid
	// token for the agent and the step's tool).
	Token *TokenSpec `json:"token,omitempty"`
	// Approved presents the case's last approval request, approved by a
	// reviewer first: the retry of a call that needed approval.
	Approved bool `json:"approved,omitempty"`
	// Wait moves the clock forward before the step ("10m").
	Wait   config.Duration `json:"wait,omitempty"`
	Expect Expect          `json:"expect"`
}

// TokenSpec shapes a step's capability token.
type TokenSpec struct {
	Omit          bool            `json:"omit,omitempty"` // send no token
	Tool          string          `json:"tool,omitempty"` // the token's tool (default the step's)
	Scope         string          `json:"scope,omitempty"`
	RunID         string          `json:"run_id,omitempty"`
	MaxRows       *int64          `json:"max_rows,omitempty"`
	MaxCost       *float64        `json:"max_cost,omitempty"`
	SingleUse     bool            `json:"single_use,omitempty"`
	TTL           config.Duration `json:"ttl,omitempty"`
	Audience      string          `json:"audience,omitempty"` // a foreign audience
	PolicyVersion string          `json:"policy_version,omitempty"`
}

// Expect is a step's expected answer. Reasons lists codes that must be among
// the decision's reasons (others may be present, so a suite keeps passing when
// a policy adds a second reason). StepRisk and RiskTotal, when set, must match
// within 0.001.
type Expect struct {
	Decision  string   `json:"decision"`
	Reasons   []string `json:"reasons,omitempty"`
	StepRisk  *float64 `json:"step_risk,omitempty"`
	RiskTotal *float64 `json:"risk_total,omitempty"`
}

// Decisions a step may expect.
var Decisions = []string{"allow", "deny", "require_approval"}

// riskTolerance absorbs the rounding of risks written with two or three
// decimals in a suite.
const riskTolerance = 1e-3

var (
	runIDRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	headerRE = regexp.MustCompile(`^[a-z0-9-]+$`)
)

// Load reads and parses a suite file.
func Load(path string) (*Suite, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("suite: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes a suite strictly (an unknown field is an error naming the
// file and the field) and validates it, reporting every problem at once.
func Parse(name string, data []byte) (*Suite, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var s Suite
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: more than one YAML document", name)
	}
	s.Source = name
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &s, nil
}

// Validate reports every problem of the suite's own fields at once, each
// naming its field. Tools and agents are checked with the routes file they
// overlay (Overlay), since a step may name either.
func (s *Suite) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if strings.TrimSpace(s.Name) == "" {
		bad("name", "is required")
	}
	if len(s.Cases) == 0 {
		bad("cases", "at least one case is required")
	}
	names := map[string]bool{}
	for i, c := range s.Cases {
		p := fmt.Sprintf("cases[%d]", i)
		if strings.TrimSpace(c.Name) == "" {
			bad(p+".name", "is required")
		} else if names[c.Name] {
			bad(p+".name", "%q is used twice", c.Name)
		}
		names[c.Name] = true
		if c.Class != "" && !slices.Contains(ClassIDs, c.Class) {
			bad(p+".class", "%q is not one of %s", c.Class, strings.Join(ClassIDs, ", "))
		}
		if len(c.Steps) == 0 {
			bad(p+".steps", "at least one step is required")
		}
		for j, st := range c.Steps {
			sp := fmt.Sprintf("%s.steps[%d]", p, j)
			if st.Agent == "" {
				bad(sp+".agent", "is required")
			}
			if st.Tool == "" && st.Host == "" {
				bad(sp+".tool", "is required unless host (and path) route the call")
			}
			if st.Run != "" && !runIDRE.MatchString(st.Run) {
				bad(sp+".run", "%q is not a valid run id", st.Run)
			}
			if st.Body != "" && len(st.Arguments) > 0 {
				bad(sp+".body", "give arguments or a raw body, not both")
			}
			if len(st.Arguments) > 0 && !json.Valid(st.Arguments) {
				bad(sp+".arguments", "is not valid JSON")
			}
			if st.Path != "" && !strings.HasPrefix(st.Path, "/") {
				bad(sp+".path", "must start with /")
			}
			if st.Wait < 0 {
				bad(sp+".wait", "must not be negative")
			}
			for k := range st.Headers {
				if !headerRE.MatchString(k) {
					bad(sp+".headers", "%q is not a lower-case header name", k)
				}
			}
			for k, pv := range st.Provenance {
				if pv.SourceType == "" || pv.SourceName == "" || pv.TrustLevel == "" {
					bad(fmt.Sprintf("%s.provenance[%d]", sp, k), "source_type, source_name and trust_level are required")
				}
			}
			if st.Approved && j == 0 {
				bad(sp+".approved", "needs an earlier step of the case that asked for approval")
			}
			e := st.Expect
			if !slices.Contains(Decisions, e.Decision) {
				bad(sp+".expect.decision", "%q is not one of %s", e.Decision, strings.Join(Decisions, ", "))
			}
			for k, r := range e.Reasons {
				if r == "" {
					bad(fmt.Sprintf("%s.expect.reasons[%d]", sp, k), "is empty")
				}
			}
			for field, v := range map[string]*float64{"step_risk": e.StepRisk, "risk_total": e.RiskTotal} {
				if v != nil && (math.IsNaN(*v) || *v < 0) {
					bad(sp+".expect."+field, "must be a non-negative number")
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Overlay returns routes with the suite's tools and agents laid over it, parsed
// and validated as one routes file: an entry replaces the routes file's entry
// of the same name, or is added. Every step must name an agent and a tool of
// the result, and every tool the suite declares must own its route (no tool of
// the routes file may shadow it).
func (s *Suite) Overlay(routes *config.File, routesName string) (*config.File, error) {
	merged := *routes
	merged.Tools = slices.Clone(routes.Tools)
	merged.Agents = slices.Clone(routes.Agents)
	for _, t := range s.Tools {
		if i := slices.IndexFunc(merged.Tools, func(x config.Tool) bool { return x.Name == t.Name }); i >= 0 {
			merged.Tools[i] = t
		} else {
			merged.Tools = append(merged.Tools, t)
		}
	}
	for _, a := range s.Agents {
		if i := slices.IndexFunc(merged.Agents, func(x config.Agent) bool { return x.ID == a.ID }); i >= 0 {
			merged.Agents[i] = a
		} else {
			merged.Agents = append(merged.Agents, a)
		}
	}
	js, err := json.Marshal(merged)
	if err != nil {
		return nil, fmt.Errorf("%s: overlay on %s: %w", s.Source, routesName, err)
	}
	f, err := config.Parse(fmt.Sprintf("%s: overlay on %s", s.Source, routesName), js)
	if err != nil {
		return nil, err
	}
	var errs []error
	rt := config.NewRouteTable(f.Tools)
	for i, t := range s.Tools {
		got, ok := rt.Resolve(strings.ToLower(t.Match.Host), t.Match.PathPrefix)
		if ok && got.Name != t.Name {
			errs = append(errs, fmt.Errorf("tools[%d]: the route of %q (%s%s) is taken by %q of %s", i, t.Name, t.Match.Host, t.Match.PathPrefix, got.Name, routesName))
		}
	}
	for i, c := range s.Cases {
		for j, st := range c.Steps {
			sp := fmt.Sprintf("cases[%d].steps[%d]", i, j)
			if _, ok := f.Agent(st.Agent); !ok && (st.Token == nil || !st.Token.Omit) {
				errs = append(errs, fmt.Errorf("%s.agent: %q is neither in %s nor declared by the suite", sp, st.Agent, routesName))
			}
			if st.Tool != "" {
				if _, ok := f.Tool(st.Tool); !ok {
					errs = append(errs, fmt.Errorf("%s.tool: %q is neither in %s nor declared by the suite", sp, st.Tool, routesName))
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Source, err)
	}
	return f, nil
}

// Classes of the specification's threat taxonomy (section 3), plus the worked
// example of its chain risk model (section 8).
var (
	ClassIDs   = []string{"3.1", "3.2", "3.3", "3.4", "3.5", "8"}
	ClassNames = map[string]string{
		"3.1": "prompt injection",
		"3.2": "tool abuse",
		"3.3": "memory poisoning",
		"3.4": "chain escalation",
		"3.5": "data exfiltration",
		"8":   "worked example (chain risk, section 8)",
	}
)

// ThreatClasses are the five classes the maturity rubric counts.
var ThreatClasses = ClassIDs[:5]

// defaultRun is the run id of a step that names none.
const defaultRun = "run-1"

// clockStart is the fixed time every case starts at, so a run is the same on
// every machine (agent budget windows are aligned to it).
var clockStart = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)
