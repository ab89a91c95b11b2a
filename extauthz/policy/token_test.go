package policy

import (
	"context"
	"errors"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// baseTokenInput is a known agent asking for a read tool it may use.
func baseTokenInput() *TokenInput {
	return &TokenInput{
		Time: Time{NowNS: 1767225600000000000, RFC3339: "2026-01-01T00:00:00Z"},
		Agent: TokenAgent{
			ID: "demo-agent", Known: true, ToolAllowed: true,
			AllowedTools: []string{"db.read", "db.write", "send_email", "shell.exec"},
		},
		Tool:       TokenTool{Name: "db.read", Known: true, Class: "read", Trust: "internal", BaseRisk: 0.2},
		Request:    TokenRequest{RunID: "run-1", RunValid: true, TTLSeconds: 300},
		Credential: TokenCredential{Kind: "jwt", Issuer: "iss", Subject: "system:serviceaccount:default:demo-agent", Namespace: "default", ServiceAccount: "demo-agent"},
	}
}

func tokenCodes(d TokenDecision) []string {
	var out []string
	for _, r := range d.Reasons {
		out = append(out, r.Code)
	}
	return out
}

// TestEvalTokenBundled drives the bundled tokens.rego through the Go engine.
func TestEvalTokenBundled(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	tests := []struct {
		name     string
		mutate   func(*TokenInput)
		decision string
		codes    []string
		maxTTL   time.Duration
	}{
		{name: "allowed read", decision: Allow, codes: []string{"allowed"}},
		{
			name:     "agent unknown",
			mutate:   func(in *TokenInput) { in.Agent = TokenAgent{ID: "mallory"} },
			decision: Deny, codes: []string{"agent_unknown"},
		},
		{
			name: "tool not allowed",
			mutate: func(in *TokenInput) {
				in.Agent.AllowedTools, in.Agent.ToolAllowed = []string{"db.read"}, false
				in.Tool = TokenTool{Name: "shell.exec", Known: true, Class: "exec"}
			},
			decision: Deny, codes: []string{"tool_not_allowed"},
		},
		{
			name:     "run invalid",
			mutate:   func(in *TokenInput) { in.Request.RunID, in.Request.RunValid = "a b", false },
			decision: Deny, codes: []string{"run_invalid"},
		},
		{
			name:     "exec capped at five minutes",
			mutate:   func(in *TokenInput) { in.Tool = TokenTool{Name: "shell.exec", Known: true, Class: "exec"} },
			decision: Allow, codes: []string{"allowed"}, maxTTL: 5 * time.Minute,
		},
		{
			name:     "external send capped at five minutes",
			mutate:   func(in *TokenInput) { in.Tool = TokenTool{Name: "send_email", Known: true, Class: "external_send"} },
			decision: Allow, codes: []string{"allowed"}, maxTTL: 5 * time.Minute,
		},
		{
			name:     "nil allowed tools",
			mutate:   func(in *TokenInput) { in.Agent.AllowedTools = nil },
			decision: Deny, codes: []string{"tool_not_allowed"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := baseTokenInput()
			if tc.mutate != nil {
				tc.mutate(in)
			}
			d, err := e.EvalToken(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			if d.Decision != tc.decision || d.MaxTTL != tc.maxTTL {
				t.Errorf("decision %q max TTL %v, want %q %v", d.Decision, d.MaxTTL, tc.decision, tc.maxTTL)
			}
			if diff := cmp.Diff(tc.codes, tokenCodes(d)); diff != "" {
				t.Errorf("reasons (-want +got):\n%s", diff)
			}
		})
	}
}

func wantTokenCode(t *testing.T, d TokenDecision, err error, code reason.Code) {
	t.Helper()
	var re *reason.Error
	if !errors.As(err, &re) || re.Code != code {
		t.Fatalf("err = %v, want a *reason.Error with code %s", err, code)
	}
	if d.Decision != Deny || len(d.Reasons) != 1 || d.Reasons[0].Code != string(code) {
		t.Errorf("decision with error = %+v, want deny %s", d, code)
	}
}

func tokensPolicy(body string) map[string]string {
	files := policyWith(allowAll)
	files["tokens.rego"] = "package aisecops.tokens\n\nimport rego.v1\n\n" + body
	return files
}

// TestEvalTokenPolicyError: anything but exactly one well-formed result denies
// with policy_error.
func TestEvalTokenPolicyError(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"undefined":              "other := 1\n",
		"not an object":          `result := "allow"` + "\n",
		"require_approval":       `result := {"decision": "require_approval", "reasons": [{"code": "x", "message": "m"}]}` + "\n",
		"unknown decision":       `result := {"decision": "maybe", "reasons": []}` + "\n",
		"missing decision":       `result := {"reasons": []}` + "\n",
		"deny without reasons":   `result := {"decision": "deny", "reasons": []}` + "\n",
		"reason without code":    `result := {"decision": "deny", "reasons": [{"message": "m"}]}` + "\n",
		"reasons not array":      `result := {"decision": "allow", "reasons": {}}` + "\n",
		"unexpected key":         `result := {"decision": "allow", "reasons": [], "obligations": {}}` + "\n",
		"ttl not a number":       `result := {"decision": "allow", "reasons": [], "max_ttl_seconds": "300"}` + "\n",
		"ttl zero":               `result := {"decision": "allow", "reasons": [], "max_ttl_seconds": 0}` + "\n",
		"ttl negative":           `result := {"decision": "allow", "reasons": [], "max_ttl_seconds": -5}` + "\n",
		"ttl huge":               `result := {"decision": "allow", "reasons": [], "max_ttl_seconds": 1e300}` + "\n",
		"partial set":            `result contains "allow" if true` + "\n",
		"runtime error (strict)": `default result := {"decision": "allow", "reasons": []}` + "\n" + `result := {"decision": "deny", "reasons": [{"code": "x"}]} if lower(input.agent.allowed_tools) == "x"` + "\n",
		"conflicting outputs": `result := {"decision": "allow", "reasons": []} if input.agent.known
result := {"decision": "deny", "reasons": [{"code": "x"}]} if input.tool.known
`,
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			e, _ := newDir(t, tokensPolicy(body))
			d, err := e.EvalToken(context.Background(), baseTokenInput())
			wantTokenCode(t, d, err, reason.PolicyError)
		})
	}
}

