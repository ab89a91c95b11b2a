package extauthz

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	envoy_type_v3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Response headers the server sets.
const (
	HeaderDecisionID = "x-aisecops-decision-id"
	HeaderRiskTotal  = "x-aisecops-risk-total"
	HeaderDecision   = "x-aisecops-decision"
)

// check is one Check's state as it moves through the stages.
type check struct {
	req   *envoy_service_auth_v3.CheckRequest
	start time.Time
	now   time.Time
	id    string

	plan     *plan.Plan
	call     plan.Call
	argsHash string
	planHash string
	idemKey  string // request id bound to the plan hash; "" when Envoy sent no id

	agentID       string
	agent         config.Agent
	authenticated bool
	claims        *capability.Claims

	untrusted         bool
	findings          []policy.Finding
	derivedProvenance []plan.Provenance // from the context firewall, for the audit line

	state       riskstore.State
	limits      riskstore.Limits
	consumption map[string]float64
	factors     risk.Factors
	step        riskstore.Step
	exceeded    string
	assessed    bool

	approval    policy.Approval
	input       *policy.Input
	obligations map[string]any

	decision     string
	reasons      []policy.Reason
	status       int
	approvalID   string
	committed    bool
	duplicate    bool
	totalAfter   float64
	dryRun       bool
	finished     bool // a stage settled the decision; later stages are skipped
	cached       bool // state came from this replica's run cache, not the store
	jtiUsed      bool // the single-use token was spent by this Check
	approvalUsed bool // the approval was consumed by this Check
	redecide     bool // the state was stale: decide again on the current one
	lastAttempt  bool // commit without the version check (see maxRedecide)

	trace []traceStage
}

type traceStage struct {
	Stage  string `json:"stage"`
	Result string `json:"result"`
}

func (c *check) traceStage(name, result string) {
	c.trace = append(c.trace, traceStage{name, result})
}

// fail turns the Check into a denial carrying err's code. An internal fault
// after commit (an audit failure) still denies: nothing is allowed without its
// audit line.
func (c *check) fail(err *reason.Error) {
	c.decision = policy.Deny
	c.reasons = []policy.Reason{{Code: string(err.Code), Message: err.Message, ControlID: controlFor(err.Code)}}
	c.status = reason.HTTPStatus(err.Code)
	c.approvalID = ""
	c.finished = true
}

// resetDecision clears what the deciding stages produced, before they run
// again on a fresher state.
func (c *check) resetDecision() {
	c.decision, c.reasons, c.status, c.obligations = "", nil, 0, nil
	c.exceeded, c.assessed, c.consumption = "", false, nil
	c.approval, c.input = policy.Approval{}, nil
}

func (c *check) allowDuplicate(p *riskstore.Prior) {
	c.decision = policy.Allow
	c.reasons = []policy.Reason{{Code: string(reason.DuplicateRequest), Message: "retry of a request already allowed; not counted again"}}
	c.status = http.StatusOK
	c.id = p.DecisionID
	c.totalAfter = p.RiskTotal
	c.duplicate = true
	c.finished = true
}

func (c *check) setPolicyDecision(d policy.Decision) {
	c.decision = d.Decision
	c.reasons = d.Reasons
	c.obligations = d.Obligations
	switch d.Decision {
	case policy.Allow:
		c.status = http.StatusOK
		if len(c.reasons) == 0 {
			c.reasons = []policy.Reason{{Code: string(reason.PolicyAllow), Message: "allowed by policy"}}
		}
	case policy.RequireApproval:
		c.status = http.StatusForbidden
	default:
		c.status = http.StatusForbidden
		for _, r := range d.Reasons {
			if st := reason.HTTPStatus(reason.Code(r.Code)); st != http.StatusForbidden {
				c.status = st
				break
			}
		}
	}
}

// obligation returns the policy's obligation named name, or nil.
func (c *check) obligation(name string) any { return c.obligations[name] }

func (c *check) riskTotal() float64 {
	if c.committed || c.duplicate {
		return c.totalAfter
	}
	return c.state.RiskTotal + c.factors.Step
}

