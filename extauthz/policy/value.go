package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
)

// inputValue converts in to the ast.Value Rego sees as input, by hand: the
// generic path (EvalInput with a Go value) round-trips through JSON on every
// Check. The document has the field names of Input's JSON tags and mirrors their
// omitempty rules, with one deliberate difference: nil slices and maps become
// empty arrays and objects, never null, so policies iterate them without
// guards. Arguments (agent-controlled, canonical JSON from the plan stage) are
// parsed here; an empty RawMessage is the empty object. Non-finite numbers are
// an error: NaN would make every threshold comparison false.
//
// withArgs false leaves input.plan.arguments out, for bundles that cannot read
// it (see readsArguments).
func inputValue(in *Input, withArgs bool) (ast.Value, error) {
	return inputValueFor(in, withArgs, nil)
}

// inputValueFor is inputValue reduced to what w wants (nil: everything): the
// decision cache's key reads only its paths, so a Check answered from the
// cache needs only those parts built. Everything is still computed and
// checked as for the whole document — a non-finite number or malformed
// arguments anywhere are an error either way — and every value w wants is
// built by the same code as in the whole document, so the two agree at every
// path w holds (TestPartialInputKeysLikeWhole).
func inputValueFor(in *Input, withArgs bool, w *want) (ast.Value, error) {
	c := converter{}
	var args ast.Value
	if withArgs {
		var err error
		if args, err = argumentsValue(in.Plan.Arguments); err != nil {
			return nil, fmt.Errorf("plan arguments: %w", err)
		}
	} else if raw := bytes.TrimSpace(in.Plan.Arguments); len(raw) > 0 && !json.Valid(raw) {
		// Same verdict with either bundle: malformed arguments are an error.
		return nil, errors.New("plan arguments: invalid JSON")
	}
	tw, rw := w.sub("time"), w.sub("request")
	v := obj(w,
		item("time", obj(tw,
			item("now_ns", intNum(tw.sub("now_ns"), in.Time.NowNS)),
			item("rfc3339", ast.String(in.Time.RFC3339)),
		)),
		item("request", obj(rw,
			item("id", ast.String(in.Request.ID)),
			item("method", ast.String(in.Request.Method)),
			item("host", ast.String(in.Request.Host)),
			item("path", ast.String(in.Request.Path)),
			item("dry_run", ast.Boolean(in.Request.DryRun)),
			item("explain", ast.Boolean(in.Request.Explain)),
		)),
		item("route", c.route(w.sub("route"), &in.Route)),
		item("agent", c.agent(w.sub("agent"), &in.Agent)),
		item("plan", c.plan(w.sub("plan"), &in.Plan, args)),
		item("token", c.token(w.sub("token"), &in.Token)),
		item("provenance", provenanceValue(w.sub("provenance"), in.Provenance)),
		item("untrusted_context", ast.Boolean(in.UntrustedContext)),
		item("risk", c.risk(w.sub("risk"), &in.Risk)),
		item("budget", c.budget(w.sub("budget"), &in.Budget)),
		item("run", c.run(w.sub("run"), &in.Run)),
		item("approval", approvalValue(w.sub("approval"), &in.Approval)),
		item("findings", findingsValue(w.sub("findings"), in.Findings)),
		item("finding_classes", findingClassesValue(w.sub("finding_classes"), in.FindingClasses)),
	)
	if c.err != nil {
		return nil, c.err
	}
	return v, nil
}

// want is the part of the input document a reader needs: a trie of paths
// from the root. A nil *want wants everything below it; noWant nothing.
type want struct {
	none bool
	kids map[string]*want // nil: the whole subtree
}

var noWant = &want{none: true}

// sub is what w wants of its key k.
func (w *want) sub(k string) *want {
	switch {
	case w == nil || (!w.none && w.kids == nil):
		return nil
	case w.none:
		return noWant
	}
	if kw, ok := w.kids[k]; ok {
		return kw
	}
	return noWant
}