// TestEvalTokenWellFormed: the accepted shapes decode exactly.
func TestEvalTokenWellFormed(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		body string
		want TokenDecision
	}{
		"allow, no cap": {
			body: `result := {"decision": "allow", "reasons": []}` + "\n",
			want: TokenDecision{Decision: Allow, Reasons: []Reason{}},
		},
		"allow, fractional cap": {
			body: `result := {"decision": "allow", "reasons": [], "max_ttl_seconds": 90.5}` + "\n",
			want: TokenDecision{Decision: Allow, Reasons: []Reason{}, MaxTTL: 90500 * time.Millisecond},
		},
		"deny": {
			body: `result := {"decision": "deny", "reasons": [{"code": "c", "message": "m", "control_id": "AIS-CAP-01"}]}` + "\n",
			want: TokenDecision{Decision: Deny, Reasons: []Reason{{Code: "c", Message: "m", ControlID: "AIS-CAP-01"}}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, _ := newDir(t, tokensPolicy(tc.body))
			d, err := e.EvalToken(context.Background(), baseTokenInput())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, d); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestEvalTokenWithoutTokensPackage: a bundle written before tokens.rego still
// loads and serves Checks; token requests deny with policy_error.
func TestEvalTokenWithoutTokensPackage(t *testing.T) {
	t.Parallel()
	e, _ := newDir(t, policyWith(allowAll))
	if d, err := e.Eval(context.Background(), baseInput()); err != nil || d.Decision != Allow {
		t.Fatalf("Eval = %+v, %v", d, err)
	}
	d, err := e.EvalToken(context.Background(), baseTokenInput())
	wantTokenCode(t, d, err, reason.PolicyError)
}

func TestEvalTokenBadInput(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	nan := baseTokenInput()
	nan.Tool.BaseRisk = math.NaN()
	inf := baseTokenInput()
	c := math.Inf(1)
	inf.Request.MaxCost = &c
	for name, in := range map[string]*TokenInput{"nil": nil, "NaN base risk": nan, "infinite max cost": inf} {
		t.Run(name, func(t *testing.T) {
			d, err := e.EvalToken(context.Background(), in)
			wantTokenCode(t, d, err, reason.PolicyError)
		})
	}
}

func TestEvalTokenNotReady(t *testing.T) {
	t.Parallel()
	e, err := New(context.Background(), Options{Dir: t.TempDir()})
	if err == nil {
		t.Fatal("New on an empty directory succeeded")
	}
	d, err := e.EvalToken(context.Background(), baseTokenInput())
	wantTokenCode(t, d, err, reason.PolicyNotReady)
}

// TestEvalTokenTimeout: an evaluation past its deadline stops with
// policy_timeout and leaves no goroutine behind.
//
// Not parallel: it counts the process's goroutines, which other tests start.
func TestEvalTokenTimeout(t *testing.T) {
	e, _ := newDir(t, tokensPolicy(`result := {"decision": "allow", "reasons": []} if {
	count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000)]) > 0
}
`))
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	d, err := e.EvalToken(ctx, baseTokenInput())
	cancel()
	wantTokenCode(t, d, err, reason.PolicyTimeout)

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	d, err = e.EvalToken(ctx, baseTokenInput())
	wantTokenCode(t, d, err, reason.PolicyTimeout)

	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines: %d before, %d after", before, after)
	}
}

func BenchmarkEvalToken(b *testing.B) {
	e := newEmbedded(b)
	in := baseTokenInput()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.EvalToken(ctx, in); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRegoTokenUnitTestsRun guards that tokens_test.rego is found and passes.
func TestRegoTokenUnitTestsRun(t *testing.T) {
	t.Parallel()
	results, err := RunTests(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range results {
		if r.Package == "data.aisecops.tokens_test" || r.Package == "aisecops.tokens_test" {
			n++
		}
	}
	if n < 15 {
		t.Errorf("ran %d tokens_test.rego tests, want at least 15", n)
	}
}
