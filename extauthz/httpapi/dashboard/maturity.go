package dashboard

import (
	"context"
	"fmt"
	"time"
)

// Evidence is what the maturity evaluation reads beyond the audit records:
// facts of the running service, each gathered by a function the server
// wires (nil: not available, and the criterion that needs it is unmet).
type Evidence struct {
	// VerifyAudit verifies the audit log's keyed chain and signed checkpoints
	// and returns how many record lines hold.
	VerifyAudit func() (lines int, err error)
	// ThreatSuite runs the shipped threat-regression suite (aisecops test)
	// against the active policy bundle and routes.
	ThreatSuite func(ctx context.Context) (SuiteFacts, error)
	// Agents are the configured agents.
	Agents func() []AgentFacts
	// MaxTokenTTL is the longest capability token lifetime accepted.
	MaxTokenTTL time.Duration
	// ContextFirewall reports the egress inspector and context firewall on.
	ContextFirewall bool
	// Declarations reports whether signed declarations can be issued.
	Declarations bool
}

// SuiteFacts is the outcome of the threat-regression suite.
type SuiteFacts struct {
	Passed, Failed int
	ClassesStopped int
	Classes        int
	PolicyVersion  string
}

// AgentFacts is one configured agent.
type AgentFacts struct {
	ID           string
	AllowedTools int
	Approval     float64
	Halt         float64
	HasBudgets   bool
}

// Criterion is one line of the section 12 rubric, judged.
type Criterion struct {
	Level int    `json:"level"`
	Text  string `json:"text"`
	Met   bool   `json:"met"`
	Why   string `json:"why"`
}

// Control is one row of the section 16 control matrix, judged.
type Control struct {
	ID        string `json:"id"`
	Objective string `json:"objective"`
	Layer     string `json:"layer"`
	Mandatory string `json:"mandatory"`
	Met       bool   `json:"met"`
	Records   int    `json:"records"` // audit records in the window citing the control
	Why       string `json:"why"`
}

// Maturity is the evaluation: the level is the highest whose criteria, and
// every lower level's, are all met (section 12: "All criteria at a level MUST
// be satisfied before claiming that level").
type Maturity struct {
	EvaluatedAt time.Time   `json:"evaluated_at"`
	From        time.Time   `json:"from"`
	To          time.Time   `json:"to"`
	Level       int         `json:"level"`
	LevelName   string      `json:"level_name"`
	Criteria    []Criterion `json:"criteria"`
	Controls    []Control   `json:"controls"`
	CoveragePct float64     `json:"coverage_pct"`
	Gaps        []string    `json:"gaps"`
}

var levelNames = []string{"Unmanaged", "Prompt-Controlled", "Tool-Level Enforcement", "Full Runtime Governance", "Adaptive Governance"}

// windowFacts are the audit-record facts an evaluation uses.
type windowFacts struct {
	checks, runs, allowed, allowedJTI, withAgentTool, scored, approvalsDecided int
	injection, provenance                                                      int
	enforcedPct, tracedPct                                                     float64
	controls                                                                   map[string]int
}

func (x *Index) facts(from, to time.Time, approvalsDecided int) windowFacts {
	o := x.Overview(to.Sub(from), "", to, nil)
	f := windowFacts{checks: o.Checks, runs: o.Runs, injection: o.InjectionDetections, enforcedPct: o.PolicyEnforcedPct,
		tracedPct: o.RunsFullyTracedPct, controls: map[string]int{}, approvalsDecided: approvalsDecided}
	x.mu.RLock()
	defer x.mu.RUnlock()
	lo, hi := from.UnixNano(), to.UnixNano()
	for i := range x.events {
		e := &x.events[i]
		if e.ts < lo || e.ts > hi || e.flags&fMCPProtocol != 0 {
			continue
		}
		if x.strs.str(e.decision) == "allow" {
			f.allowed++
			if e.flags&fTokenJTI != 0 {
				f.allowedJTI++
			}
		}
		if x.strs.str(e.agent) != "" && x.strs.str(e.tool) != "" {
			f.withAgentTool++
		}
		if e.step > 0 {
			f.scored++
		}
		if e.flags&fUntrusted != 0 {
			f.provenance++
		}
		for _, c := range e.controls {
			f.controls[x.strs.str(c)]++
		}
	}
	return f
}

