package policy

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
)

// baseInput is a known, authenticated agent reading internal data at low risk.
func baseInput() *Input {
	return &Input{
		Time:    Time{NowNS: 1767225600000000000, RFC3339: "2026-01-01T00:00:00Z"},
		Request: Request{ID: "req-1", Method: "POST", Host: "db.internal", Path: "/query"},
		Route:   plan.Route{Tool: "db.read", ToolClass: "read", BaseRisk: 0.2, Trust: "internal", Cost: 0.01, RouteVersion: "r1"},
		Agent: Agent{
			ID: "demo-agent", Known: true, Authenticated: true, ToolAllowed: true,
			AllowedTools: []string{"db.read", "db.write", "send_email", "shell.exec", "docs.search", "llm.openai"},
			Approval:     1.5, Halt: 2.0,
		},
		Plan:   Plan{Source: "plan", Tool: "db.read", Arguments: json.RawMessage(`{"table":"customers"}`), RunID: "run-1"},
		Token:  Token{Present: true, JTI: "jti-1", PolicyVersion: "v1.0", RunID: "run-1"},
		Risk:   Risk{RStep: 0.2, E: 1, T: 0.5, B: 1, Step: 0.1, Total: 0.1},
		Budget: Budget{Consumption: map[string]float64{"max_tool_calls": 0.02}},
		Run:    Run{ID: "run-1"},
	}
}

func route(tool, class, trust string, base float64) func(*Input) {
	return func(in *Input) {
		in.Route = plan.Route{Tool: tool, ToolClass: class, BaseRisk: base, Trust: trust}
		in.Plan.Tool = tool
	}
}

var (
	sendEmail = route("send_email", "external_send", "untrusted", 0.4)
	shellExec = route("shell.exec", "exec", "neutral", 0.9)
	dbWrite   = route("db.write", "write", "internal", 0.5)
	llmRoute  = route("llm.openai", "llm", "untrusted", 0.1)
)

func withFindings(classes ...string) func(*Input) {
	return func(in *Input) {
		for _, c := range classes {
			in.Findings = append(in.Findings, Finding{Detector: c + "_detector", Location: "body", Count: 1, Hash: "h", Class: c})
		}
	}
}

func codesOf(d Decision) []string {
	var out []string
	for _, r := range d.Reasons {
		out = append(out, r.Code)
	}
	return out
}

func newEmbedded(t testing.TB) *Engine {
	t.Helper()
	e, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatalf("New(embedded): %v", err)
	}
	return e
}