func (c *check) claimsMaxCost() *float64 {
	if c.claims == nil {
		return nil
	}
	return c.claims.Constraints.MaxCost
}

// policyInput builds the Rego input from every stage's result.
func (c *check) policyInput() *policy.Input {
	p := c.plan
	in := &policy.Input{
		Time:    policy.Time{NowNS: c.now.UnixNano(), RFC3339: c.now.UTC().Format(time.RFC3339Nano)},
		Request: policy.Request{ID: p.RequestID, Method: p.Method, Host: p.Host, Path: p.Path, DryRun: p.DryRun, Explain: p.Explain},
		Route:   p.Route,
		Agent: policy.Agent{ID: c.agentID, Known: c.agent.ID != "", Authenticated: c.authenticated,
			AllowedTools: c.agent.AllowedTools, Approval: c.agent.Thresholds.Approval, Halt: c.agent.Thresholds.Halt},
		Plan: policy.Plan{Source: string(p.Source), MCPMethod: p.MCPMethod, Tool: c.call.Tool, Arguments: c.call.Arguments,
			ArgumentsHash: c.argsHash, PlanHash: c.planHash, TraceID: p.TraceID, RunID: p.RunID},
		Provenance:       p.Provenance,
		UntrustedContext: c.untrusted,
		Risk: policy.Risk{RStep: c.factors.RStep, E: c.factors.E, T: c.factors.T, B: c.factors.B, Step: c.factors.Step,
			TotalBefore: c.state.RiskTotal, Total: c.state.RiskTotal + c.factors.Step, Escalations: c.factors.Escalations},
		Budget: policy.Budget{Consumption: c.consumption, Exceeded: c.exceeded},
		Run: policy.Run{ID: p.RunID, ToolCalls: c.state.ToolCalls, WriteOps: c.state.WriteOps,
			Cost: float64(c.state.CostMicros) / 1e6},
		Approval: c.approval,
		Findings: c.findings,
	}
	for _, t := range c.agent.AllowedTools {
		if t == p.Route.Tool {
			in.Agent.ToolAllowed = true
		}
	}
	if in.Provenance == nil {
		in.Provenance = []plan.Provenance{}
	}
	if in.Findings == nil {
		in.Findings = []policy.Finding{}
	}
	in.Run.Recent = make([]policy.RunStep, len(c.state.Recent))
	for i, s := range c.state.Recent {
		in.Run.Recent[i] = policy.RunStep{Tool: s.Tool, Class: s.Class, Trust: s.Trust, Untrusted: s.Untrusted}
	}
	if cl := c.claims; cl != nil {
		in.Token = policy.Token{Present: true, JTI: cl.ID, Scope: cl.Scope, PolicyVersion: cl.PolicyVersion, RunID: cl.RunID,
			SingleUse: cl.SingleUse, MaxRows: cl.Constraints.MaxRows, MaxCost: cl.Constraints.MaxCost, ExpiresNS: cl.ExpiresAt.UnixNano()}
	}
	return in
}

