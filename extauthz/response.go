package extauthz

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	envoy_type_v3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/finding"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
)

// Response headers the server sets.
const (
	HeaderDecisionID = "x-aisecops-decision-id"
	HeaderRiskTotal  = "x-aisecops-risk-total"
	HeaderDecision   = "x-aisecops-decision"
)

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
	Findings []finding.Finding  `json:"egress_findings,omitempty"`
	Approval *policy.Approval   `json:"approval,omitempty"`
	Policy   string             `json:"policy_version,omitempty"`
}

func (o *outcome) body() Body {
	b := Body{Decision: o.verdict.Decision, Reasons: o.verdict.Reasons, DecisionID: o.id, ApprovalID: o.verdict.ApprovalID}
	if b.Reasons == nil {
		b.Reasons = []policy.Reason{}
	}
	if !o.dry {
		return b
	}
	t := &Trace{DryRun: true, Stages: o.trace, Findings: o.findings.List, Policy: o.bundle.Version()}
	if o.plan != nil {
		t.Tool = o.plan.Route.Tool
	}
	if o.who != nil {
		t.Agent, t.RunID = o.who.Agent.ID, o.who.Run.ID
	}
	if a := o.assessment; a != nil {
		t.Budget, t.Exceeded = a.Consumption, a.Exceeded
	}
	if in := o.verdict.Input; in != nil {
		pl := in.Plan
		pl.Arguments = nil
		t.Plan, t.Risk = &pl, &in.Risk
		if in.Approval.Present {
			t.Approval = &in.Approval
		}
	}
	b.Trace = t
	return b
}

// response turns the outcome into Envoy's CheckResponse.
func (o *outcome) response() *envoy_service_auth_v3.CheckResponse {
	v := o.verdict
	if v.Decision == policy.Allow && !o.dry {
		return &envoy_service_auth_v3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &envoy_service_auth_v3.CheckResponse_OkResponse{OkResponse: &envoy_service_auth_v3.OkHttpResponse{
				Headers: []*envoy_config_core_v3.HeaderValueOption{
					setHeader(HeaderDecisionID, o.id),
					setHeader(HeaderRiskTotal, strconv.FormatFloat(o.riskTotal(), 'f', 4, 64)),
				},
				HeadersToRemove: headersToRemove(o.plan),
			}},
		}
	}
	status := v.Status
	if o.dry {
		// The tool is never reached on dry-run or explain: Envoy answers 200
		// with the trace, whatever the decision.
		status = http.StatusOK
	}
	if status == 0 {
		status = http.StatusForbidden
	}
	body, err := json.Marshal(o.body())
	if err != nil {
		body = fmt.Appendf(nil, `{"decision":"deny","reasons":[{"code":"internal_error"}],"decision_id":%q}`, o.id)
	}
	if rpc, ok := o.rpcAnswer(); ok && !o.dry {
		// An MCP client reads a JSON-RPC answer, not an HTTP status: each
		// request of the body gets an error with its own id, the decision in
		// its data. The HTTP status is 200 so the client parses it.
		status, body = http.StatusOK, rpc
	}
	return &envoy_service_auth_v3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &envoy_service_auth_v3.CheckResponse_DeniedResponse{DeniedResponse: &envoy_service_auth_v3.DeniedHttpResponse{
			Status: &envoy_type_v3.HttpStatus{Code: envoy_type_v3.StatusCode(status)},
			Headers: []*envoy_config_core_v3.HeaderValueOption{
				setHeader("content-type", "application/json"),
				setHeader(HeaderDecision, v.Decision),
				setHeader(HeaderDecisionID, o.id),
			},
			Body: string(body),
		}},
	}
}

// JSON-RPC error codes of a refused MCP request (the implementation-defined
// server error range).
const (
	rpcDenied           = -32001
	rpcApprovalRequired = -32002
)

// rpcAnswer is the JSON-RPC answer of a refused MCP body: an error response
// for every request in it (by id), carrying the decision, reasons, decision id
// and approval id in the error's data. ok is false when the body holds no
// request to answer (notifications only, or not MCP).
func (o *outcome) rpcAnswer() ([]byte, bool) {
	p := o.plan
	if p == nil || p.Source != plan.SourceMCP {
		return nil, false
	}
	code, msg := rpcDenied, "denied by the gateway"
	if o.verdict.Decision == policy.RequireApproval {
		code, msg = rpcApprovalRequired, "a human must approve this call"
	}
	if len(o.verdict.Reasons) > 0 && o.verdict.Reasons[0].Message != "" {
		msg += ": " + o.verdict.Reasons[0].Message
	}
	data := o.body()
	type rpcError struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    Body   `json:"data"`
	}
	type answer struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   rpcError        `json:"error"`
	}
	var out []answer
	for _, id := range p.RPCIDs {
		if id != nil {
			out = append(out, answer{JSONRPC: "2.0", ID: id, Error: rpcError{Code: code, Message: msg, Data: data}})
		}
	}
	var b []byte
	var err error
	switch {
	case len(out) == 0:
		return nil, false
	case len(p.RPCIDs) == 1:
		b, err = json.Marshal(out[0])
	default:
		b, err = json.Marshal(out)
	}
	return b, err == nil
}

