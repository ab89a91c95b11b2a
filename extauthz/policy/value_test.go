package policy

import (
	"context"
	"encoding/json"
	"math"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
)

// genericValue is what rego.EvalInput would build from in: a JSON round trip.
func genericValue(t testing.TB, in any) ast.Value {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var x any
	if err := util.UnmarshalJSON(b, &x); err != nil {
		t.Fatal(err)
	}
	v, err := ast.InterfaceToValue(x)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func fullInput() *Input {
	in := baseInput()
	rows, cost := int64(100), 0.25
	in.Route.MCPTools = []string{"search", "fetch_page"}
	in.Plan.MCPMethod = "tools/call"
	in.Plan.ArgumentsHash, in.Plan.Binding, in.Plan.TraceID = "ah", "ph", "tr"
	in.Plan.Arguments = json.RawMessage(`{"n":1.5e300,"deep":{"a":[1,"x",null,true,{"b":-0.0000001}]},"s":"\u00e9"}`)
	in.Token = Token{Present: true, JTI: "j", Scope: "s", PolicyVersion: "v1.0", RunID: "r", SingleUse: true, MaxRows: &rows, MaxCost: &cost, ExpiresNS: 42}
	in.Provenance = []plan.Provenance{{SourceType: "web", SourceName: "n", TrustLevel: "untrusted", SourceHash: "sh"}, {SourceType: "memory", SourceName: "m", TrustLevel: "internal"}}
	in.UntrustedContext = true
	in.Risk = Risk{RStep: 0.4, E: 1.2, T: 2, B: 1, Step: 0.96, TotalBefore: 0.1, Total: 1.06, Escalations: []string{"x"}}
	in.Budget = Budget{Consumption: map[string]float64{"max_cost": 0.5, "max_tool_calls": 1e-9, "max_write_operations": 1e22}, Exceeded: "max_cost"}
	in.Run = Run{ID: "r", ToolCalls: 3, WriteOps: 1, Cost: 0.03, Facts: []string{"step:read:internal"}}
	in.Approval = Approval{ID: "a", Present: true, Valid: true, Status: "approved"}
	in.Findings = []Finding{{Detector: "d", Location: "l", Count: 2, Hash: "h", Class: "pii"}}
	in.Request.DryRun, in.Request.Explain = true, true
	return in
}

// TestInputValueMatchesJSON: the hand-written converter builds the same
// document as the JSON round trip of Input, so policies see Input's JSON tags,
// and replaying an audited input JSON evaluates the same.
func TestInputValueMatchesJSON(t *testing.T) {
	t.Parallel()
	tests := map[string]*Input{
		"full": fullInput(),
		"omitempty fields empty": func() *Input {
			in := baseInput()
			in.Provenance, in.Findings = []plan.Provenance{}, []Finding{}
			in.Run.Facts = []string{}
			return in
		}(),
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			in.Derive() // as the server does before every evaluation
			got, err := inputValue(in, true)
			if err != nil {
				t.Fatal(err)
			}
			want := genericValue(t, in)
			if ast.Compare(got, want) != 0 {
				t.Errorf("converter:\n%v\nJSON round trip:\n%v", got, want)
			}
			if got.String() != want.String() {
				t.Errorf("number text differs:\n%v\n%v", got, want)
			}
		})
	}
}

// TestInputValueNilCollections: nil slices and maps are empty, never null.
func TestInputValueNilCollections(t *testing.T) {
	t.Parallel()
	in := &Input{}
	v, err := inputValue(in, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"provenance", "findings", "run.facts", "agent.allowed_tools", "budget.consumption", "plan.arguments"} {
		ref := ast.MustParseRef("x." + path)[1:]
		var cur ast.Value = v
		for _, k := range ref {
			cur = cur.(ast.Object).Get(k).Value
		}
		switch c := cur.(type) {
		case *ast.Array:
			if c.Len() != 0 {
				t.Errorf("%s = %v", path, c)
			}
		case ast.Object:
			if c.Len() != 0 {
				t.Errorf("%s = %v", path, c)
			}
		default:
			t.Errorf("%s is %T %v, want an empty collection", path, cur, cur)
		}
	}
}

func TestFormatFloat(t *testing.T) {
	t.Parallel()
	for _, f := range []float64{0, 1, -1, 0.1, 1.335, 1e-7, 1e-6, 1e20, 1e21, 1.5e300, -2.5e-10, math.MaxFloat64, math.SmallestNonzeroFloat64} {
		want, _ := json.Marshal(f)
		if got := formatFloat(f); got != string(want) {
			t.Errorf("formatFloat(%v) = %s, encoding/json %s", f, got, want)
		}
	}
}

// FuzzEvalArguments: agent-controlled arguments never panic the converter or
// the engine; valid JSON converts to what the generic path builds, and every
// outcome is a well-formed decision or a policy_error deny.
func FuzzEvalArguments(f *testing.F) {
	for _, s := range []string{`{}`, `{"to":["a@b"]}`, `{"n":1e999}`, `[1,2]`, `"s"`, `null`, `{"a":{"b":{"c":[[[]]]}}}`, `{"a":1}{`, ``, `{"\ud800":"\u0000"}`, `{"a":-0}`} {
		f.Add([]byte(s))
	}
	e := newEmbedded(f)
	f.Fuzz(func(t *testing.T, args []byte) {
		in := baseInput()
		in.Plan.Arguments = args
		v, err := argumentsValue(args)
		if err == nil && json.Valid(args) {
			var x any
			if err := util.UnmarshalJSON(args, &x); err == nil {
				if w, err := ast.InterfaceToValue(x); err == nil && ast.Compare(v, w) != 0 {
					t.Errorf("converter %v, generic %v", v, w)
				}
			}
		}
		d, err := e.Eval(context.Background(), in)
		switch {
		case err != nil:
			if d.Decision != Deny {
				t.Errorf("error %v with decision %q", err, d.Decision)
			}
		case d.Decision != Allow && d.Decision != Deny && d.Decision != RequireApproval:
			t.Errorf("decision %q", d.Decision)
		}
	})
}
