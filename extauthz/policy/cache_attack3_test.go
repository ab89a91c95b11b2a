package policy

// attacks3 are a third adversarial review's cases for TestCacheAttacks: OPA's
// number equality is not transitive, so an operand deduplicated by value
// stood for one it did not equal, and the cache turned a deny into an allow
// before operands were deduplicated by their text; the rest never got
// through.
// longTenth equals 0.10 (float64) but not 0.1 (exact): see attacks3.
const longTenth = "0.10000000000000000000000010"

var attacks3 = map[string]attack{
	// 0.10 and L are ValueEqual, so containsTerm drops L from the operands;
	// 0.1 and 0.10 both sign '=' against 0.10, yet only 0.10 equals L.
	"nontransitive_eq": {
		mods: map[string]string{"a.rego": hdr + res + `
other if input.plan.arguments.n == 0.10
bad if input.plan.arguments.n == ` + longTenth + `
`},
		in1: args(`{"n":0.1}`), in2: args(`{"n":0.10}`),
	},
	"nontransitive_eq_rev": {
		mods: map[string]string{"a.rego": hdr + res + `
other if input.plan.arguments.n == 0.10
bad if not input.plan.arguments.n == ` + longTenth + `
`},
		in1: args(`{"n":0.10}`), in2: args(`{"n":0.1}`),
	},
	"nontransitive_neq": {
		mods: map[string]string{"a.rego": hdr + res + `
other if input.plan.arguments.n != 0.10
bad if input.plan.arguments.n != ` + longTenth + `
`},
		in1: args(`{"n":0.10}`), in2: args(`{"n":0.1}`),
	},
	"nontransitive_gt": {
		mods: map[string]string{"a.rego": hdr + res + `
other if input.plan.arguments.n > 0.10
bad if input.plan.arguments.n >= ` + longTenth + `
`},
		in1: args(`{"n":0.1}`), in2: args(`{"n":0.10}`),
	},
	// Same with the operand another input path: same-path / path-vs-path.
	"path_vs_path": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.a == input.plan.arguments.b
`},
		in1: args(`{"a":0.1,"b":"x"}`), in2: args(`{"a":0.10,"b":"y"}`),
	},
	"num_edge_neg0":       {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == 0\n"}, in1: args(`{"n":-0}`), in2: args(`{"n":0}`)},
	"num_edge_neg0b":      {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == -0.0\n"}, in1: args(`{"n":0.0}`), in2: args(`{"n":-0}`)},
	"num_edge_subnorm":    {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == 5e-324\n"}, in1: args(`{"n":4.9e-324}`), in2: args(`{"n":5e-324}`)},
	"num_edge_1e308":      {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == 1e308\n"}, in1: args(`{"n":1.0e308}`), in2: args(`{"n":1e308}`)},
	"num_edge_exp0":       {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == 1\n"}, in1: args(`{"n":1}`), in2: args(`{"n":1e0}`)},
	"num_edge_bigint":     {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == 9007199254740993\n"}, in1: args(`{"n":9007199254740993}`), in2: args(`{"n":9007199254740993.0}`)},
	"num_edge_hash_trunc": {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == 1.5\n"}, in1: args(`{"n":1.7}`), in2: args(`{"n":1.50}`)},
	"bool_null_types":     {mods: map[string]string{"a.rego": hdr + res + "bad if input.plan.arguments.n == true\nx if input.plan.arguments.n == null\n"}, in1: args(`{"n":[true]}`), in2: args(`{"n":{"a":true}}`)},
}