// headersToRemove strips the token and every x-aisecops-* input before the
// upstream, except the two headers the allow sets (they are overwritten). On
// llm routes authorization is the provider's key and stays.
func headersToRemove(p *plan.Plan) []string {
	if p == nil {
		return []string{"authorization"}
	}
	out := make([]string, 0, len(p.InputHeaders))
	for _, h := range p.InputHeaders {
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

// record is the Check's audit record, built from the outcome alone. The
// policy version is the one of the bundle that decided.
func (o *outcome) record(latency time.Duration) *audit.Record {
	v := o.verdict
	r := &audit.Record{
		TS:                o.start.UTC(),
		DecisionID:        o.id,
		Decision:          v.Decision,
		HTTPStatus:        v.Status,
		PolicyVersion:     o.bundle.Version(),
		DryRun:            o.dry,
		Explain:           o.explain,
		ApprovalID:        v.ApprovalID,
		Committed:         o.receipt.Committed,
		RunCalls:          o.receipt.RunCalls,
		LatencyUS:         latency.Microseconds(),
		OTelTraceID:       o.traceID,
		ContextProvenance: []audit.Provenance{},
		EgressFindings:    o.findings.List,
		BudgetConsumption: map[string]float64{},
	}
	if r.EgressFindings == nil {
		r.EgressFindings = []finding.Finding{}
	}
	switch {
	case !r.Committed:
		r.RunCalls = o.run.State.ToolCalls // the state it was decided on (0: none loaded)
	case r.RunCalls == 0:
		r.RunCalls = o.run.State.ToolCalls + 1 // our own commit, whose reply was lost
	}
	if p := o.plan; p != nil {
		r.RequestID, r.RunID, r.TraceID = p.RequestID, p.RunID, p.TraceID
		r.Tool, r.ToolClass, r.RouteVersion, r.MCPMethod = p.Route.Tool, p.Route.ToolClass, p.Route.RouteVersion, p.MCPMethod
		r.Explain = r.Explain || p.Explain
		r.ArgumentsHash = plan.ArgumentsHash(p.Call0().Arguments)
		r.RequestDigest = p.RequestDigest()
		for _, l := range p.Provenance {
			r.ContextProvenance = append(r.ContextProvenance, audit.Provenance(l))
		}
		if p.Source == plan.SourceLLM && len(p.Body) > 0 {
			r.PromptHash = plan.Hash(p.Body)
		}
	}
	for _, l := range o.findings.Derived {
		r.ContextProvenance = append(r.ContextProvenance, audit.Provenance(l))
	}
	if w := o.who; w != nil {
		r.AgentID = w.Agent.ID
		if w.Run.ID != "" {
			r.RunID = w.Run.ID
		}
		r.Binding = w.Binding
		if w.Claims != nil {
			r.TokenJTI = w.Claims.ID
		}
	}
	for _, l := range o.run.Links {
		r.LinkedRuns = append(r.LinkedRuns, l.String())
	}
	if a := o.assessment; a != nil {
		r.StepRisk = audit.StepRisk{RStep: a.Factors.RStep, E: a.Factors.E, T: a.Factors.T, B: a.Factors.B, Step: a.Factors.Step}
		r.CumulativeRisk = o.riskTotal()
		if a.Consumption != nil {
			r.BudgetConsumption = a.Consumption
		}
	}
	r.Reasons, r.ControlIDs = auditReasons(v.Reasons)
	return r
}

// redactRecord passes every agent-written string of an audit record through
// redact before it is written: ids, the MCP method, provenance labels. What
// the agent wrote reaches the audit log only once inspected.
func redactRecord(r *audit.Record, redact func(string) string) {
	for _, f := range []*string{&r.RequestID, &r.RunID, &r.TraceID, &r.MCPMethod, &r.ApprovalID} {
		*f = redact(*f)
	}
	for i := range r.ContextProvenance {
		p := &r.ContextProvenance[i]
		p.SourceType, p.SourceName, p.TrustLevel, p.SourceHash = redact(p.SourceType), redact(p.SourceName), redact(p.TrustLevel), redact(p.SourceHash)
	}
}

// auditReasons are the decision's reasons as the audit record keeps them, and
// the sorted, distinct controls they enforce.
func auditReasons(rs []policy.Reason) ([]audit.Reason, []string) {
	reasons, controls := make([]audit.Reason, 0, len(rs)), []string{}
	for _, x := range rs {
		reasons = append(reasons, audit.Reason(x))
		if x.ControlID != "" && !slices.Contains(controls, x.ControlID) {
			controls = append(controls, x.ControlID)
		}
	}
	sort.Strings(controls)
	return reasons, controls
}