// record is the Check's audit line.
func (c *check) record(policyVersion string, latency time.Duration) *audit.Record {
	r := &audit.Record{
		TS:                c.start.UTC(),
		DecisionID:        c.id,
		Decision:          c.decision,
		HTTPStatus:        c.status,
		ArgumentsHash:     c.argsHash,
		PlanHash:          c.planHash,
		AgentID:           c.agentID,
		PolicyVersion:     policyVersion,
		DryRun:            c.dryRun,
		ApprovalID:        c.approvalID,
		Committed:         c.committed,
		LatencyUS:         latency.Microseconds(),
		ContextProvenance: []audit.Provenance{},
		Reasons:           make([]audit.Reason, 0, len(c.reasons)),
		ControlIDs:        []string{},
		EgressFindings:    make([]audit.Finding, 0, len(c.findings)),
		BudgetConsumption: c.consumption,
	}
	if r.BudgetConsumption == nil {
		r.BudgetConsumption = map[string]float64{}
	}
	if p := c.plan; p != nil {
		r.RequestID, r.RunID, r.TraceID = p.RequestID, p.RunID, p.TraceID
		r.Tool, r.ToolClass, r.RouteVersion, r.MCPMethod = p.Route.Tool, p.Route.ToolClass, p.Route.RouteVersion, p.MCPMethod
		r.Explain = p.Explain
		for _, l := range p.Provenance {
			r.ContextProvenance = append(r.ContextProvenance, audit.Provenance(l))
		}
		for _, l := range c.derivedProvenance {
			r.ContextProvenance = append(r.ContextProvenance, audit.Provenance(l))
		}
		if p.Source == plan.SourceLLM && len(p.Body) > 0 {
			r.PromptHash = plan.Hash(p.Body)
		}
	}
	if c.claims != nil {
		r.TokenJTI = c.claims.ID
	}
	if c.assessed {
		r.StepRisk = audit.StepRisk{RStep: c.factors.RStep, E: c.factors.E, T: c.factors.T, B: c.factors.B, Step: c.factors.Step}
		r.CumulativeRisk = c.riskTotal()
	}
	seen := map[string]bool{}
	for _, rs := range c.reasons {
		r.Reasons = append(r.Reasons, audit.Reason(rs))
		if rs.ControlID != "" && !seen[rs.ControlID] {
			seen[rs.ControlID] = true
			r.ControlIDs = append(r.ControlIDs, rs.ControlID)
		}
	}
	sort.Strings(r.ControlIDs)
	for _, f := range c.findings {
		r.EgressFindings = append(r.EgressFindings, audit.Finding{Detector: f.Detector, Location: f.Location, Count: f.Count, Hash: f.Hash})
	}
	return r
}

// Body is the JSON body of a denial, an approval request or a dry-run answer.
type Body struct {
	Decision   string          `json:"decision"`
	Reasons    []policy.Reason `json:"reasons"`
	DecisionID string          `json:"decision_id"`
	ApprovalID string          `json:"approval_id,omitempty"`
	// Trace is the full decision trace, for dry-run and explain only.
	Trace *Trace `json:"trace,omitempty"`
}

// Trace is what explain and dry-run answer: every stage's result and the
// decision's inputs. Raw arguments are not echoed: only their hash.
type Trace struct {
	DryRun   bool               `json:"dry_run"`
	Stages   []traceStage       `json:"stages"`
	Agent    string             `json:"agent_id"`
	Tool     string             `json:"tool"`
	RunID    string             `json:"run_id"`
	Plan     *policy.Plan       `json:"plan,omitempty"`
	Risk     *policy.Risk       `json:"risk,omitempty"`
	Budget   map[string]float64 `json:"budget_consumption,omitempty"`
	Exceeded string             `json:"budget_exceeded,omitempty"`
	Findings []policy.Finding   `json:"egress_findings,omitempty"`
	Approval *policy.Approval   `json:"approval,omitempty"`
}

func (c *check) body() Body {
	b := Body{Decision: c.decision, Reasons: c.reasons, DecisionID: c.id, ApprovalID: c.approvalID}
	if b.Reasons == nil {
		b.Reasons = []policy.Reason{}
	}
	if c.dryRun {
		t := &Trace{DryRun: true, Stages: c.trace, Agent: c.agentID, Budget: c.consumption, Exceeded: c.exceeded, Findings: c.findings}
		if c.plan != nil {
			t.Tool, t.RunID = c.plan.Route.Tool, c.plan.RunID
		}
		if in := c.input; in != nil {
			pl := in.Plan
			pl.Arguments = nil
			t.Plan, t.Risk = &pl, &in.Risk
			if in.Approval.Present {
				t.Approval = &in.Approval
			}
		}
		b.Trace = t
	}
	return b
}

