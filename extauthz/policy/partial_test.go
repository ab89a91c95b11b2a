package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// deepReader reads input at every depth and shape a cache path can take: a
// whole top-level key, a path into an array, a map key, a compared number,
// the arguments, and keys that are absent.
const deepReader = hdr + res + `
bad if input.budget.consumption.max_cost > 0.4
bad if input.token.max_rows > 50
bad if input.findings[0].class == "pii"
bad if input.route.mcp_tools[_] == "fetch_page"
bad if input.plan.arguments.n == 1
bad if input.request.host == "evil"
bad if input.time.now_ns > 1767225600000000005
bad if input.run.facts[_] == "untrusted"
bad if input.risk.total > input.agent.halt_threshold
bad if input.finding_classes.secret
bad if input.nothing.here
bad if count(input.provenance) > 1
`

// randomInput varies every field the converter builds.
func randomInput(rng *rand.Rand, i int) *Input {
	in := fullInput()
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	in.Request.Host = pick("db.internal", "evil", "")
	in.Time.NowNS += int64(rng.IntN(10))
	in.Token.JTI = fmt.Sprintf("j%d", i)
	if rng.IntN(3) == 0 {
		in.Token.MaxRows = nil
	} else {
		r := int64(rng.IntN(100))
		in.Token.MaxRows = &r
	}
	in.Route.MCPTools = [][]string{nil, {"search"}, {"fetch_page", "search"}}[rng.IntN(3)]
	in.Budget.Consumption = map[string]float64{"max_cost": float64(rng.IntN(10)) / 10}
	if rng.IntN(2) == 0 {
		in.Budget.Consumption["max_tool_calls"] = 0.5
	}
	in.Findings = nil
	if rng.IntN(2) == 0 {
		in.Findings = []Finding{{Detector: "d", Class: pick("pii", "secret"), Count: 1}}
	}
	in.Run.Facts = []string{pick("untrusted", "read:internal")}
	in.Risk.Total = float64(rng.IntN(30)) / 10
	in.Agent.Halt = []float64{2, 1.5}[rng.IntN(2)]
	in.Plan.Arguments = json.RawMessage([]string{`{"n":1}`, `{"n":2}`, `{}`}[rng.IntN(3)])
	in.Provenance = in.Provenance[:rng.IntN(len(in.Provenance)+1)]
	return in
}

// TestPartialInputKeysLikeWhole: what a cache lookup builds of the input
// keys exactly as the whole input does, for the bundled policy and one that
// reads every depth and shape of path; and the decisions, hits included,
// are a fresh evaluation's.
func TestPartialInputKeysLikeWhole(t *testing.T) {
	t.Parallel()
	deep, err := loadMods(t, map[string]string{"a.rego": deepReader})
	if err != nil || deep.cache == nil {
		t.Fatalf("deep reader: %v (cacheable %v)", err, deep != nil && deep.cache != nil)
	}
	ctx := context.Background()
	for name, b := range map[string]*Bundle{"bundled": newEmbedded(t).Current(), "deep": deep} {
		rng := rand.New(rand.NewPCG(3, 4))
		hits := 0
		var base *Input
		for i := range 4000 {
			if i%2 == 0 {
				base = randomInput(rng, i)
			}
			in := new(*base)
			if i%2 == 1 { // the same input but for values neither policy reads: a hit
				in.Token.JTI, in.Request.ID = "again", "again"
			}
			in.Derive()
			whole, err := inputValue(in, b.readsArgs)
			if err != nil {
				t.Fatal(err)
			}
			part, err := inputValueFor(in, b.readsArgs, b.cache.want)
			if err != nil {
				t.Fatal(err)
			}
			if kw, kp := b.cache.key(whole), b.cache.key(part); kw != kp {
				t.Fatalf("%s input %d: partial key %q, whole key %q", name, i, kp, kw)
			}
			_, cached := b.cache.get(b.cache.key(part))
			cp := *in
			got, err := b.Eval(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			want, err := b.eval(ctx, regoInput(t, &cp, b.readsArgs))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("%s input %d (cached %v): (-evaluated +engine)\n%s", name, i, cached, diff)
			}
			if cached {
				hits++
			}
		}
		if hits < 2000 {
			t.Errorf("%s: %d hits: the cache was not exercised", name, hits)
		}
	}
}

