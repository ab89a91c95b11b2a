package policy

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

func TestReadsArguments(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		body string
		want bool
	}{
		"no input":             {`x := 1`, false},
		"other input fields":   {`x if input.route.tool == "a"` + "\n" + `y if input.plan.tool == data.z[input.agent.id]`, false},
		"arguments":            {`x if input.plan.arguments.to == "a"`, true},
		"arguments by bracket": {`x if input["plan"]["arguments"]`, true},
		"whole input":          {`x := input`, true},
		"whole plan":           {`x := json.marshal(input.plan)`, true},
		"variable key":         {`x if input.plan[k] == "a"`, true},
		"variable top key":     {"x if {\n\tsome k\n\tinput[k].arguments\n}", true},
		"walk input":           {`x if walk(input, [p, v])`, true},
		"import plan":          {"import input.plan as p\n\nx if p.arguments.to", true},
		"key inside other ref": {`x if data.tbl[input.plan.arguments.to]`, true},
		"function of input":    {`f(x) := x` + "\n" + `y := f(input)`, true},
		"comprehension":        {`x := [v | some v in input.plan.arguments]`, true},
		"every over plan":      {`x if every k, v in input.plan { v != "" }`, true},
		"with override":        {`x if y with input.plan as {}` + "\n" + `y := 1`, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := ast.ParseModuleWithOpts("p.rego", "package p\n\nimport rego.v1\n\n"+tc.body+"\n", ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				t.Fatal(err)
			}
			if got := readsArguments([]*ast.Module{m}); got != tc.want {
				t.Errorf("readsArguments = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestArgumentsReachPolicy: a policy reading the arguments sees them.
func TestArgumentsReachPolicy(t *testing.T) {
	t.Parallel()
	e, _ := newDir(t, policyWith(`default result := {"decision": "allow", "reasons": [], "obligations": {}}
result := {"decision": "deny", "reasons": [{"code": "to", "message": "m"}], "obligations": {}} if "attacker@evil.example" in input.plan.arguments.to
`))
	in := baseInput()
	in.Plan.Arguments = json.RawMessage(`{"to":["attacker@evil.example"]}`)
	d, err := e.Eval(context.Background(), in)
	if err != nil || d.Decision != Deny {
		t.Fatalf("Eval = %+v, %v; want deny", d, err)
	}
	if !e.cur.Load().readsArgs {
		t.Error("readsArgs false for a policy reading arguments")
	}
	if newEmbedded(t).cur.Load().readsArgs {
		t.Error("the bundled policy reads input.plan.arguments; update the cost notes")
	}
}