// TestEvalThreatClasses drives the AISecOps specification's five threat
// classes (v1.0, section 3)
// through the Go engine and the bundled policy.
func TestEvalThreatClasses(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	tests := []struct {
		name     string
		mutate   []func(*Input)
		decision string
		codes    []string
		control  string
	}{
		{name: "baseline read", decision: Allow, codes: []string{"allowed"}},
		{name: "3.1 untrusted context to external send", mutate: []func(*Input){sendEmail, func(in *Input) {
			in.Provenance = []plan.Provenance{{SourceType: "web", SourceName: "kb.example.net", TrustLevel: "untrusted"}}
			in.UntrustedContext = true
		}}, decision: Deny, codes: []string{"untrusted_context_external_send"}, control: "AIS-CTX-01"},
		{name: "3.1 trusted context external send", mutate: []func(*Input){sendEmail}, decision: Allow, codes: []string{"allowed"}},
		{name: "3.1 injection on llm route", mutate: []func(*Input){llmRoute, withFindings("injection")},
			decision: Deny, codes: []string{"injection_detected"}, control: "AIS-CTX-01"},
		{name: "3.2 tool not allowed", mutate: []func(*Input){shellExec, func(in *Input) {
			in.Agent.ToolAllowed = false
			in.Agent.AllowedTools = []string{"db.read"}
		}}, decision: Deny, codes: []string{"tool_not_allowed"}, control: "AIS-CAP-01"},
		{name: "3.2 exec after internal read", mutate: []func(*Input){shellExec, func(in *Input) {
			in.Run.Facts = []string{risk.FactStep("read", "internal")}
		}}, decision: Deny, codes: []string{"exec_after_sensitive_read"}, control: "AIS-CAP-01"},
		{name: "3.2 exec in a fresh run", mutate: []func(*Input){shellExec}, decision: Allow, codes: []string{"allowed"}},
		{name: "3.3 poisoned vector memory to write", mutate: []func(*Input){dbWrite, func(in *Input) {
			in.Provenance = []plan.Provenance{{SourceType: "vector_memory", SourceName: "notes", TrustLevel: "unverified"}}
		}}, decision: RequireApproval, codes: []string{"untrusted_memory"}, control: "AIS-CTX-02"},
		{name: "3.4 over approval threshold", mutate: []func(*Input){func(in *Input) { in.Risk.Total = 1.6 }},
			decision: RequireApproval, codes: []string{"approval_required"}, control: "AIS-RSK-01"},
		{name: "3.4 over halt threshold", mutate: []func(*Input){func(in *Input) { in.Risk.Total = 2.1 }},
			decision: Deny, codes: []string{"risk_halt"}, control: "AIS-RSK-01"},
		{name: "3.4 budget exceeded", mutate: []func(*Input){func(in *Input) { in.Budget.Exceeded = "max_tool_calls" }},
			decision: Deny, codes: []string{"budget_exceeded"}, control: "AIS-RSK-01"},
		{name: "3.5 secret to external send", mutate: []func(*Input){sendEmail, withFindings("secret")},
			decision: Deny, codes: []string{"secret_egress"}, control: "AIS-EXE-01"},
		{name: "3.5 pii to external send", mutate: []func(*Input){sendEmail, withFindings("pii")},
			decision: RequireApproval, codes: []string{"pii_egress"}, control: "AIS-EXE-01"},
		{name: "3.5 blocked destination", mutate: []func(*Input){sendEmail, withFindings("destination")},
			decision: Deny, codes: []string{"destination_blocked"}, control: "AIS-EXE-01"},
		{name: "agent unknown", mutate: []func(*Input){func(in *Input) { in.Agent.Known = false }},
			decision: Deny, codes: []string{"agent_unknown"}, control: "AIS-CAP-01"},
		{name: "token missing", mutate: []func(*Input){func(in *Input) { in.Token = Token{} }},
			decision: Deny, codes: []string{"token_missing"}, control: "AIS-CAP-01"},
		{name: "valid approval consumed", mutate: []func(*Input){func(in *Input) {
			in.Risk.Total = 1.6
			in.Approval = Approval{ID: "apr-1", Present: true, Valid: true, Status: "approved"}
		}}, decision: Allow, codes: []string{"allowed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := baseInput()
			for _, m := range tc.mutate {
				m(in)
			}
			d, err := e.Eval(context.Background(), in)
			if err != nil {
				t.Fatalf("Eval: %v", err)
			}
			if d.Decision != tc.decision {
				t.Errorf("decision = %q, want %q (reasons %v)", d.Decision, tc.decision, d.Reasons)
			}
			if diff := cmp.Diff(tc.codes, codesOf(d)); diff != "" {
				t.Errorf("codes (-want +got):\n%s", diff)
			}
			if tc.control != "" && d.Reasons[0].ControlID != tc.control {
				t.Errorf("control = %q, want %q", d.Reasons[0].ControlID, tc.control)
			}
		})
	}
}

func TestEvalApprovalObligation(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	in := baseInput()
	in.Risk.Total = 1.6
	in.Approval = Approval{ID: "apr-1", Present: true, Valid: true}
	d, err := e.Eval(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	want := Decision{
		Decision:    Allow,
		Reasons:     []Reason{{Code: "allowed", Message: "allowed with a human approval", ControlID: "AIS-RSK-01"}},
		Obligations: map[string]any{"approval_consumed": true},
	}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("decision (-want +got):\n%s", diff)
	}
}

