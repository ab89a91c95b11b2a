package policy

import (
	"github.com/open-policy-agent/opa/v1/ast"
)

// readsArguments reports whether any module can see input.plan.arguments.
// Parsing the agent's arguments into an ast.Value is a large share of an
// evaluation's cost, and the bundled policy never reads them (egress findings
// are computed in Go), so the engine skips them when no rule can reach them.
//
// The check is conservative: input as a whole (`input`, `walk(input)`,
// `input[k]`), input.plan as a whole, a non-constant key at either level, or a
// `with` on those counts as reading the arguments. Only a reference whose
// constant path leads away from plan.arguments is known not to.
func readsArguments(mods []*ast.Module) bool {
	reads := false
	var vis *ast.GenericVisitor
	vis = ast.NewGenericVisitor(func(x any) bool {
		if reads {
			return true
		}
		switch v := x.(type) {
		case ast.Ref:
			if !v.HasPrefix(ast.InputRootRef) {
				return false
			}
			if refReachesArguments(v) {
				reads = true
				return true
			}
			for _, t := range v[1:] {
				vis.Walk(t) // keys can reference input too: input.a[input.plan.b]
			}
			return true
		case ast.Var:
			if v.Equal(ast.InputRootDocument.Value) {
				reads = true // bare input, e.g. a function argument
			}
		}
		return false
	})
	for _, m := range mods {
		vis.Walk(m)
		if reads {
			return true
		}
	}
	return reads
}

func refReachesArguments(r ast.Ref) bool {
	want := []string{"plan", "arguments"}
	for i, w := range want {
		if len(r) <= i+1 {
			return true // input or input.plan as a whole
		}
		s, ok := r[i+1].Value.(ast.String)
		if !ok {
			return true // a variable key may be "plan" or "arguments"
		}
		if string(s) != w {
			return false
		}
	}
	return true
}