// Evaluate judges the section 12 rubric and the section 16 controls on the
// audit records of [from, to] and ev.
func (x *Index) Evaluate(ctx context.Context, ev Evidence, from, to time.Time, approvalsDecided int) Maturity {
	f := x.facts(from, to, approvalsDecided)
	m := Maturity{EvaluatedAt: to.UTC(), From: from.UTC(), To: to.UTC()}

	var agents []AgentFacts
	if ev.Agents != nil {
		agents = ev.Agents()
	}
	allowlisted, thresholds := len(agents) > 0, len(agents) > 0
	for _, a := range agents {
		allowlisted = allowlisted && a.AllowedTools > 0
		thresholds = thresholds && a.Approval > 0 && a.Halt > 0
	}
	var suite SuiteFacts
	suiteErr := fmt.Errorf("not wired")
	if ev.ThreatSuite != nil {
		suite, suiteErr = ev.ThreatSuite(ctx)
	}
	verifyLines, verifyErr := 0, fmt.Errorf("not wired")
	if ev.VerifyAudit != nil {
		verifyLines, verifyErr = ev.VerifyAudit()
	}

	crit := func(level int, text string, met bool, why string, args ...any) {
		m.Criteria = append(m.Criteria, Criterion{Level: level, Text: text, Met: met, Why: fmt.Sprintf(why, args...)})
	}
	suiteWhy := func() string {
		if suiteErr != nil {
			return "the threat-regression suite could not run: " + suiteErr.Error()
		}
		return fmt.Sprintf("threat-regression suite on policy %s: %d of %d threat classes stopped, %d cases passed, %d failed", suite.PolicyVersion, suite.ClassesStopped, suite.Classes, suite.Passed, suite.Failed)
	}
	suiteAll := suiteErr == nil && suite.Failed == 0 && suite.Classes > 0 && suite.ClassesStopped == suite.Classes

	// Level 1: the gateway supersedes the prompt-layer criteria; it enforces
	// them at the execution boundary instead.
	crit(1, "System prompts contain explicit tool-use restrictions", allowlisted,
		"superseded at the execution boundary: %d configured agents, each with an explicit tool allowlist enforced per call (unknown agents denied)", len(agents))
	crit(1, "Agent outputs are manually reviewed on a periodic basis", thresholds,
		"every agent's calls over its approval threshold are held for a human approver; %d decided in the window", f.approvalsDecided)
	crit(1, "At least one injection scenario has been manually tested", suiteErr == nil && suite.ClassesStopped > 0, "%s", suiteWhy())
	// Level 2
	crit(2, "Individual tool calls validated against an allowlist", allowlisted && f.checks > 0,
		"%d tool calls decided in the window against per-agent allowlists", f.checks)
	crit(2, "Structured logs for tool invocations with agent_id and tool fields", f.checks > 0 && f.withAgentTool == f.checks,
		"%d of %d audit records carry agent_id and tool", f.withAgentTool, f.checks)
	crit(2, "Injection regression suite covers at least 3 of 5 threat classes", suiteErr == nil && suite.ClassesStopped >= 3, "%s", suiteWhy())
	crit(2, "Step-level risk scores tracked per tool type", f.checks > 0 && f.scored > 0,
		"%d of %d Checks carry a step risk R×E×T×B with the route's tool class", f.scored, f.checks)
	// Level 3
	crit(3, "All tool calls traverse a Runtime Gateway with capability token validation (AIS-EXE-01)", f.allowed > 0 && f.allowedJTI == f.allowed && f.enforcedPct == 100,
		"%d of %d allowed calls carried a verified capability token; %.2f%% of Checks decided by policy", f.allowedJTI, f.allowed, f.enforcedPct)
	crit(3, "Context Firewall active on all external data ingestion paths (AIS-CTX-01)", ev.ContextFirewall,
		"egress inspection and the context firewall run on every Check (%d injection detections in the window)", f.injection)
	crit(3, "Structured telemetry emitted for 100% of agent runs (AIS-OBS-01)", verifyErr == nil && f.runs > 0,
		"%s", verifyWhy(verifyLines, verifyErr, f.runs))
	crit(3, "Chain risk score computed and enforced per execution (AIS-RSK-01)", thresholds && f.checks > 0,
		"every agent has approval and halt thresholds; cumulative risk recorded on %d Checks", f.checks)
	crit(3, "Continuous evaluation harness (AISecOps CI) blocks non-compliant releases (AIS-GOV-01)", suiteAll, "%s; `aisecops test` exits 1 on any failure", suiteWhy())
	crit(3, "Maturity level and control coverage documented and internally auditable", ev.Declarations && verifyErr == nil,
		"this evaluation, from the verified audit chain, is downloadable as a signed declaration")
	// Level 4
	crit(4, "Risk scoring dynamically adjusts based on real-time telemetry and threat signals", false,
		"escalation rules and thresholds are configured, not learned from telemetry")
	crit(4, "Policy refinement is automated via feedback loop from governance dashboard", false,
		"policy changes are made by people (the replay diff helps them); nothing is refined automatically")
	crit(4, "Injection and chain escalation tests run continuously, not just at release time", false,
		"the threat suite runs at release (aisecops test) and at each evaluation here, not continuously against live traffic")
	crit(4, "Conformance declaration published per Section 21.3", false,
		"a signed declaration can be downloaded here; publishing it is the organisation's act")
	crit(4, "External audit or peer review of control coverage completed", false, "not evidenced by the system")

	m.Level = 4
	for _, c := range m.Criteria {
		if !c.Met && c.Level <= m.Level {
			m.Level = c.Level - 1
		}
	}
	m.LevelName = levelNames[m.Level]

	ctl := func(id, objective, layer string, met bool, why string, args ...any) {
		m.Controls = append(m.Controls, Control{ID: id, Objective: objective, Layer: layer, Mandatory: "MUST", Met: met, Records: f.controls[id], Why: fmt.Sprintf(why, args...)})
	}
	ctl("AIS-CTX-01", "Context Isolation", "Layer 1", ev.ContextFirewall,
		"model calls' untrusted messages are inspected by the context firewall; %d injection detections in the window", f.injection)
	ctl("AIS-CTX-02", "Provenance Labeling", "Layer 1", ev.ContextFirewall,
		"provenance labels read from x-aisecops-provenance and audited; unlabelled context is treated as untrusted; %d Checks carried untrusted labels", f.provenance)
	ctl("AIS-CAP-01", "Explicit Capability Grant", "Layer 2", f.allowed > 0 && f.allowedJTI == f.allowed,
		"%d of %d allowed calls carried a scoped capability token", f.allowedJTI, f.allowed)
	ctl("AIS-CAP-02", "Token Expiry", "Layer 2", ev.MaxTokenTTL > 0 && ev.MaxTokenTTL <= 15*time.Minute,
		"signed tokens (EdDSA/ES256/RS256) with a lifetime of at most %s", ev.MaxTokenTTL)
	ctl("AIS-EXE-01", "Gateway Enforcement", "Layer 3", f.checks > 0 && f.enforcedPct == 100,
		"%.2f%% of %d tool calls decided by policy at the gateway (faults are denied fail-closed)", f.enforcedPct, f.checks)
	ctl("AIS-OBS-01", "Structured Telemetry", "Layer 4", verifyErr == nil && f.runs > 0, "%s", verifyWhy(verifyLines, verifyErr, f.runs))
	ctl("AIS-RSK-01", "Chain Risk Calculation", "Cross-Layer", thresholds && f.checks > 0,
		"cumulative risk R×E×T×B on every Check; approval and halt thresholds set for all %d agents", len(agents))
	ctl("AIS-GOV-01", "Continuous Evaluation", "Governance", suiteAll, "%s", suiteWhy())
	met := 0
	for _, c := range m.Controls {
		if c.Met {
			met++
		} else {
			m.Gaps = append(m.Gaps, c.ID+" "+c.Objective+": "+c.Why)
		}
	}
	m.CoveragePct = round(100*float64(met)/float64(len(m.Controls)), 2)
	for _, c := range m.Criteria {
		if !c.Met && c.Level == m.Level+1 {
			m.Gaps = append(m.Gaps, fmt.Sprintf("level %d: %s — %s", c.Level, c.Text, c.Why))
		}
	}
	if m.Gaps == nil {
		m.Gaps = []string{}
	}
	return m
}

func verifyWhy(lines int, err error, runs int) string {
	if err != nil {
		return "audit chain not verified: " + err.Error()
	}
	return fmt.Sprintf("audit chain verified (%d record lines, signed checkpoints); every Check of %d runs in the window has its record", lines, runs)
}
