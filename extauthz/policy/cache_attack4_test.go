package policy

// attacks4 are a fourth adversarial review's cases for TestCacheAttacks, on
// the rule as it stands (only comparisons between two input paths leave the
// key): none got through.
const a2 = "input.plan.arguments."

var attacks4 = map[string]attack{
	"tmpl_read": {mods: map[string]string{"a.rego": hdr + res + `
x if ` + a2 + `a < ` + a2 + `b
bad if { $"{` + a2 + `a}" == "1.0" }
`}, in1: args(`{"a":1,"b":2}`), in2: args(`{"a":1.0,"b":2}`)},
	"tmpl_cmp": {mods: map[string]string{"a.rego": hdr + res + `
bad if { $"{` + a2 + `a == ` + a2 + `b}" == "true" }
`}, in1: args(`{"a":[1e400],"b":[10e399]}`), in2: args(`{"a":[1e400],"b":[1e400]}`)},
	"nested_nonfinite": {mods: map[string]string{"a.rego": hdr + res + `
bad if ` + a2 + `a == ` + a2 + `b
`}, in1: args(`{"a":[1],"b":[2]}`), in2: args(`{"a":[1e400],"b":[10e399]}`)},
	"chain3": {mods: map[string]string{"a.rego": hdr + res + `
x if ` + a2 + `a == ` + a2 + `b
y if ` + a2 + `b == ` + a2 + `c
bad if ` + a2 + `a == ` + a2 + `c
`}, in1: args(`{"a":0.1,"b":0.10,"c":0.10}`), in2: args(`{"a":0.1,"b":0.10,"c":` + longTenth + `}`)},
	"chain3_gt": {mods: map[string]string{"a.rego": hdr + res + `
x if ` + a2 + `a < ` + a2 + `b
y if ` + a2 + `b < ` + a2 + `c
bad if ` + a2 + `a >= ` + a2 + `c
`}, in1: args(`{"a":0.1,"b":0.10,"c":0.10}`), in2: args(`{"a":0.1,"b":0.10,"c":` + longTenth + `}`)},
	"same_path": {mods: map[string]string{"a.rego": hdr + res + `
bad if ` + a2 + `a != ` + a2 + `a
`}, in1: args(`{"a":1}`), in2: args(`{"a":[1e400]}`)},
	"missing_null": {mods: map[string]string{"a.rego": hdr + res + `
bad if ` + a2 + `a == ` + a2 + `b
`}, in1: args(`{"a":null}`), in2: args(`{"a":null,"b":null}`)},
	"mixed_types": {mods: map[string]string{"a.rego": hdr + res + `
bad if ` + a2 + `a < ` + a2 + `b
`}, in1: args(`{"a":"x","b":1}`), in2: args(`{"a":null,"b":1}`)},
	"obj_nonfinite": {mods: map[string]string{"a.rego": hdr + res + `
bad if ` + a2 + `a == ` + a2 + `b
`}, in1: args(`{"a":{"k":1e400},"b":{"k":10e399}}`), in2: args(`{"a":{"k":1e400},"b":{"k":2e400}}`)},
	"risk_vs_args": {mods: map[string]string{"a.rego": hdr + res + `
bad if input.risk.total > ` + a2 + `t
`}, in1: rtotal(0.8), in2: rtotal(1.2)},
	"arr_index_key": {mods: map[string]string{"a.rego": hdr + res + `
bad if ` + a2 + `a == ` + a2 + `b
x if ` + a2 + `a < input.plan.arguments["b"]
`}, in1: args(`{"a":1,"b":2}`), in2: args(`{"a":1,"b":3}`)},
}