// TestWorkedExample pins the chain of the AISecOps specification's worked
// example (v1.0, section 8) under its approval threshold of 1.2: risk is
// compared including the step being decided (0.10, 1.06, 1.335), so the
// approval falls on step 3, not step 2 as the specification's prose says (its
// own numbers give 1.06 after step 2).
func TestWorkedExample(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	read := risk.FactStep("read", "internal")
	send := risk.FactStep("external_send", "untrusted")
	steps := []struct {
		name  string
		route func(*Input)
		risk  Risk
		facts []string
		want  string
	}{
		{"1 db.read", route("db.read", "read", "internal", 0.2), Risk{RStep: 0.2, E: 1, T: 0.5, B: 1, Step: 0.1, Total: 0.1}, nil, Allow},
		{"2 send_email", sendEmail, Risk{RStep: 0.4, E: 1.2, T: 2, B: 1, Step: 0.96, TotalBefore: 0.1, Total: 1.06}, []string{read}, Allow},
		{"3 db.write", dbWrite, Risk{RStep: 0.5, E: 1, T: 0.5, B: 1.1, Step: 0.275, TotalBefore: 1.06, Total: 1.335}, []string{read, send}, RequireApproval},
	}
	for _, s := range steps {
		in := baseInput()
		s.route(in)
		in.Agent.Approval, in.Agent.Halt = 1.2, 2.0
		in.Risk, in.Run.Facts = s.risk, s.facts
		d, err := e.Eval(context.Background(), in)
		if err != nil {
			t.Fatalf("step %s: %v", s.name, err)
		}
		if d.Decision != s.want {
			t.Errorf("step %s: decision %q (%v), want %q", s.name, d.Decision, codesOf(d), s.want)
		}
	}
}

// policyWith is a minimal bundle whose result rule is body.
func policyWith(body string) map[string]string {
	return map[string]string{"authz.rego": "package aisecops.authz\n\nimport rego.v1\n\n" + body}
}

const allowAll = `result := {"decision": "allow", "reasons": [], "obligations": {}}` + "\n"

func newDir(t *testing.T, files map[string]string) (*Engine, string) {
	t.Helper()
	dir := writeBundle(t, files)
	e, err := New(context.Background(), Options{Dir: dir})
	if err != nil {
		t.Fatalf("New(%s): %v", dir, err)
	}
	return e, dir
}

func wantCode(t *testing.T, d Decision, err error, code reason.Code) {
	t.Helper()
	if got := reason.CodeOf(err); err == nil || got != code {
		t.Fatalf("err = %v (code %s), want code %s", err, got, code)
	}
	var re *reason.Error
	if !errors.As(err, &re) {
		t.Fatalf("err %T is not a *reason.Error", err)
	}
	if d.Decision != Deny || len(d.Reasons) != 1 || d.Reasons[0].Code != string(code) {
		t.Errorf("decision with error = %+v, want deny %s", d, code)
	}
}

// TestEvalPolicyError: anything but exactly one well-formed result denies with
// policy_error.
func TestEvalPolicyError(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"undefined decision": `other := 1` + "\n",
		"conflicting outputs": `result := {"decision": "allow", "reasons": [], "obligations": {}} if input.request.method == "POST"
result := {"decision": "deny", "reasons": [{"code": "x", "message": "m"}], "obligations": {}} if input.agent.known
`,
		"runtime error under strict builtins": `default result := {"decision": "allow", "reasons": [], "obligations": {}}
result := {"decision": "deny", "reasons": [{"code": "x", "message": "m"}], "obligations": {}} if lower(input.plan.arguments.to) == "attacker@evil.example"
`,
		"not an object":          `result := "allow"` + "\n",
		"unknown decision":       `result := {"decision": "maybe", "reasons": [], "obligations": {}}` + "\n",
		"decision not a string":  `result := {"decision": true, "reasons": [], "obligations": {}}` + "\n",
		"missing decision":       `result := {"reasons": [], "obligations": {}}` + "\n",
		"deny without reasons":   `result := {"decision": "deny", "reasons": [], "obligations": {}}` + "\n",
		"reason without code":    `result := {"decision": "deny", "reasons": [{"message": "m"}], "obligations": {}}` + "\n",
		"reason code not string": `result := {"decision": "deny", "reasons": [{"code": 1}], "obligations": {}}` + "\n",
		"reason extra key":       `result := {"decision": "deny", "reasons": [{"code": "x", "secret": "s"}], "obligations": {}}` + "\n",
		"reasons not array":      `result := {"decision": "deny", "reasons": {"code": "x"}, "obligations": {}}` + "\n",
		"obligations not object": `result := {"decision": "allow", "reasons": [], "obligations": []}` + "\n",
		"unexpected key":         `result := {"decision": "allow", "reasons": [], "obligations": {}, "allow": true}` + "\n",
		"partial set result":     `result contains "allow" if true` + "\n",
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			e, _ := newDir(t, policyWith(body))
			in := baseInput()
			in.Plan.Arguments = json.RawMessage(`{"to":["attacker@evil.example"]}`)
			d, err := e.Eval(context.Background(), in)
			wantCode(t, d, err, reason.PolicyError)
		})
	}
}

