package policy

import (
	"context"
	"encoding/json"
	"maps"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
)

// The attacks of an adversarial review of the decision cache: for each
// bundle, a second input answered from the cache entry of the first must get
// exactly what a fresh bundle evaluates for it. The first seven made the
// comparison-keyed cache answer wrongly (a with replacing an operand or the
// built-in, a function shadowing gt) before comparisonsAreBuiltins.

// loadMods builds a Bundle from in-memory module sources via Load.
func loadMods(t *testing.T, mods map[string]string) (*Bundle, error) {
	t.Helper()
	fsys := fstest.MapFS{}
	for name, src := range mods {
		fsys[name] = &fstest.MapFile{Data: []byte(src)}
	}
	return Load(context.Background(), fsys)
}

type attack struct {
	mods     map[string]string
	in1, in2 func(*Input)
}

const hdr = "package aisecops.authz\n\nimport rego.v1\n\n"

// res: decision "deny" when bad, else "allow".
const res = `
decision := "deny" if bad
else := "allow"

result := {"decision": decision, "reasons": [{"code": decision}]}
`

func rtotal(total float64) func(*Input) {
	return func(in *Input) { in.Risk.Total = total }
}

func args(s string) func(*Input) {
	return func(in *Input) { in.Plan.Arguments = json.RawMessage(s) }
}

var attacks = map[string]attack{
	// A comparison operand (an input path) is replaced by `with` elsewhere.
	"with_on_operand": {
		mods: map[string]string{"a.rego": hdr + res + `
high if input.risk.total > input.agent.approval_threshold
bad if { high with input.agent.approval_threshold as 1 }
`},
		in1: rtotal(0.8), in2: rtotal(1.2), // both under baseInput's 1.5, over the with's 1
	},
	// Same, with the with target the operand's parent.
	"with_on_operand_parent": {
		mods: map[string]string{"a.rego": hdr + res + `
high if input.risk.total > input.agent.approval_threshold
bad if { high with input.agent as {"approval_threshold": 1} }
`},
		in1: rtotal(0.8), in2: rtotal(1.2),
	},
	// gt mocked by a function that reads the value.
	"mock_gt": {
		mods: map[string]string{"a.rego": hdr + res + `
high if input.risk.total > 1
f(a, b) if a == 1.5
bad if { high with gt as f }
`},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	// gt shadowed by a package-local function.
	"local_gt": {
		mods: map[string]string{"a.rego": hdr + res + `
gt(a, b) if a == 1.5
bad if gt(input.risk.total, 1)
`},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	"local_gt_infix": {
		mods: map[string]string{"a.rego": hdr + res + `
gt(a, b) if a == 1.5
bad if input.risk.total > 1
`},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	// gt shadowed by an imported function.
	"import_gt": {
		mods: map[string]string{"a.rego": hdr + "import data.lib.gt\n" + res + `
bad if gt(input.risk.total, 1)
`, "lib.rego": "package lib\n\nimport rego.v1\n\ngt(a, b) if a == 1.5\n"},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	// rule indexing vs builtin equal on 1 vs 1.0
	"number_repr_eq": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == 1
`},
		in1: args(`{"n":1}`), in2: args(`{"n":1.0}`),
	},
	"number_repr_eq2": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == 1
`},
		in1: args(`{"n":1.0}`), in2: args(`{"n":1}`),
	},
	"number_big": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == 9007199254740993
`},
		in1: args(`{"n":9007199254740992}`), in2: args(`{"n":9007199254740993}`),
	},
	"mock_equal": {
		mods: map[string]string{"a.rego": hdr + res + `
one if input.risk.total == 1.5
f(a, b) if a == 1.2
bad if { one with equal as f }
`},
		in1: rtotal(1.2), in2: rtotal(1.3),
	},
	"mock_gt_in_lib": {
		mods: map[string]string{"a.rego": hdr + res + `
f(a, b) if a == 1.5
bad if { data.lib.high with gt as f }
`, "lib.rego": "package lib\n\nimport rego.v1\n\nhigh if input.risk.total > 1\n"},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	"with_operand_in_lib": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if { data.lib.high with input.agent.approval_threshold as 1 }
`, "lib.rego": "package lib\n\nimport rego.v1\n\nhigh if input.risk.total > input.agent.approval_threshold\n"},
		in1: rtotal(0.8), in2: rtotal(1.2),
	},
	"term_form_cmp": {
		mods: map[string]string{"a.rego": hdr + `
x := input.risk.total > 1
decision := "deny" if x == true
else := "allow"
result := {"decision": decision, "reasons": [{"code": "c"}]}
`},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"three_operand_gt": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if { gt(input.risk.total, 1, x); x }
`},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"import_alias_cmp": {
		mods: map[string]string{"a.rego": hdr + "import input.risk.total as t\n" + res + `
bad if t > 1
other if input.risk.total > 2
`},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"every_cmp": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if { every x in [input.risk.total] { x > 1 } }
`},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"dotted_key": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments["a.b"] > 1
`},
		in1: args(`{"a.b": 2, "a": {"b": 0}}`), in2: args(`{"a.b": 0, "a": {"b": 2}}`),
	},
	"data_aisecops_var": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if { some k; data.aisecops[k].flag }
`, "x.rego": "package aisecops.x\n\nimport rego.v1\n\nflag if input.risk.total > 1\n"},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"import_data_root": {
		mods: map[string]string{"a.rego": hdr + "import data\n" + res + `
bad if data.lib.flag
`, "lib.rego": "package lib\n\nimport rego.v1\n\nflag if input.risk.total > 1\n"},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"test_file_excluded": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if data.lib.flag
`, "lib_test.rego": "package lib\n\nimport rego.v1\n\nflag if input.risk.total > 1\n"},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"num_repr_gt": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n >= 1.0
`},
		in1: args(`{"n":1}`), in2: args(`{"n":1e0}`),
	},
	"string_vs_number": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == "1"