// skipped reports whether w wants nothing.
func (w *want) skipped() bool { return w != nil && w.none }

// wantPaths is the trie of refs (each starting at input). A path element
// that is not a string (an array index) wants the whole subtree above it,
// as does a path that ends: values are never built apart below it.
func wantPaths(refs []ast.Ref) *want {
	root := &want{kids: map[string]*want{}}
	for _, r := range refs {
		w := root
		for _, t := range r[1:] {
			k, ok := t.Value.(ast.String)
			if !ok || w.kids == nil {
				w.kids = nil
				break
			}
			kw := w.kids[string(k)]
			if kw == nil {
				kw = &want{kids: map[string]*want{}}
				w.kids[string(k)] = kw
			}
			w = kw
		}
		w.kids = nil // the path ends: everything below
	}
	return root
}

// argumentsValue parses canonical JSON arguments. Numbers keep their literal
// text (json.Number), as the generic path does.
func argumentsValue(raw json.RawMessage) (ast.Value, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return ast.NewObject(), nil
	}
	var x any
	if err := util.UnmarshalJSON(raw, &x); err != nil {
		return nil, err
	}
	return ast.InterfaceToValue(x)
}

type converter struct{ err error }

type kv struct {
	k string
	v ast.Value
}

func item(k string, v ast.Value) kv { return kv{k, v} }

// obj is the object of items w wants (nil: every item; noWant: none, and
// nil rather than an object). An item whose value is nil is left out
// (omitempty).
func obj(w *want, items ...kv) ast.Value {
	if w.skipped() {
		return nil
	}
	terms := make([][2]*ast.Term, 0, len(items))
	for _, it := range items {
		if it.v == nil || w.sub(it.k).skipped() {
			continue
		}
		terms = append(terms, [2]*ast.Term{keyTerm(it.k), valueTerm(it.v)})
	}
	return ast.NewObject(terms...)
}

// keyTerms holds the input's field names as terms, made once: every Check's
// input has the same keys, and OPA's own interning covers only its own
// strings. Terms are never modified once built (OPA shares its interned
// ones the same way). Bounded, though every key is this file's or a
// detector's finding class.
var (
	keyTerms     sync.Map // string → *ast.Term
	keyTermCount atomic.Int64
)

const maxKeyTerms = 1024

func keyTerm(k string) *ast.Term {
	if t, ok := keyTerms.Load(k); ok {
		return t.(*ast.Term)
	}
	t := ast.StringTerm(k)
	if keyTermCount.Add(1) <= maxKeyTerms {
		keyTerms.Store(k, t)
	}
	return t
}

// valueTerm wraps v, sharing OPA's interned terms for booleans and small
// integers rather than allocating.
func valueTerm(v ast.Value) *ast.Term {
	switch x := v.(type) {
	case ast.Boolean:
		return ast.InternedTerm(bool(x))
	case ast.Number:
		if t := ast.InternedIntNumberTermFromString(string(x)); t != nil {
			return t
		}
	}
	return ast.NewTerm(v)
}

// num converts a float to a Rego number with the text encoding/json would
// use, or nil when w wants nothing; a non-finite f is an error either way.
func (c *converter) num(w *want, field string, f float64) ast.Value {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		if c.err == nil {
			c.err = fmt.Errorf("%s: non-finite number", field)
		}
		return ast.Number("0")
	}
	if w.skipped() {
		return nil
	}
	return ast.Number(formatFloat(f))
}

// formatFloat formats f as encoding/json does, so the policy input and the
// audit record's JSON carry the same number text.
func formatFloat(f float64) string {
	return string(appendFloat(make([]byte, 0, 24), f))
}

// appendFloat appends f as encoding/json writes it.
func appendFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	start := len(b)
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		if n := len(b); n-start >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

func intNum(w *want, i int64) ast.Value {
	if w.skipped() {
		return nil
	}
	return ast.Number(strconv.FormatInt(i, 10))
}