// TestEvalStrictBuiltinErrorsMatter shows the runtime-error case above is a
// real trap: the same policy without strict builtin errors would allow.
func TestEvalStrictBuiltinErrorsMatter(t *testing.T) {
	t.Parallel()
	e, _ := newDir(t, policyWith(`default result := {"decision": "allow", "reasons": [], "obligations": {}}
result := {"decision": "deny", "reasons": [{"code": "x", "message": "m"}], "obligations": {}} if lower(input.plan.arguments.to) == "a"
`))
	in := baseInput()
	in.Plan.Arguments = json.RawMessage(`{"to":"A"}`)
	d, err := e.Eval(context.Background(), in)
	if err != nil || d.Decision != Deny {
		t.Fatalf("string argument: %+v, %v; want the deny rule to fire", d, err)
	}
	in.Plan.Arguments = json.RawMessage(`{"to":["A"]}`)
	d, err = e.Eval(context.Background(), in)
	wantCode(t, d, err, reason.PolicyError)
}

func TestEvalBadInput(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	tests := map[string]*Input{
		"nil input": nil,
		"NaN risk": func() *Input {
			in := baseInput()
			in.Risk.Total = math.NaN()
			return in
		}(),
		"infinite threshold": func() *Input {
			in := baseInput()
			in.Agent.Halt = math.Inf(1)
			return in
		}(),
		"arguments not JSON": func() *Input {
			in := baseInput()
			in.Plan.Arguments = json.RawMessage(`{"a":`)
			return in
		}(),
		"arguments with trailing data": func() *Input {
			in := baseInput()
			in.Plan.Arguments = json.RawMessage(`{} {}`)
			return in
		}(),
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			d, err := e.Eval(context.Background(), in)
			wantCode(t, d, err, reason.PolicyError)
		})
	}
}

// TestEvalTimeout: an evaluation past its deadline stops with policy_timeout
// and leaves no goroutine behind.
//
// Not parallel: it counts the process's goroutines, which other tests start.
func TestEvalTimeout(t *testing.T) {
	// 9e6 iterations: seconds of work, interruptible between steps.
	e, _ := newDir(t, policyWith(`result := {"decision": "allow", "reasons": [], "obligations": {}} if {
	count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000)]) > 0
}
`))
	before := runtime.NumGoroutine()
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		d, err := e.Eval(ctx, baseInput())
		cancel()
		wantCode(t, d, err, reason.PolicyTimeout)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := e.Eval(ctx, baseInput())
	wantCode(t, d, err, reason.PolicyTimeout)

	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines: %d before, %d after", before, after)
	}
}

// TestForbiddenBuiltins: a bundle calling a network, clock, random or runtime
// builtin does not load, so the engine is not ready and denies.
func TestForbiddenBuiltins(t *testing.T) {
	t.Parallel()
	calls := map[string]string{
		"http.send":          `x := http.send({"method": "GET", "url": "http://169.254.169.254/"})`,
		"net.lookup_ip_addr": `x := net.lookup_ip_addr("example.com")`,
		"rand.intn":          `x := rand.intn("k", 10)`,
		"time.now_ns":        `x := time.now_ns()`,
		"opa.runtime":        `x := opa.runtime()`,
		"uuid.rfc4122":       `x := uuid.rfc4122("k")`,
		"io.jwt.encode_sign": `x := io.jwt.encode_sign({"alg": "HS256"}, {}, {"kty": "oct", "k": "a2V5"})`,
		"trace":              `x if trace("hi")`,
		// JSON Schema references resolve file:// (and http://): a decision
		// would depend on a file outside the bundle.
		"json.match_schema":  `x := json.match_schema({}, {"$ref": "file:///etc/aisecops/schema.json"})`,
		"json.verify_schema": `x := json.verify_schema({"$ref": "file:///etc/passwd"})`,
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			dir := writeBundle(t, policyWith(allowAll+call+"\n"))
			e, err := New(context.Background(), Options{Dir: dir})
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("New = %v, want an error naming %s", err, name)
			}
			if e == nil || e.Ready() {
				t.Fatalf("engine %v: want a non-nil engine that is not ready", e)
			}
			d, err := e.Eval(context.Background(), baseInput())
			wantCode(t, d, err, reason.PolicyNotReady)
		})
	}
	// The same bundle without the call loads: the failures above are the builtins.
	if _, err := New(context.Background(), Options{Dir: writeBundle(t, policyWith(allowAll))}); err != nil {
		t.Fatalf("control bundle: %v", err)
	}
}

