package audit

import "time"

// Step is a Check as a run's timeline shows it: the projection of its record
// that every replica appends to the run's shared step log, so a run whose
// steps were decided on different replicas reads back whole. Like the record,
// it never holds an argument value.
type Step struct {
	TS                time.Time          `json:"ts"`
	DecisionID        string             `json:"decision_id"`
	RunID             string             `json:"run_id"`
	AgentID           string             `json:"agent_id"`
	Tool              string             `json:"tool"`
	ToolClass         string             `json:"tool_class"`
	MCPMethod         string             `json:"mcp_method,omitempty"`
	Decision          string             `json:"decision"`
	Reasons           []string           `json:"reasons"`
	StepRisk          StepRisk           `json:"step_risk"`
	CumulativeRisk    float64            `json:"cumulative_risk"`
	BudgetConsumption map[string]float64 `json:"budget_consumption"`
	Provenance        []Provenance       `json:"provenance,omitempty"`
	LinkedRuns        []string           `json:"linked_runs,omitempty"`
	ApprovalID        string             `json:"approval_id,omitempty"`
	Committed         bool               `json:"committed"`
	RunCalls          int64              `json:"run_calls,omitempty"`
	DryRun            bool               `json:"dry_run,omitempty"`
}

// Step is r's timeline projection.
func (r *Record) Step() Step {
	s := Step{TS: r.TS, DecisionID: r.DecisionID, RunID: r.RunID, AgentID: r.AgentID, Tool: r.Tool, ToolClass: r.ToolClass,
		MCPMethod: r.MCPMethod, Decision: r.Decision, Reasons: make([]string, 0, len(r.Reasons)), StepRisk: r.StepRisk,
		CumulativeRisk: r.CumulativeRisk, BudgetConsumption: r.BudgetConsumption, Provenance: r.ContextProvenance,
		LinkedRuns: r.LinkedRuns, ApprovalID: r.ApprovalID, Committed: r.Committed, RunCalls: r.RunCalls, DryRun: r.DryRun}
	for _, x := range r.Reasons {
		s.Reasons = append(s.Reasons, x.Code)
	}
	return s
}
