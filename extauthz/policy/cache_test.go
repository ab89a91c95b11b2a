package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
)

func TestInputPaths(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		body string
		want []string // nil: not cacheable
	}{
		"fields":               {`x if input.route.tool == "a"` + "\n" + `y if input.route.tool_class == data.z[input.agent.id]`, []string{"input.agent.id", "input.route.tool", "input.route.tool_class"}},
		"prefix wins":          {`x if input.plan.arguments.to` + "\n" + `y := json.marshal(input.plan)`, []string{"input.plan"}},
		"variable key":         {`x if input.plan.arguments[k] == "a"`, []string{"input.plan.arguments"}},
		"bracket string":       {`x if input["plan"]["tool"]`, []string{"input.plan.tool"}},
		"import alias":         {"import input.plan as p\n\nx if p.arguments.to", []string{"input.plan"}},
		"with target":          {`x if y with input.risk as {}` + "\n" + `y if input.route.tool`, []string{"input.risk", "input.route.tool"}},
		"key inside other ref": {`x if data.tbl[input.plan.tool]`, []string{"input.plan.tool"}},
		"whole input":          {`x := input`, nil},
		"walk input":           {`x if walk(input, [p, v])`, nil},
		"variable top key":     {"x if {\n\tsome k\n\tinput[k].arguments\n}", nil},
		"function of input":    {`f(x) := x` + "\n" + `y := f(input)`, nil},
		"object.get on input":  {`x := object.get(input, "plan", {})`, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := ast.ParseModuleWithOpts("p.rego", "package p\n\nimport rego.v1\n\n"+tc.body+"\n", ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				t.Fatal(err)
			}
			paths, ok := inputPaths([]*ast.Module{m})
			if (tc.want != nil) != ok {
				t.Fatalf("cacheable = %v, want %v (paths %v)", ok, tc.want != nil, paths)
			}
			var got []string
			for _, p := range paths {
				got = append(got, p.String())
			}
			if diff := cmp.Diff(tc.want, got); ok && diff != "" {
				t.Errorf("paths (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCacheKeyFollowsReferences: the key holds what the modules an
// evaluation of the query can reach read — through a reference, an import, a
// function call, a with target, a dynamic key into data — and not what an
// unreferenced package reads (the token service's rules beside the Check's).
func TestCacheKeyFollowsReferences(t *testing.T) {
	t.Parallel()
	lib := "package lib\n\nhelper if input.b\n\nf(x) := x if input.e\n"
	other := "package other\n\nz if input.c\n"
	imported := "package imp\n\nw if input.d\n"
	tests := map[string]struct {
		authz string
		want  []string
	}{
		"none":     {"x if input.a", []string{"input.a"}},
		"rule ref": {"x if data.lib.helper", []string{"input.a", "input.b", "input.e"}},
		"import":   {"import data.imp\n\nx if imp.w", []string{"input.a", "input.d"}},
		"call":     {"x if data.lib.f(1)", []string{"input.a", "input.b", "input.e"}},
		"with":     {"x if y with data.other.z as true\ny if true", []string{"input.a", "input.c"}},
		"dynamic":  {"x if data[input.k]", []string{"input.a", "input.b", "input.c", "input.d", "input.e", "input.k"}},
		"key ref":  {"x if data.tbl[data.imp.w]", []string{"input.a", "input.d"}},
		"ref key":  {"x if data.other[input.k]", []string{"input.a", "input.c", "input.k"}},
		"same pkg": {"", []string{"input.a", "input.s"}},
		"ref head": {"", []string{"input.a", "input.s"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var mods []*ast.Module
			srcs := []string{
				"package aisecops.authz\n\nresult := {} if input.a\n" + tc.authz + "\n",
				lib, other, imported,
			}
			switch name {
			case "same pkg":
				srcs = append(srcs, "package aisecops.authz\n\nq if input.s\n")
			case "ref head":
				srcs = append(srcs, "package aisecops\n\nauthz.more if input.s\n")
			}
			for i, src := range srcs {
				m, err := ast.ParseModuleWithOpts(fmt.Sprintf("m%d.rego", i), src, ast.ParserOptions{RegoVersion: ast.RegoV1})
				if err != nil {
					t.Fatal(err)
				}
				mods = append(mods, m)
			}
			c := newDecisionCache(mods)
			if c == nil {
				t.Fatal("not cacheable")
			}
			var got []string
			for _, p := range c.paths {
				got = append(got, p.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("cache key paths (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBundledPolicyIsCacheable: the bundled policy reads neither input as a
// whole nor any per-call value (token jti, request id, run id, time), so its
// decisions repeat across calls and tokens.
func TestBundledPolicyIsCacheable(t *testing.T) {
	t.Parallel()
	c := newEmbedded(t).Current().cache
	if c == nil {
		t.Fatal("the bundled policy is not cacheable")
	}
	var paths []string
	for _, p := range c.paths {
		paths = append(paths, p.String())
	}
	for _, perCall := range []string{"input.token.jti", "input.request", "input.request.id", "input.request.run_id", "input.time", "input.plan.run_id", "input.run.id", "input.plan.arguments", "input.findings"} {
		if slices.Contains(paths, perCall) {
			t.Errorf("the bundled policy reads %s: %v", perCall, paths)
		}
	}
	if !slices.Contains(paths, "input.risk.total") || !slices.Contains(paths, "input.agent.halt_threshold") {
		t.Errorf("paths %v lack the risk and thresholds", paths)
	}
}

// TestDecisionCacheAgreesWithEvaluation: over thousands of inputs varied in
// every field the policy reads (and some it does not), the cached engine's
// decision is exactly a fresh evaluation's, hits included — the cache never
// answers for an input it was not computed for.
func TestDecisionCacheAgreesWithEvaluation(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t).Current()
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	routes := []func(*Input){sendEmail, shellExec, dbWrite, llmRoute, func(*Input) {}}
	hits := 0
	ctx := context.Background()
	for i := range 4000 {
		in := baseInput()
		routes[rng.IntN(len(routes))](in)
		in.Agent.Known = rng.IntN(10) > 0
		in.Agent.Authenticated = rng.IntN(10) > 0
		in.Agent.ToolAllowed = rng.IntN(8) > 0
		in.Token.Present = rng.IntN(10) > 0
		in.Token.SingleUse = rng.IntN(3) == 0
		in.Token.JTI = fmt.Sprintf("jti-%d", i) // per call: must not matter
		in.Token.PolicyVersion = pick("v1.0", "v0.1", "v0.0", "")
		in.Request.ID = fmt.Sprintf("req-%d", i)
		in.Risk.Total = float64(rng.IntN(25)) / 10 // 1.5 and 2.0 land on the thresholds
		in.Agent.Approval = []float64{1.5, 1.2, 0}[rng.IntN(3)]
		in.Agent.Halt = []float64{2.0, 1.5, 2.4}[rng.IntN(3)]
		in.Budget.Exceeded = pick("", "", "", "max_tool_calls")
		in.UntrustedContext = rng.IntN(4) == 0
		in.Plan.Protocol = rng.IntN(6) == 0
		in.Approval = Approval{}
		if rng.IntN(5) == 0 {
			in.Approval = Approval{ID: "apr-" + pick("1", "2"), Present: true, Valid: rng.IntN(2) == 0, Status: "approved"}
		}
		if rng.IntN(3) == 0 {
			withFindings(pick("secret", "pii", "injection", "destination", "sensitive", "size"))(in)
		}
		if rng.IntN(4) == 0 {
			in.Provenance = []plan.Provenance{{SourceType: pick("memory", "web", "user"), SourceName: "s", TrustLevel: pick("unverified", "internal", "untrusted")}}
		}
		if rng.IntN(4) == 0 {
			in.Run.Facts = []string{pick("read:internal", "untrusted", "finding:injection")}
		}
		// Twice: the second call differs only in per-call values the
		// policy does not read, so it must be a hit with the same answer.
		for round := range 2 {
			if round == 1 {
				in.Token.JTI, in.Request.ID, in.Time.NowNS = "jti-again", "req-again", in.Time.NowNS+1
				// Another risk on the same side of both thresholds (the
				// next run step): compared only, so the same key.
				if in.Risk.Total != in.Agent.Approval && in.Risk.Total != in.Agent.Halt {
					in.Risk.Total += 0.01
					if (in.Risk.Total > in.Agent.Approval) != (in.Risk.Total-0.01 > in.Agent.Approval) ||
						(in.Risk.Total > in.Agent.Halt) != (in.Risk.Total-0.01 > in.Agent.Halt) {
						in.Risk.Total -= 0.01
					}
				}
			}
			cp := *in
			_, cached := b.cache.get(b.cache.key(mustValue(t, in)))
			got, err := b.Eval(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			want, err := b.eval(ctx, rego.EvalParsedInput(mustValue(t, &cp)))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("input %d (cached %v): decision differs (-evaluated +cached engine):\n%s", i, cached, diff)
			}
			if cached {
				hits++
			} else if round == 1 {
				t.Fatalf("input %d: a call differing only in jti, request id, time and risk within its thresholds missed the cache", i)
			}
		}
	}
	if hits < 4000 {
		t.Errorf("%d hits in 8000: the test did not exercise the cache", hits)
	}
}

func mustValue(t *testing.T, in *Input) ast.Value {
	t.Helper()
	in.Derive()
	v, err := inputValue(in, false)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestDecisionCacheReturnsCopies: a caller changing a returned decision
// cannot change what the next hit returns.
func TestDecisionCacheReturnsCopies(t *testing.T) {
	t.Parallel()
	e := newEmbedded(t)
	in := baseInput()
	dbWrite(in)
	in.Token.SingleUse = true
	d1, err := e.Eval(context.Background(), in)
	if err != nil || d1.Obligations["consume_jti"] != true {
		t.Fatalf("%+v %v", d1, err)
	}
	d1.Reasons[0].Code = "tampered"
	d1.Obligations["consume_jti"] = nil
	d2, err := e.Eval(context.Background(), baseInputLike(in))
	if err != nil || d2.Reasons[0].Code == "tampered" || d2.Obligations["consume_jti"] != true {
		t.Fatalf("second decision changed by the first's caller: %+v", d2)
	}
}

func baseInputLike(in *Input) *Input {
	cp := *in
	cp.Token.JTI = "another"
	return &cp
}

// TestComparedPaths: a path's value leaves the cache key for the signs of its
// comparisons only when every use of it is a comparison with a constant; any
// other use — a value, a function argument, unification, an import, a with,
// a deeper path, a data operand — keeps the value in the key.
func TestComparedPaths(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		body string
		want map[string]string // path → its operands; absent: value kept
	}{
		"two paths":          {"x if input.r > input.s\ny if input.r <= input.t", map[string]string{"input.r": "input.s input.t", "input.s": "input.r", "input.t": "input.r"}},
		"negated":            {"x if not input.r == input.s", map[string]string{"input.r": "input.s", "input.s": "input.r"}},
		"literal":            {"x if input.r > 1\ny if input.r <= 3", nil},
		"flag":               {"x if input.r == true", nil},
		"assigned too":       {"x if input.r > 1\ny := input.r", nil},
		"with on comparison": {"x if input.r > 1 with input.r as 0", nil},
		"with elsewhere":     {"x if y with input.r as 0\ny if input.r > 1", nil},
		"function argument":  {"f(v) if v > 1\nx if f(input.r)", nil},
		"unification":        {"x if input.r = 1", nil},
		"import":             {"import input.r as q\n\nx if q > 1\ny if input.r > 1", nil},
		"nested call":        {"x if abs(input.r) > 1", nil},
		"data operand":       {"x if input.r > data.t", nil},
		"deeper path":        {"x if input.r > 1\ny if input.r.z > 1", nil},
		"in a collection":    {"x if {\n\tsome v in [input.r]\n\tv > 1\n}", nil},
		"count":              {"x if count(input.r) > 1", nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := ast.ParseModuleWithOpts("p.rego", "package aisecops.authz\n\nimport rego.v1\n\n"+tc.body+"\n", ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				t.Fatal(err)
			}
			c := newDecisionCache([]*ast.Module{m})
			if c == nil {
				t.Fatal("not cacheable")
			}
			got := map[string]string{}
			for i, p := range c.paths {
				if c.cmp[i] == nil {
					continue
				}
				var ops []string
				for _, o := range c.cmp[i] {
					ops = append(ops, o.String())
				}
				got[p.String()] = strings.Join(ops, " ")
			}
			if tc.want == nil {
				tc.want = map[string]string{}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("compared paths of\n%s\n(-want +got):\n%s", tc.body, diff)
			}
		})
	}
}