func TestNewNotReady(t *testing.T) {
	t.Parallel()
	tests := map[string]map[string]string{
		"missing directory": nil,
		"no policies":       {"data.json": `{}`},
		"syntax error":      {"authz.rego": "package aisecops.authz\n\nresult := {\n"},
		"rego v0 syntax":    {"authz.rego": "package aisecops.authz\n\nallow { true }\n"},
		"corrupt data":      {"authz.rego": "package aisecops.authz\n\n" + allowAll, "data.json": `{"aisecops": `},
		"bad escalation e": {"authz.rego": "package aisecops.authz\n\n" + allowAll,
			"data.json": `{"aisecops": {"escalation": [{"name": "x", "when": ["exec"], "after": ["read"], "e": 9}]}}`},
		"escalation unknown field": {"authz.rego": "package aisecops.authz\n\n" + allowAll,
			"data.json": `{"aisecops": {"escalation": [{"name": "x", "when": ["exec"], "after": ["read"], "e": 2, "weight": 3}]}}`},
		"escalation case-variant field": {"authz.rego": "package aisecops.authz\n\n" + allowAll,
			"data.json": `{"aisecops": {"escalation": [{"name": "x", "when": ["exec"], "after": ["read"], "e": 2, "E": 3}]}}`},
	}
	for name, files := range tests {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "missing")
			if files != nil {
				dir = writeBundle(t, files)
			}
			e, err := New(context.Background(), Options{Dir: dir})
			if err == nil {
				t.Fatal("New succeeded")
			}
			if e.Ready() || e.Version() != "" {
				t.Errorf("Ready %v Version %q, want not ready", e.Ready(), e.Version())
			}
			d, err := e.Eval(context.Background(), baseInput())
			wantCode(t, d, err, reason.PolicyNotReady)
		})
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return 0
}