`},
		in1: args(`{"n":"1"}`), in2: args(`{"n":1}`),
	},
	"walk_ref": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if { walk(input.risk, [p, v]); p == ["total"]; v > 1 }
`},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"with_data_as_input": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if { data.lib.flag with data.lib.t as input.risk.total }
`, "lib.rego": "package lib\n\nimport rego.v1\n\nt := 0\nflag if t > 1\n"},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"ref_head_other_pkg": {
		mods: map[string]string{"a.rego": hdr + res + "bad if data.aisecops.authz.extra\n", "b.rego": "package aisecops\n\nimport rego.v1\n\nauthz.extra if input.risk.total > 1\n"},
		in1:  rtotal(1.5), in2: rtotal(0.7),
	},
}

func TestCacheAttacks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	all := maps.Clone(attacks)
	maps.Copy(all, attacks2)
	maps.Copy(all, attacks3)
	maps.Copy(all, attacks4)
	for name, a := range all {
		t.Run(name, func(t *testing.T) {
			b, err := loadMods(t, a.mods)
			if err != nil {
				t.Fatalf("bundle rejected: %v", err)
			}
			if b.cache == nil {
				t.Fatal("not cacheable: the attack does not reach the cache")
			}
			var ps []string
			for i, p := range b.cache.paths {
				ps = append(ps, p.String()+cmpStr(b.cache.cmp[i]))
			}
			in1, in2 := baseInput(), baseInput()
			a.in1(in1)
			a.in2(in2)
			in1.Derive()
			in2.Derive()
			v1, _ := inputValue(in1, b.readsArgs)
			v2, _ := inputValue(in2, b.readsArgs)
			k1, k2 := b.cache.key(v1), b.cache.key(v2)
			for i, in := range []*Input{in1, in2} {
				if p, err := inputValueFor(in, b.readsArgs, b.cache.want); err == nil && b.cache.key(p) != []string{k1, k2}[i] {
					t.Errorf("input %d: the partial input's key differs from the whole input's", i+1)
				}
			}
			t.Logf("paths %v sameKey=%v", ps, k1 == k2)
			d1, err1 := b.Eval(ctx, in1) // fills the cache
			cp := *in2
			got, err2 := b.Eval(ctx, in2)
			fresh, _ := loadMods(t, a.mods)
			want, err3 := fresh.Eval(ctx, &cp)
			t.Logf("first=%v/%v cached-second=%v/%v fresh-second=%v/%v", d1.Decision, err1, got.Decision, err2, want.Decision, err3)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ATTACK SUCCEEDED: cached second differs from fresh (-fresh +cached):\n%s", diff)
			}
		})
	}
}

func cmpStr(ts []*ast.Term) string {
	if ts == nil {
		return ""
	}
	s := "~["
	for _, x := range ts {
		s += x.String() + " "
	}
	return s + "]"
}