// TestPartialInputChecksEveryNumber: a non-finite number anywhere in the
// input is an error (a deny) also when the cache holds the decision for the
// same input with a finite one — the parts a lookup does not build are still
// checked. Every float in Input is tried (found by reflection, so a new
// field is covered too).
func TestPartialInputChecksEveryNumber(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t).Current()
	ctx := context.Background()
	fields := floatFields(reflect.TypeFor[Input](), nil, "")
	if len(fields) < 15 {
		t.Fatalf("found only %d float fields", len(fields))
	}
	for _, f := range fields {
		for _, bad := range []float64{math.NaN(), math.Inf(1)} {
			in := fullInput()
			in.Plan.Arguments = nil
			if _, err := b.Eval(ctx, in); err != nil { // the decision is now cached
				t.Fatal(err)
			}
			in = fullInput()
			in.Plan.Arguments = nil
			f.set(reflect.ValueOf(in).Elem(), bad)
			d, err := b.Eval(ctx, in)
			if err == nil || d.Decision != Deny {
				t.Errorf("%s = %v: %v %v, want a deny with an error", f.name, bad, d.Decision, err)
			}
		}
	}
}

type floatField struct {
	name string
	set  func(v reflect.Value, f float64)
}

// floatFields lists setters for every float64 reachable in t: fields,
// pointers (allocated), map values (key "k") and slice elements (one
// element).
func floatFields(t reflect.Type, path []int, name string) []floatField {
	var out []floatField
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		idx := append(append([]int(nil), path...), i)
		n := name + "." + sf.Name
		field := func(v reflect.Value) reflect.Value { return v.FieldByIndex(idx) }
		switch ft := sf.Type; {
		case ft.Kind() == reflect.Float64:
			out = append(out, floatField{n, func(v reflect.Value, f float64) { field(v).SetFloat(f) }})
		case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Float64:
			out = append(out, floatField{n, func(v reflect.Value, f float64) { field(v).Set(reflect.ValueOf(&f)) }})
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Float64:
			out = append(out, floatField{n + "[k]", func(v reflect.Value, f float64) {
				m := reflect.MakeMap(ft)
				m.SetMapIndex(reflect.ValueOf("k"), reflect.ValueOf(f))
				field(v).Set(m)
			}})
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Float64:
			out = append(out, floatField{n + "[0]", func(v reflect.Value, f float64) { field(v).Set(reflect.ValueOf([]float64{f})) }})
		case ft.Kind() == reflect.Struct && ft != reflect.TypeFor[json.RawMessage]():
			out = append(out, floatFields(ft, idx, n)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			for _, inner := range floatFields(ft.Elem(), nil, n+"[0]") {
				out = append(out, floatField{inner.name, func(v reflect.Value, f float64) {
					s := reflect.MakeSlice(ft, 1, 1)
					inner.set(s.Index(0), f)
					field(v).Set(s)
				}})
			}
		}
	}
	return out
}

// regoInput is the whole input for an evaluation of its own.
func regoInput(t *testing.T, in *Input, withArgs bool) rego.EvalOption {
	t.Helper()
	in.Derive()
	v, err := inputValue(in, withArgs)
	if err != nil {
		t.Fatal(err)
	}
	return rego.EvalParsedInput(v)
}

// TestSignsAgreeWithOPACompare: the float fast path of signs gives, for
// every pair of number texts, the sign OPA's own comparison gives —
// different texts of one value, neighbouring floats, integers past 2^53,
// underflow and exponent forms included.
func TestSignsAgreeWithOPACompare(t *testing.T) {
	t.Parallel()
	texts := []string{"0", "-0", "1", "1.0", "1.5", "1.50", "15e-1", "0.1", "0.30000000000000004", "0.3",
		"1e-7", "1e-07", "0.0000001", "9007199254740992", "9007199254740993", "9007199254740994",
		"1e-400", "2e-400", "-1e-400", "1.7976931348623157e308", "2.5", "-2.5", "100", "1e2",
		"0.1000000000000000055511151231257827", "0.10000000000000001", "4.9e-324", "5e-324"}
	fixed := len(texts)
	rng := rand.New(rand.NewPCG(7, 8))
	for range 2000 {
		f := math.Float64frombits(rng.Uint64())
		if math.IsNaN(f) || math.IsInf(f, 0) {
			continue
		}
		texts = append(texts, formatFloat(f), strconv.FormatFloat(math.Nextafter(f, math.Inf(1)), 'g', -1, 64))
	}
	var pairs [][2]string
	for _, a := range texts[:fixed] { // every pair of the chosen ones
		for _, b := range texts[:fixed] {
			pairs = append(pairs, [2]string{a, b})
		}
	}
	for range 20000 {
		pairs = append(pairs, [2]string{texts[rng.IntN(len(texts))], texts[rng.IntN(len(texts))]})
	}
	for _, p := range pairs {
		a, b := p[0], p[1]
		va, vb := ast.Number(a), ast.Number(b)
		got := signs(ast.NewObject(), va, []*ast.Term{ast.NewTerm(vb)})
		var want string
		switch c := va.Compare(vb); {
		case c < 0:
			want = "<"
		case c > 0:
			want = ">"
		case ast.ValueEqual(va, vb) && va.Hash() == vb.Hash():
			want = "="
		default:
			want = "~"
		}
		if got != want {
			t.Fatalf("%s vs %s: signs %q, OPA %q", a, b, got, want)
		}
	}
}
