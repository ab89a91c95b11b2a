package extauthz

// A table test per stage, each calling the stage's function with values:
// no Server, no listener, no store.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/finding"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

var t0 = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)

func stageDir(t *testing.T) *directory {
	t.Helper()
	f, err := config.Parse("example", config.Example())
	if err != nil {
		t.Fatal(err)
	}
	f.Agents = append(f.Agents, config.Agent{ID: "granted", AllowedTools: []string{"db.read"},
		Budgets:      config.Budgets{MaxToolCalls: 2},
		AgentBudgets: config.AgentBudgets{Window: config.Duration(time.Hour), MaxToolCalls: 5},
		Grants:       map[string]config.Grant{"db.read": {Scopes: []string{"project.alpha"}, MaxRows: 10, MaxCost: 0.015}},
		Thresholds:   config.Thresholds{Approval: 1.5, Halt: 2}})
	return NewDirectory(f, "test").current()
}

// creq builds a CheckRequest as Envoy would send it.
func creq(ext map[string]string, host, path string, headers map[string]string, body string) *envoy_service_auth_v3.CheckRequest {
	h := map[string]string{":method": "POST", ":path": path, ":authority": host, "content-type": "application/json"}
	for k, v := range headers {
		h[k] = v
	}
	return &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
		Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
			Id: "req-1", Method: "POST", Path: path, Host: host, Headers: h, RawBody: []byte(body), Size: int64(len(body)),
		}},
		ContextExtensions: ext,
	}}
}

func ext(tool, class string) map[string]string {
	return map[string]string{"tool": tool, "tool_class": class, "base_risk": "0", "trust": "internal", "cost": "0", "route_version": "v"}
}

func code(err *reason.Error) reason.Code {
	if err == nil {
		return ""
	}
	return err.Code
}