func strOmit(s string) ast.Value {
	if s == "" {
		return nil
	}
	return ast.String(s)
}

func stringArray(w *want, ss []string) ast.Value {
	if w.skipped() {
		return nil
	}
	terms := make([]*ast.Term, len(ss))
	for i, s := range ss {
		terms[i] = ast.StringTerm(s)
	}
	return ast.NewArray(terms...)
}

func (c *converter) route(w *want, r *plan.Route) ast.Value {
	var mcp ast.Value
	if len(r.MCPTools) > 0 {
		mcp = stringArray(w.sub("mcp_tools"), r.MCPTools)
	}
	return obj(w,
		item("tool", ast.String(r.Tool)),
		item("tool_class", ast.String(r.ToolClass)),
		item("base_risk", c.num(w.sub("base_risk"), "route.base_risk", r.BaseRisk)),
		item("trust", ast.String(r.Trust)),
		item("cost", c.num(w.sub("cost"), "route.cost", r.Cost)),
		item("route_version", ast.String(r.RouteVersion)),
		item("mcp_tools", mcp),
	)
}

func (c *converter) agent(w *want, a *Agent) ast.Value {
	return obj(w,
		item("id", ast.String(a.ID)),
		item("known", ast.Boolean(a.Known)),
		item("authenticated", ast.Boolean(a.Authenticated)),
		item("tool_allowed", ast.Boolean(a.ToolAllowed)),
		item("allowed_tools", stringArray(w.sub("allowed_tools"), a.AllowedTools)),
		item("approval_threshold", c.num(w.sub("approval_threshold"), "agent.approval_threshold", a.Approval)),
		item("halt_threshold", c.num(w.sub("halt_threshold"), "agent.halt_threshold", a.Halt)),
	)
}

func (c *converter) plan(w *want, p *Plan, args ast.Value) ast.Value {
	return obj(w,
		item("source", ast.String(p.Source)),
		item("mcp_method", strOmit(p.MCPMethod)),
		item("tool", ast.String(p.Tool)),
		item("arguments", args),
		item("arguments_hash", ast.String(p.ArgumentsHash)),
		item("binding", ast.String(p.Binding)),
		item("protocol", ast.Boolean(p.Protocol)),
		item("trace_id", ast.String(p.TraceID)),
		item("run_id", ast.String(p.RunID)),
	)
}

func (c *converter) token(w *want, t *Token) ast.Value {
	var maxRows, maxCost, exp, single ast.Value
	if t.MaxRows != nil {
		maxRows = intNum(w.sub("max_rows"), *t.MaxRows)
	}
	if t.MaxCost != nil {
		maxCost = c.num(w.sub("max_cost"), "token.max_cost", *t.MaxCost)
	}
	if t.ExpiresNS != 0 {
		exp = intNum(w.sub("exp_ns"), t.ExpiresNS)
	}
	if t.SingleUse {
		single = ast.Boolean(true)
	}
	return obj(w,
		item("present", ast.Boolean(t.Present)),
		item("jti", strOmit(t.JTI)),
		item("scope", strOmit(t.Scope)),
		item("policy_version", strOmit(t.PolicyVersion)),
		item("run_id", strOmit(t.RunID)),
		item("single_use", single),
		item("max_rows", maxRows),
		item("max_cost", maxCost),
		item("exp_ns", exp),
	)
}

// provenanceValue and findingsValue are arrays: built whole, or not at all.
func provenanceValue(w *want, ps []plan.Provenance) ast.Value {
	if w.skipped() {
		return nil
	}
	terms := make([]*ast.Term, len(ps))
	for i := range ps {
		p := &ps[i]
		terms[i] = ast.NewTerm(obj(nil,
			item("source_type", ast.String(p.SourceType)),
			item("source_name", ast.String(p.SourceName)),
			item("trust_level", ast.String(p.TrustLevel)),
			item("source_hash", strOmit(p.SourceHash)),
		))
	}
	return ast.NewArray(terms...)
}