// TestReload: a bad bundle keeps the last good one serving and is counted; a
// good one swaps in.
func TestReload(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	dir := writeBundle(t, map[string]string{
		"authz.rego": "package aisecops.authz\n\n" + allowAll,
		"data.json":  `{"aisecops": {"policy_version": "a"}}`,
	})
	e, err := New(context.Background(), Options{Dir: dir, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	eval := func() string {
		d, err := e.Eval(context.Background(), baseInput())
		if err != nil {
			t.Fatalf("Eval: %v", err)
		}
		return d.Decision
	}
	if got := eval(); got != Allow || e.Version() != "a" {
		t.Fatalf("initial: %s version %q", got, e.Version())
	}

	writeFiles(t, dir, map[string]string{"authz.rego": "package aisecops.authz\n\nresult := {\n"})
	if err := e.Reload(context.Background()); err == nil {
		t.Fatal("bad reload succeeded")
	}
	if got := eval(); got != Allow || e.Version() != "a" || !e.Ready() {
		t.Errorf("after bad reload: %s version %q ready %v, want the last good bundle", got, e.Version(), e.Ready())
	}
	if n := counterValue(t, reg, "aisecops_policy_reloads_total", "result", "failure"); n != 1 {
		t.Errorf("failures counted = %v, want 1", n)
	}

	writeFiles(t, dir, map[string]string{
		"authz.rego": "package aisecops.authz\n\nresult := {\"decision\": \"deny\", \"reasons\": [{\"code\": \"closed\", \"message\": \"m\"}], \"obligations\": {}}\n",
		"data.json":  `{"aisecops": {"policy_version": "b"}}`,
	})
	if err := e.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := eval(); got != Deny || e.Version() != "b" {
		t.Errorf("after good reload: %s version %q", got, e.Version())
	}
	if n := counterValue(t, reg, "aisecops_policy_reloads_total", "result", "success"); n != 2 {
		t.Errorf("successes counted = %v, want 2", n)
	}
	if v := counterValue(t, reg, "aisecops_policy_info", "version", "b"); v != 1 {
		t.Errorf("policy_info{version=b} = %v", v)
	}
	if v := counterValue(t, reg, "aisecops_policy_info", "version", "a"); v != 0 {
		t.Errorf("policy_info{version=a} still %v", v)
	}
}

// TestWatch: a changed directory is picked up; a broken edit is reported once
// and the last good bundle keeps serving.
func TestWatch(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	dir := writeBundle(t, map[string]string{"authz.rego": "package aisecops.authz\n\n" + allowAll})
	e, err := New(context.Background(), Options{Dir: dir, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	first := e.Version()
	if !strings.HasPrefix(first, "sha256:") {
		t.Errorf("version without policy_version = %q, want the content hash", first)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Watch(ctx, 5*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	writeFiles(t, dir, map[string]string{"authz.rego": "package aisecops.authz\n\nresult := {\n"})
	waitFor("a counted failure", func() bool {
		return counterValue(t, reg, "aisecops_policy_reloads_total", "result", "failure") >= 1
	})
	time.Sleep(50 * time.Millisecond) // several more polls of the same broken content
	if n := counterValue(t, reg, "aisecops_policy_reloads_total", "result", "failure"); n != 1 {
		t.Errorf("failures = %v, want the broken content counted once", n)
	}
	if e.Version() != first {
		t.Errorf("version changed to %q on a broken bundle", e.Version())
	}
	writeFiles(t, dir, map[string]string{"data.json": `{"aisecops": {"policy_version": "v2"}}`,
		"authz.rego": "package aisecops.authz\n\n" + allowAll})
	waitFor("the new version", func() bool { return e.Version() == "v2" })
}

func TestBundleData(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	want := []EscalationRule{
		{Name: "external_send_after_internal_read", When: []string{"external_send"}, After: []string{"read"}, AfterTrust: []string{"internal"}, E: 1.2},
		{Name: "exec_after_internal_read", When: []string{"exec"}, After: []string{"read"}, AfterTrust: []string{"internal"}, E: 2.0},
	}
	if diff := cmp.Diff(want, e.Current().Escalation()); diff != "" {
		t.Errorf("Escalation (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"v0.1", "v1.0"}, e.AcceptedPolicyVersions()); diff != "" {
		t.Errorf("AcceptedPolicyVersions (-want +got):\n%s", diff)
	}
	if e.Version() != "v1.0" || !strings.HasPrefix(e.Hash(), "sha256:") {
		t.Errorf("Version %q Hash %q", e.Version(), e.Hash())
	}
	// The rules are shared read-only on the hot path; a reload brings a new
	// slice rather than changing the one callers hold.
	held := e.Current().Escalation()
	if err := e.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, held); diff != "" {
		t.Errorf("a reload changed the rules a caller holds (-want +got):\n%s", diff)
	}
}

// TestMetricsRegistration: a second engine on the same registerer is an error,
// not a panic.
func TestMetricsRegistration(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := New(context.Background(), Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(context.Background(), Options{Registerer: reg}); err == nil {
		t.Error("second registration succeeded")
	}
}

func TestEmbeddedFilesNotModifiedByTests(t *testing.T) {
	t.Parallel()
	// Guard: the embedded bundle and the policies/ directory are the same files,
	// so `opa test policies/` and RunTests("") test what ships.
	a, err := RunTests(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := RunTests(context.Background(), filepath.Join("..", "..", "policies"))
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) {
		t.Errorf("embedded bundle has %d tests, policies/ has %d", len(a), len(b))
	}
	if _, err := os.Stat(filepath.Join("..", "..", "policies", "data.json")); err != nil {
		t.Error(err)
	}
}