func TestStageParse(t *testing.T) {
	dir := stageDir(t)
	tests := map[string]struct {
		req      *envoy_service_auth_v3.CheckRequest
		explain  bool
		tool     string
		baseRisk float64
		code     reason.Code
	}{
		"extensions agree; attributes from the file": {req: creq(ext("db.read", "read"), "db.internal", "/q", nil, ""), tool: "db.read", baseRisk: 0.2},
		"no extensions: resolved from the file":      {req: creq(nil, "mcp.internal", "/mcp", nil, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`), tool: "docs.search", baseRisk: 0.2},
		"extensions name another tool":               {req: creq(ext("shell.exec", "exec"), "db.internal", "/q", nil, ""), code: reason.RouteUnconfigured},
		"extensions name another class":              {req: creq(ext("db.read", "exec"), "db.internal", "/q", nil, ""), code: reason.RouteUnconfigured},
		"unknown host":                               {req: creq(nil, "evil.test", "/q", nil, ""), code: reason.RouteUnconfigured},
		"path leaves its route":                      {req: creq(ext("docs.search", "read"), "mcp.internal", "/mcp/../admin", nil, ""), code: reason.RouteUnconfigured},
		"explain ignores the caller's extensions":    {req: creq(ext("shell.exec", "exec"), "db.internal", "/q", nil, ""), explain: true, tool: "db.read", baseRisk: 0.2},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := parse(tc.req, plan.Options{}, dir, tc.explain)
			if code(err) != tc.code {
				t.Fatalf("code %q (%v), want %q", code(err), err, tc.code)
			}
			if tc.code == "" && (p.Route.Tool != tc.tool || p.Route.BaseRisk != tc.baseRisk) {
				t.Fatalf("route %+v, want %s at %v", p.Route, tc.tool, tc.baseRisk)
			}
		})
	}
}

// fakeVerifier knows tokens by their text.
type fakeVerifier map[string]*capability.Claims

func (f fakeVerifier) Verify(_ context.Context, raw string, _ time.Time) (*capability.Claims, error) {
	c, ok := f[raw]
	if !ok {
		return nil, reason.New(reason.TokenSignature, "bad token")
	}
	return c, nil
}

func (f fakeVerifier) CheckRoute(c *capability.Claims, tool string) error {
	if c.Tool != tool {
		return reason.New(reason.TokenToolMismatch, "other tool")
	}
	return nil
}

func claims(agent, tool, run string) *capability.Claims {
	return &capability.Claims{ID: "j-" + agent, AgentID: agent, Subject: agent, Tool: tool, RunID: run}
}

func TestStageAuthenticate(t *testing.T) {
	dir := stageDir(t)
	v := fakeVerifier{"demo": claims("demo-agent", "db.read", ""), "bound": claims("demo-agent", "db.read", "run-b"),
		"ghost": claims("ghost", "db.read", ""), "exec": claims("demo-agent", "shell.exec", "")}
	call := func(tok string, headers map[string]string, body string) *plan.Plan {
		h := map[string]string{}
		if tok != "" {
			h["authorization"] = "Bearer " + tok
		}
		for k, v := range headers {
			h[k] = v
		}
		p, err := parse(creq(ext("db.read", "read"), "db.internal", "/q", h, body), plan.Options{}, dir, false)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := map[string]struct {
		p    *plan.Plan
		run  string
		code reason.Code
	}{
		"no token":                   {p: call("", nil, ""), code: reason.TokenMissing},
		"unverifiable token":         {p: call("forged", nil, ""), code: reason.TokenSignature},
		"token for another tool":     {p: call("exec", nil, ""), code: reason.TokenToolMismatch},
		"agent not configured":       {p: call("ghost", nil, ""), code: reason.AgentUnknown},
		"plan names another agent":   {p: call("demo", nil, `{"agent_id":"root","tool":"db.read"}`), code: reason.AgentMismatch},
		"run named by the agent":     {p: call("demo", map[string]string{"x-aisecops-run-id": "run-x"}, ""), run: "run-x"},
		"run of the token":           {p: call("bound", nil, ""), run: "run-b"},
		"token bound to another run": {p: call("bound", map[string]string{"x-aisecops-run-id": "run-x"}, ""), code: reason.RunMismatch},
		"default run":                {p: call("demo", nil, ""), run: "agent:demo-agent"},
		"another agent's default run": {p: call("demo", map[string]string{"x-aisecops-run-id": "agent:tiny-agent"}, ""),
			code: reason.RunNotOwned},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			who, err := authenticate(context.Background(), tc.p, v, nil, dir, t0)
			if code(err) != tc.code {
				t.Fatalf("code %q (%v), want %q", code(err), err, tc.code)
			}
			if tc.code == "" && (who.Run.ID != tc.run || who.Run.Agent != "demo-agent" || who.Binding == "" || who.IdemKey == "") {
				t.Fatalf("principal %+v, want run %s", who, tc.run)
			}
		})
	}
	// The binding is the exact request: body, path and query each change it.
	bind := func(path, body string) string {
		p, err := parse(creq(ext("db.read", "read"), "db.internal", path, map[string]string{"authorization": "Bearer demo", "content-type": "text/csv"}, body), plan.Options{}, dir, false)
		if err != nil {
			t.Fatal(err)
		}
		who, rerr := authenticate(context.Background(), p, v, nil, dir, t0)
		if rerr != nil {
			t.Fatal(rerr)
		}
		return who.Binding
	}
	base := bind("/q", "a,b")
	for _, other := range []string{bind("/q", "a,c"), bind("/r", "a,b"), bind("/q?x=1", "a,b")} {
		if other == base {
			t.Fatal("two different requests have one binding")
		}
	}
}

func TestStageConstraints(t *testing.T) {
	dir := stageDir(t)
	rows := int64(5)
	tests := map[string]struct {
		agent, scope, path, body string
		maxRows                  *int64
		code                     reason.Code
	}{
		"no constraint":           {agent: "demo-agent", body: `{"table":"anything","limit":1e9}`},
		"within the token":        {agent: "demo-agent", scope: "a.b", maxRows: &rows, body: `{"table":"a.b.c","limit":5}`},
		"outside the scope":       {agent: "demo-agent", scope: "a.b", body: `{"x":{"Table":"a.c"}}`, code: reason.TokenScope},
		"rows over the token":     {agent: "demo-agent", maxRows: &rows, path: "/q?Limit=6", code: reason.TokenConstraint},
		"outside the grant":       {agent: "granted", body: `{"dataset":"project.beta"}`, code: reason.TokenScope},
		"rows over the grant":     {agent: "granted", body: `{"top_k":11}`, code: reason.TokenConstraint},
		"within the grant":        {agent: "granted", body: `{"dataset":"project.alpha.x","top_k":10}`},
		"not a resource name":     {agent: "granted", body: `{"table":["project.alpha"]}`, code: reason.TokenScope},
		"an unreadable query":     {agent: "granted", path: "/q?limit=1;limit=99", code: reason.BadRequest},
		"a numeric string counts": {agent: "granted", body: `{"limit":"11"}`, code: reason.TokenConstraint},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = "/q"
			}
			p, err := parse(creq(ext("db.read", "read"), "db.internal", path, nil, tc.body), plan.Options{}, dir, false)
			if err != nil {
				t.Fatal(err)
			}
			a, _ := dir.agent(tc.agent)
			who := &Principal{Agent: a, Grant: a.Grants["db.read"],
				Claims: &capability.Claims{Scope: tc.scope, Constraints: capability.Constraints{MaxRows: tc.maxRows}}}
			if got := code(checkConstraints(p, who)); got != tc.code {
				t.Fatalf("code %q, want %q", got, tc.code)
			}
		})
	}
}

// fakeInspector returns fixed findings.
type fakeInspector struct {
	findings []finding.Finding
	err      error
}

func (f fakeInspector) Redact(v string) string { return v }

func (f fakeInspector) Inspect(context.Context, *plan.Plan, config.Tool, bool) (Inspection, error) {
	return Inspection{Findings: f.findings}, f.err
}

func TestStageInspect(t *testing.T) {
	untrusted := []plan.Provenance{{SourceType: "web", SourceName: "x", TrustLevel: "external"}}
	tests := map[string]struct {
		prov      []plan.Provenance
		in        Inspector
		untrusted bool
		code      reason.Code
	}{
		"no inspector, no labels": {},
		"an untrusted label":      {prov: untrusted, untrusted: true},
		"a trusted label":         {prov: []plan.Provenance{{TrustLevel: "internal"}}},
		"injected instructions":   {in: fakeInspector{findings: []finding.Finding{{Class: finding.Injection}}}, untrusted: true},
		"a secret":                {in: fakeInspector{findings: []finding.Finding{{Class: finding.Secret}}}},
		"uninspectable":           {in: fakeInspector{err: errors.New("bomb")}, code: reason.EgressBlocked},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := inspect(context.Background(), &plan.Plan{Provenance: tc.prov}, config.Tool{}, tc.in)
			if code(err) != tc.code || f.Untrusted != tc.untrusted {
				t.Fatalf("code %q untrusted %v, want %q %v", code(err), f.Untrusted, tc.code, tc.untrusted)
			}
		})
	}
}

func TestStageAssess(t *testing.T) {
	dir := stageDir(t)
	rules := []risk.EscalationRule{{Name: "exec_after_read", When: []string{"exec"}, After: []string{"read"}, AfterTrust: []string{"internal"}, E: 2}}
	route := func(tool string) *plan.Plan {
		tl := dir.tools[tool]
		return &plan.Plan{Route: dir.route(tl)}
	}
	demo, _ := dir.agent("demo-agent")
	granted, _ := dir.agent("granted")
	maxCost := 0.005
	tests := map[string]struct {
		p        *plan.Plan
		who      *Principal
		f        Findings
		st       riskstore.State
		step     float64
		exceeded string
		code     reason.Code
	}{
		"a read on an empty run": {p: route("db.read"), who: &Principal{Agent: demo}, step: 0.2 * 0.5 * (1 + 0.02)},
		"an exec after an internal read, however long ago": {p: route("shell.exec"), who: &Principal{Agent: demo},
			st: riskstore.State{ToolCalls: 40, Facts: []string{risk.FactStep("read", "internal")}}, step: 0.9 * 2 * 1 * (1 + 41.0/50)},
		"a secret escalates": {p: route("db.read"), who: &Principal{Agent: demo}, f: Findings{List: []finding.Finding{{Class: finding.Secret}}},
			step: 0.2 * 2 * 0.5 * (1 + 0.02)},
		"the run's calls are spent": {p: route("db.read"), who: &Principal{Agent: granted}, st: riskstore.State{ToolCalls: 2}, exceeded: riskstore.BudgetToolCalls, step: -1},
		"the agent's calls are spent": {p: route("db.read"), who: &Principal{Agent: granted}, exceeded: riskstore.BudgetAgentToolCalls, step: -1,
			st: riskstore.State{Now: t0, Agent: riskstore.AgentUsage{ToolCalls: 5, WindowStart: riskstore.WindowStart(t0, time.Hour)}}},
		"the token's max_cost": {p: route("db.read"), who: &Principal{Agent: demo, Claims: &capability.Claims{Constraints: capability.Constraints{MaxCost: &maxCost}}},
			code: reason.TokenConstraint, step: -1},
		"the grant's max_cost": {p: route("db.read"), who: &Principal{Agent: granted, Grant: granted.Grants["db.read"]},
			st: riskstore.State{CostMicros: 10_000}, code: reason.TokenConstraint, step: -1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.who.Run = riskstore.RunRef{Agent: tc.who.Agent.ID, ID: "r"}
			a, err := assess(tc.p, tc.who, tc.f, RunView{State: tc.st}, rules, time.Hour, "d", t0)
			if code(err) != tc.code || a.Exceeded != tc.exceeded {
				t.Fatalf("code %q exceeded %q, want %q %q", code(err), a.Exceeded, tc.code, tc.exceeded)
			}
			if tc.step >= 0 && math.Abs(a.Factors.Step-tc.step) > 1e-9 {
				t.Fatalf("step risk %v (%+v), want %v", a.Factors.Step, a.Factors, tc.step)
			}
			if !slices.Contains(a.Step.Facts, risk.FactStep(tc.p.Route.ToolClass, tc.p.Route.Trust)) {
				t.Errorf("step facts %v lack the step's own", a.Step.Facts)
			}
		})
	}
}

func TestStageEvaluate(t *testing.T) {
	engine, err := policy.New(context.Background(), policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := stageDir(t)
	demo, _ := dir.agent("demo-agent")
	input := func(tool string, total float64) *policy.Input {
		p := &plan.Plan{Route: dir.route(dir.tools[tool]), Source: plan.SourceNone}
		who := &Principal{Agent: demo, Claims: &capability.Claims{ID: "j", PolicyVersion: "v1.0"}, Run: riskstore.RunRef{Agent: "demo-agent", ID: "r"}}
		a := &Assessment{Factors: risk.Factors{Step: total}}
		return policyInput(t0, p, who, Findings{}, RunView{}, a, policy.Approval{})
	}
	tests := map[string]struct {
		b        *policy.Bundle
		in       *policy.Input
		decision string
		status   int
		code     reason.Code
	}{
		"allowed":             {b: engine.Current(), in: input("db.read", 0.1), decision: policy.Allow, status: 200},
		"over the approval":   {b: engine.Current(), in: input("db.read", 1.6), decision: policy.RequireApproval, status: 403},
		"over the halt":       {b: engine.Current(), in: input("db.read", 2.1), decision: policy.Deny, status: 403},
		"no bundle is loaded": {in: input("db.read", 0.1), code: reason.PolicyNotReady},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v, err := evaluate(context.Background(), tc.b, tc.in)
			if code(err) != tc.code || v.Decision != tc.decision || v.Status != tc.status || v.Input != tc.in {
				t.Fatalf("verdict %+v code %q, want %s %d %q", v, code(err), tc.decision, tc.status, tc.code)
			}
		})
	}
}

func TestStageSettle(t *testing.T) {
	prior := &riskstore.Prior{DecisionID: "d-first", RiskTotal: 0.7}
	tests := map[string]struct {
		res       riskstore.CommitResult
		again     bool
		code      reason.Code
		committed bool
		duplicate bool
	}{
		"committed":             {res: riskstore.CommitResult{Outcome: riskstore.Committed}, committed: true},
		"our own lost reply":    {res: riskstore.CommitResult{Outcome: riskstore.Duplicate, Prior: &riskstore.Prior{DecisionID: "d"}}, committed: true},
		"an Envoy retry":        {res: riskstore.CommitResult{Outcome: riskstore.Duplicate, Prior: prior}, duplicate: true},
		"a duplicate, no prior": {res: riskstore.CommitResult{Outcome: riskstore.Duplicate}, code: reason.Internal},
		"stale":                 {res: riskstore.CommitResult{Outcome: riskstore.Stale}, again: true},
		"over the halt":         {res: riskstore.CommitResult{Outcome: riskstore.Refused, Limit: riskstore.BudgetRisk}, code: reason.RiskHalt},
		"another agent's run":   {res: riskstore.CommitResult{Outcome: riskstore.Refused, Limit: riskstore.RunOwned}, code: reason.RunNotOwned},
		"a budget":              {res: riskstore.CommitResult{Outcome: riskstore.Refused, Limit: riskstore.BudgetAgentCost}, code: reason.BudgetExceeded},
		"an unknown outcome":    {res: riskstore.CommitResult{Outcome: 99}, code: reason.Internal},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := &outcome{id: "d", assessment: &Assessment{}}
			again, err := o.settle(tc.res)
			if again != tc.again || code(err) != tc.code || o.receipt.Committed != tc.committed || o.receipt.Duplicate != tc.duplicate {
				t.Fatalf("again %v code %q receipt %+v", again, code(err), o.receipt)
			}
		})
	}
}

// TestStageSettleStaleKeepsLinks: deciding again after a stale commit keeps
// the runs the call's context came from, so their risk stays in the chain
// total (it was dropped once), and confirms a denial with a read.
func TestStageSettleStaleKeepsLinks(t *testing.T) {
	links := []Link{{Run: riskstore.RunRef{Agent: "research-agent", ID: "r1"}, Risk: 0.9}}
	o := &outcome{id: "d", assessment: &Assessment{}, run: RunView{Links: links}}
	fresh := riskstore.State{Version: 4, RiskTotal: 0.5}
	again, err := o.settle(riskstore.CommitResult{Outcome: riskstore.Stale, State: fresh})
	if !again || err != nil || len(o.run.Links) != 1 || o.run.State.Version != 4 || !o.run.Cached {
		t.Fatalf("again %v err %v run %+v", again, err, o.run)
	}
}

// onceStore is a nonce store in a map of owners.
type onceStore map[string]string

func (s onceStore) UseOnce(_ context.Context, id, owner string, _ time.Duration) (bool, error) {
	if id == "jti:down" {
		return false, errors.New("connection refused")
	}
	if prev, ok := s[id]; ok {
		return prev == owner, nil
	}
	s[id] = owner
	return true, nil
}

func TestStageSpendToken(t *testing.T) {
	st := onceStore{}
	c := &capability.Claims{ID: "a", ExpiresAt: t0.Add(time.Minute)}
	for i, want := range []reason.Code{"", reason.TokenReplayed} {
		if got := code(spendToken(context.Background(), st, c, fmt.Sprintf("dec_%d", i), t0)); got != want {
			t.Fatalf("use %d: %q, want %q", i+1, got, want)
		}
	}
	if got := code(spendToken(context.Background(), st, &capability.Claims{ID: "down"}, "dec_x", t0)); got != reason.StoreUnavailable {
		t.Fatalf("store down: %q", got)
	}
	if !mustSpend(&capability.Claims{SingleUse: true}, nil) || !mustSpend(c, map[string]any{"consume_jti": "a"}) || mustSpend(c, nil) {
		t.Fatal("mustSpend")
	}
}

// TestApprovalDetailMasksSecrets: an approver is shown the held call's
// arguments with every string that carries a secret masked (keys too),
// personal data kept (the approver must see whom a mail goes to), nothing
// without a mask, and only the size of oversized arguments.
func TestApprovalDetailMasksSecrets(t *testing.T) {
	in, err := NewEgressInspector([]byte("test-finding-hmac-key-32-bytes!!"))
	if err != nil {
		t.Fatal(err)
	}
	p := &plan.Plan{Method: "POST", Path: "/send", Calls: []plan.Call{{Tool: "send_email",
		Arguments: json.RawMessage(`{"to":["bob@example.com"],"body":"key AKIAIOSFODNN7EXAMPLE","AKIAIOSFODNN7EXAMPLE":1,"n":3}`)}}}
	d := approvalDetail(p, in.MaskSecrets)
	b, _ := json.Marshal(d)
	if strings.Contains(string(b), "AKIAIOSFODNN7EXAMPLE") || !strings.Contains(string(b), "bob@example.com") || !strings.Contains(string(b), `"n":3`) {
		t.Fatalf("detail %s", b)
	}
	if d := approvalDetail(p, nil); d["arguments"] != nil {
		t.Fatalf("arguments kept without a mask: %v", d)
	}
	p.Calls[0].Arguments = json.RawMessage(`{"x":"` + strings.Repeat("a", maxDetailArguments) + `"}`)
	if d := approvalDetail(p, in.MaskSecrets); d["arguments"] != nil || d["arguments_omitted_bytes"] == nil {
		t.Fatalf("oversized arguments: %v", d)
	}
}
