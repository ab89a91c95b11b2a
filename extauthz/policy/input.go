package policy

import (
	"encoding/json"
	"slices"

	"github.com/aisecops/aisecops-envoy/extauthz/finding"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
)

// Input is the document Rego sees as `input`. Arithmetic (risk, budget ratios)
// and per-argument facts are computed in Go and passed in; Rego keeps to lookups
// and decisions, since float arithmetic in Rego is slow. Time comes in here too:
// policies have no clock, so replaying an audit record gives the same decision.
type Input struct {
	Time       Time              `json:"time"`
	Request    Request           `json:"request"`
	Route      plan.Route        `json:"route"`
	Agent      Agent             `json:"agent"`
	Plan       Plan              `json:"plan"`
	Token      Token             `json:"token"`
	Provenance []plan.Provenance `json:"provenance"`
	// UntrustedContext is true when any provenance label is untrusted/unverified/external.
	UntrustedContext bool      `json:"untrusted_context"`
	Risk             Risk      `json:"risk"`
	Budget           Budget    `json:"budget"`
	Run              Run       `json:"run"`
	Approval         Approval  `json:"approval"`
	Findings         []Finding `json:"findings"`
	// FindingClasses is {class: true} for each class among Findings (Derive).
	// Rules test input.finding_classes.secret == true: a plain equality on
	// input, which OPA's rule index uses to skip the rules that cannot fire.
	FindingClasses map[string]bool `json:"finding_classes"`
}

// Derive fills the facts computed from other fields (FindingClasses,
// Run.Tainted, Run.ReadInternal), so the policy tests them with plain
// equalities instead of iterating. Bundle.Eval calls it on every input.
func (in *Input) Derive() {
	in.FindingClasses = make(map[string]bool, len(in.Findings))
	for _, f := range in.Findings {
		in.FindingClasses[f.Class] = true
	}
	in.Run.Tainted = slices.Contains(in.Run.Facts, risk.FactUntrusted) ||
		slices.Contains(in.Run.Facts, risk.FactFinding(finding.Injection))
	in.Run.ReadInternal = slices.Contains(in.Run.Facts, risk.FactStep("read", "internal"))
}

// Time is the Check's clock reading.
type Time struct {
	NowNS   int64  `json:"now_ns"`
	RFC3339 string `json:"rfc3339"`
}

// Request is the HTTP request as the upstream would see it.
type Request struct {
	ID      string `json:"id"`
	Method  string `json:"method"`
	Host    string `json:"host"`
	Path    string `json:"path"`
	DryRun  bool   `json:"dry_run"`
	Explain bool   `json:"explain"`
}

// Agent is the caller as the verified token names it, with its configuration.
type Agent struct {
	ID            string   `json:"id"`
	Known         bool     `json:"known"`
	Authenticated bool     `json:"authenticated"` // identity from a verified token
	ToolAllowed   bool     `json:"tool_allowed"`  // route tool ∈ allowed_tools
	AllowedTools  []string `json:"allowed_tools"`
	Approval      float64  `json:"approval_threshold"`
	Halt          float64  `json:"halt_threshold"`
}

// Plan is the tool call the agent intends.
type Plan struct {
	Source        string          `json:"source"`
	MCPMethod     string          `json:"mcp_method,omitempty"`
	Tool          string          `json:"tool"`
	Arguments     json.RawMessage `json:"arguments"`
	ArgumentsHash string          `json:"arguments_hash"`
	// Binding is what an approval binds to: agent, tool, run and the digest of
	// the exact request (method, normalised path, query, body).
	Binding string `json:"binding"`
	// Protocol: MCP protocol traffic (initialize, tools/list, notifications,
	// the event stream), which reaches no tool and is not counted in the run.
	Protocol bool   `json:"protocol"`
	TraceID  string `json:"trace_id"`
	RunID    string `json:"run_id"`
}

// Token is the verified capability token (never the raw token).
type Token struct {
	Present       bool     `json:"present"`
	JTI           string   `json:"jti,omitempty"`
	Scope         string   `json:"scope,omitempty"`
	PolicyVersion string   `json:"policy_version,omitempty"`
	RunID         string   `json:"run_id,omitempty"`
	SingleUse     bool     `json:"single_use,omitempty"`
	MaxRows       *int64   `json:"max_rows,omitempty"`
	MaxCost       *float64 `json:"max_cost,omitempty"`
	ExpiresNS     int64    `json:"exp_ns,omitempty"`
}

// Risk is the step's chain risk: step = r_step × e × t × b.
type Risk struct {
	RStep float64 `json:"r_step"`
	E     float64 `json:"e"`
	T     float64 `json:"t"`
	B     float64 `json:"b"`
	Step  float64 `json:"step"`
	// Linked is the risk of the runs the call's context came from (other
	// agents' runs it is linked to), included in TotalBefore and Total.
	Linked      float64  `json:"linked"`
	TotalBefore float64  `json:"total_before"`
	Total       float64  `json:"total"`                 // including this step; compared with the thresholds
	Escalations []string `json:"escalations,omitempty"` // names of the escalation rules that fired
}

// Budget is the run's consumption including this step, as ratios of each limit.
type Budget struct {
	Consumption map[string]float64 `json:"consumption"`
	// Exceeded names the first budget this step would exceed, or "".
	Exceeded string `json:"exceeded"`
}

// Run is the run's state before this step.
type Run struct {
	ID        string  `json:"id"`
	ToolCalls int64   `json:"tool_calls"`
	WriteOps  int64   `json:"write_operations"`
	Cost      float64 `json:"cost"`
	// Facts are the run's sticky facts (package risk names them): what any
	// earlier step of the run read, consumed or carried.
	Facts []string `json:"facts"`
	// ElapsedNS is the run's age at this step (the store's clock);
	// AgentToolCalls and AgentCost the agent's use of its current budget
	// window before this step. A replay recomputes budgets from them.
	ElapsedNS      int64   `json:"elapsed_ns"`
	AgentToolCalls int64   `json:"agent_tool_calls"`
	AgentCost      float64 `json:"agent_cost"`
	// Tainted: an earlier step consumed untrusted context (Derive).
	Tainted bool `json:"tainted"`
	// ReadInternal: an earlier step read internal data (Derive).
	ReadInternal bool `json:"read_internal"`
}

// Approval is the state of the approval the agent presented, if any.
type Approval struct {
	ID      string `json:"id,omitempty"`
	Present bool   `json:"present"`
	// Valid is true when the approval is approved, unused and bound to this exact plan.
	Valid  bool   `json:"valid"`
	Status string `json:"status,omitempty"`
}

// Finding is one egress inspection result (the one vocabulary of package
// finding). The matched value never appears.
type Finding = finding.Finding

// Reason is one reason in a decision.
type Reason struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	ControlID string `json:"control_id,omitempty"`
}

// Decision is the policy's decision document, data.aisecops.authz.result.
type Decision struct {
	Decision    string         `json:"decision"` // allow | deny | require_approval
	Reasons     []Reason       `json:"reasons"`
	Obligations map[string]any `json:"obligations,omitempty"`
}

// Decision values.
const (
	Allow           = "allow"
	Deny            = "deny"
	RequireApproval = "require_approval"
)