func (c *converter) risk(w *want, r *Risk) ast.Value {
	var esc ast.Value
	if len(r.Escalations) > 0 {
		esc = stringArray(w.sub("escalations"), r.Escalations)
	}
	return obj(w,
		item("r_step", c.num(w.sub("r_step"), "risk.r_step", r.RStep)),
		item("e", c.num(w.sub("e"), "risk.e", r.E)),
		item("t", c.num(w.sub("t"), "risk.t", r.T)),
		item("b", c.num(w.sub("b"), "risk.b", r.B)),
		item("step", c.num(w.sub("step"), "risk.step", r.Step)),
		item("linked", c.num(w.sub("linked"), "risk.linked", r.Linked)),
		item("total_before", c.num(w.sub("total_before"), "risk.total_before", r.TotalBefore)),
		item("total", c.num(w.sub("total"), "risk.total", r.Total)),
		item("escalations", esc),
	)
}

func (c *converter) budget(w *want, b *Budget) ast.Value {
	keys := make([]string, 0, len(b.Consumption))
	for k := range b.Consumption {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	cw := w.sub("consumption")
	cons := make([][2]*ast.Term, 0, len(keys))
	for _, k := range keys {
		// Checked whether or not it is built.
		if v := c.num(cw.sub(k), "budget.consumption."+k, b.Consumption[k]); v != nil {
			cons = append(cons, [2]*ast.Term{ast.StringTerm(k), ast.NewTerm(v)})
		}
	}
	var consumption ast.Value
	if !cw.skipped() {
		consumption = ast.NewObject(cons...)
	}
	return obj(w,
		item("consumption", consumption),
		item("exceeded", ast.String(b.Exceeded)),
	)
}

func (c *converter) run(w *want, r *Run) ast.Value {
	return obj(w,
		item("id", ast.String(r.ID)),
		item("tool_calls", intNum(w.sub("tool_calls"), r.ToolCalls)),
		item("write_operations", intNum(w.sub("write_operations"), r.WriteOps)),
		item("cost", c.num(w.sub("cost"), "run.cost", r.Cost)),
		item("facts", stringArray(w.sub("facts"), r.Facts)),
		item("elapsed_ns", intNum(w.sub("elapsed_ns"), r.ElapsedNS)),
		item("agent_tool_calls", intNum(w.sub("agent_tool_calls"), r.AgentToolCalls)),
		item("agent_cost", c.num(w.sub("agent_cost"), "run.agent_cost", r.AgentCost)),
		item("tainted", ast.Boolean(r.Tainted)),
		item("read_internal", ast.Boolean(r.ReadInternal)),
	)
}

func approvalValue(w *want, a *Approval) ast.Value {
	return obj(w,
		item("id", strOmit(a.ID)),
		item("present", ast.Boolean(a.Present)),
		item("valid", ast.Boolean(a.Valid)),
		item("status", strOmit(a.Status)),
	)
}

func findingClassesValue(w *want, m map[string]bool) ast.Value {
	if w.skipped() {
		return nil
	}
	items := make([]kv, 0, len(m))
	for c, v := range m {
		items = append(items, item(c, ast.Boolean(v)))
	}
	return obj(w, items...)
}

func findingsValue(w *want, fs []Finding) ast.Value {
	if w.skipped() {
		return nil
	}
	terms := make([]*ast.Term, len(fs))
	for i := range fs {
		f := &fs[i]
		terms[i] = ast.NewTerm(obj(nil,
			item("detector", ast.String(f.Detector)),
			item("location", ast.String(f.Location)),
			item("count", intNum(nil, int64(f.Count))),
			item("hash", ast.String(f.Hash)),
			item("class", ast.String(f.Class)),
		))
	}
	return ast.NewArray(terms...)
}
