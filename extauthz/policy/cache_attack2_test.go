package policy

import "strings"

// attacks2 are a second adversarial review's cases for TestCacheAttacks:
// numbers beyond float64's range compared with == (OPA's rule index hashes
// their literal, so equal numbers spelled differently match different rules)
// made the comparison-keyed cache turn a deny into an allow before
// signs kept such numbers' literals; the rest never got through.
var attacks2 = map[string]attack{
	// Number.Hash falls back to hashing the literal text when the number
	// overflows float64, while Number.Equal compares exactly: the rule
	// index misses a rule whose == constant equals the input's value
	// written differently.
	"bigexp_index_eq": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == 1e400
`},
		in1: args(`{"n":1e400}`), in2: args(`{"n":10e399}`),
	},
	"bigexp_index_eq_rev": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == 1e400
`},
		in1: args(`{"n":10e399}`), in2: args(`{"n":1e400}`),
	},
	"bigexp_index_eq_risk": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == 1e400
`},
		in1: args(`{"n":1e400}`), in2: args(`{"n":1E+400}`),
	},
	"template_string": {
		mods: map[string]string{"a.rego": hdr + `
bad if input.risk.total > 1
decision := "deny" if bad
else := "allow"
result := {"decision": decision, "reasons": [{"code": $"{input.risk.total}"}]}
`},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	"template_cmp": {
		mods: map[string]string{"a.rego": hdr + `
decision := "allow"
result := {"decision": decision, "reasons": [{"code": $"{input.risk.total > 1}"}]}
`},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"refhead_gt_from_parent": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.risk.total > 1
`, "b.rego": "package aisecops\n\nimport rego.v1\n\nauthz.gt(a, b) if a == 1.5\n"},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	"pkg_named_gt": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if gt(input.risk.total, 1)
`, "b.rego": "package aisecops.authz.gt\n\nimport rego.v1\n\nx := 1\n"},
		in1: rtotal(1.5), in2: rtotal(1.7),
	},
	"bigexp_else_chain": {
		mods: map[string]string{"a.rego": hdr + `
decision := "deny" if input.plan.arguments.n == 1e400
else := "allow"
result := {"decision": decision, "reasons": [{"code": decision}]}
`},
		in1: args(`{"n":10e399}`), in2: args(`{"n":1e400}`),
	},
	"bigexp_bigint_literal": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.plan.arguments.n == 1` + strings.Repeat("0", 400) + `
`},
		in1: args(`{"n":1e400}`), in2: args(`{"n":1` + strings.Repeat("0", 400) + `}`),
	},
	"bigexp_negated_control": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if not input.plan.arguments.n == 1e400
`},
		in1: args(`{"n":10e399}`), in2: args(`{"n":1e400}`),
	},
	"same_path_cmp": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.risk.total >= input.risk.total
`},
		in1: rtotal(1.5), in2: rtotal(0.7),
	},
	"every_cmp_const": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if { every x in [1, 2] { input.risk.total > x } }
`},
		in1: rtotal(1.5), in2: rtotal(2.5),
	},
	"missing_other_operand": {
		mods: map[string]string{"a.rego": hdr + res + `
bad if input.risk.total > input.plan.arguments.lim
bad if not input.risk.total > input.plan.arguments.lim
`},
		in1: args(`{}`), in2: args(`{"lim": null}`),
	},
}