// response turns the decision into Envoy's CheckResponse.
func (c *check) response() *envoy_service_auth_v3.CheckResponse {
	if c.decision == policy.Allow && !c.dryRun {
		return &envoy_service_auth_v3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &envoy_service_auth_v3.CheckResponse_OkResponse{OkResponse: &envoy_service_auth_v3.OkHttpResponse{
				Headers: []*envoy_config_core_v3.HeaderValueOption{
					setHeader(HeaderDecisionID, c.id),
					setHeader(HeaderRiskTotal, strconv.FormatFloat(c.riskTotal(), 'f', 4, 64)),
				},
				HeadersToRemove: c.headersToRemove(),
			}},
		}
	}
	status := c.status
	decision := c.decision
	if c.dryRun {
		// The tool is never reached on dry-run or explain: Envoy answers 200
		// with the trace, whatever the decision.
		status = http.StatusOK
	}
	if status == 0 {
		status = http.StatusForbidden
	}
	body, err := json.Marshal(c.body())
	if err != nil {
		body = fmt.Appendf(nil, `{"decision":"deny","reasons":[{"code":"internal_error"}],"decision_id":%q}`, c.id)
	}
	return &envoy_service_auth_v3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &envoy_service_auth_v3.CheckResponse_DeniedResponse{DeniedResponse: &envoy_service_auth_v3.DeniedHttpResponse{
			Status: &envoy_type_v3.HttpStatus{Code: envoy_type_v3.StatusCode(status)},
			Headers: []*envoy_config_core_v3.HeaderValueOption{
				setHeader("content-type", "application/json"),
				setHeader(HeaderDecision, decision),
				setHeader(HeaderDecisionID, c.id),
			},
			Body: string(body),
		}},
	}
}

// headersToRemove strips the token and every x-aisecops-* input before the
// upstream, except the two headers this response sets (they are overwritten).
// On llm routes authorization is the provider's key and stays.
func (c *check) headersToRemove() []string {
	if c.plan == nil {
		return []string{"authorization"}
	}
	out := make([]string, 0, len(c.plan.InputHeaders))
	for _, h := range c.plan.InputHeaders {
		if h != HeaderDecisionID && h != HeaderRiskTotal {
			out = append(out, h)
		}
	}
	return out
}

// internalDeny is the fixed 503 answer when even building a response failed.
func internalDeny(decisionID string) *envoy_service_auth_v3.CheckResponse {
	return &envoy_service_auth_v3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &envoy_service_auth_v3.CheckResponse_DeniedResponse{DeniedResponse: &envoy_service_auth_v3.DeniedHttpResponse{
			Status:  &envoy_type_v3.HttpStatus{Code: envoy_type_v3.StatusCode_ServiceUnavailable},
			Headers: []*envoy_config_core_v3.HeaderValueOption{setHeader("content-type", "application/json"), setHeader(HeaderDecision, policy.Deny)},
			Body:    fmt.Sprintf(`{"decision":"deny","reasons":[{"code":"internal_error","message":"internal error"}],"decision_id":%q}`, decisionID),
		}},
	}
}

func setHeader(k, v string) *envoy_config_core_v3.HeaderValueOption {
	return &envoy_config_core_v3.HeaderValueOption{
		Header:       &envoy_config_core_v3.HeaderValue{Key: k, Value: v},
		AppendAction: envoy_config_core_v3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// controlFor maps a pre-policy reason to the AISecOps control it enforces.
func controlFor(c reason.Code) string {
	switch c {
	case reason.TokenExpired, reason.TokenLifetime, reason.TokenNotYetValid:
		return "AIS-CAP-02"
	case reason.TokenMissing, reason.TokenMalformed, reason.TokenTooLarge, reason.TokenAlgorithm, reason.TokenUnknownKey,
		reason.TokenForbiddenHdr, reason.TokenSignature, reason.TokenAudience, reason.TokenIssuer, reason.TokenClaims,
		reason.TokenToolMismatch, reason.TokenPolicyVersion, reason.TokenScope, reason.TokenReplayed, reason.TokenRevoked,
		reason.TokenConstraint, reason.AgentMismatch, reason.AgentUnknown, reason.RunMismatch:
		return "AIS-CAP-01"
	case reason.BudgetExceeded, reason.RiskHalt:
		return "AIS-RSK-01"
	case reason.StoreUnavailable, reason.AuditFailed:
		return "AIS-OBS-01"
	case reason.EgressBlocked:
		return "AIS-EXE-01"
	default:
		return "AIS-EXE-01"
	}
}
