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
	v := obj(
		item("time", obj(
			item("now_ns", intNum(in.Time.NowNS)),
			item("rfc3339", ast.String(in.Time.RFC3339)),
		)),
		item("request", obj(
			item("id", ast.String(in.Request.ID)),
			item("method", ast.String(in.Request.Method)),
			item("host", ast.String(in.Request.Host)),
			item("path", ast.String(in.Request.Path)),
			item("dry_run", ast.Boolean(in.Request.DryRun)),
			item("explain", ast.Boolean(in.Request.Explain)),
		)),
		item("route", c.route(&in.Route)),
		item("agent", c.agent(&in.Agent)),
		item("plan", c.plan(&in.Plan, args)),
		item("token", c.token(&in.Token)),
		item("provenance", provenanceValue(in.Provenance)),
		item("untrusted_context", ast.Boolean(in.UntrustedContext)),
		item("risk", c.risk(&in.Risk)),
		item("budget", c.budget(&in.Budget)),
		item("run", c.run(&in.Run)),
		item("approval", approvalValue(&in.Approval)),
		item("findings", findingsValue(in.Findings)),
		item("finding_classes", findingClassesValue(in.FindingClasses)),
	)
	if c.err != nil {
		return nil, c.err
	}
	return v, nil
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

func obj(items ...kv) ast.Object {
	terms := make([][2]*ast.Term, 0, len(items))
	for _, it := range items {
		if it.v == nil {
			continue // omitempty
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

// num converts a float to a Rego number with the text encoding/json would use.
func (c *converter) num(field string, f float64) ast.Value {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		if c.err == nil {
			c.err = fmt.Errorf("%s: non-finite number", field)
		}
		return ast.Number("0")
	}
	return ast.Number(formatFloat(f))
}

// formatFloat formats f as encoding/json does, so the policy input and the
// audit record's JSON carry the same number text.
func formatFloat(f float64) string {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b := strconv.AppendFloat(make([]byte, 0, 24), f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return string(b)
}

func intNum(i int64) ast.Value { return ast.Number(strconv.FormatInt(i, 10)) }

func strOmit(s string) ast.Value {
	if s == "" {
		return nil
	}
	return ast.String(s)
}

func stringArray(ss []string) ast.Value {
	terms := make([]*ast.Term, len(ss))
	for i, s := range ss {
		terms[i] = ast.StringTerm(s)
	}
	return ast.NewArray(terms...)
}

func (c *converter) route(r *plan.Route) ast.Value {
	var mcp ast.Value
	if len(r.MCPTools) > 0 {
		mcp = stringArray(r.MCPTools)
	}
	return obj(
		item("tool", ast.String(r.Tool)),
		item("tool_class", ast.String(r.ToolClass)),
		item("base_risk", c.num("route.base_risk", r.BaseRisk)),
		item("trust", ast.String(r.Trust)),
		item("cost", c.num("route.cost", r.Cost)),
		item("route_version", ast.String(r.RouteVersion)),
		item("mcp_tools", mcp),
	)
}

func (c *converter) agent(a *Agent) ast.Value {
	return obj(
		item("id", ast.String(a.ID)),
		item("known", ast.Boolean(a.Known)),
		item("authenticated", ast.Boolean(a.Authenticated)),
		item("tool_allowed", ast.Boolean(a.ToolAllowed)),
		item("allowed_tools", stringArray(a.AllowedTools)),
		item("approval_threshold", c.num("agent.approval_threshold", a.Approval)),
		item("halt_threshold", c.num("agent.halt_threshold", a.Halt)),
	)
}

func (c *converter) plan(p *Plan, args ast.Value) ast.Value {
	return obj(
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

func (c *converter) token(t *Token) ast.Value {
	var maxRows, maxCost, exp, single ast.Value
	if t.MaxRows != nil {
		maxRows = intNum(*t.MaxRows)
	}
	if t.MaxCost != nil {
		maxCost = c.num("token.max_cost", *t.MaxCost)
	}
	if t.ExpiresNS != 0 {
		exp = intNum(t.ExpiresNS)
	}
	if t.SingleUse {
		single = ast.Boolean(true)
	}
	return obj(
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

func provenanceValue(ps []plan.Provenance) ast.Value {
	terms := make([]*ast.Term, len(ps))
	for i := range ps {
		p := &ps[i]
		terms[i] = ast.NewTerm(obj(
			item("source_type", ast.String(p.SourceType)),
			item("source_name", ast.String(p.SourceName)),
			item("trust_level", ast.String(p.TrustLevel)),
			item("source_hash", strOmit(p.SourceHash)),
		))
	}
	return ast.NewArray(terms...)
}

func (c *converter) risk(r *Risk) ast.Value {
	var esc ast.Value
	if len(r.Escalations) > 0 {
		esc = stringArray(r.Escalations)
	}
	return obj(
		item("r_step", c.num("risk.r_step", r.RStep)),
		item("e", c.num("risk.e", r.E)),
		item("t", c.num("risk.t", r.T)),
		item("b", c.num("risk.b", r.B)),
		item("step", c.num("risk.step", r.Step)),
		item("linked", c.num("risk.linked", r.Linked)),
		item("total_before", c.num("risk.total_before", r.TotalBefore)),
		item("total", c.num("risk.total", r.Total)),
		item("escalations", esc),
	)
}

func (c *converter) budget(b *Budget) ast.Value {
	keys := make([]string, 0, len(b.Consumption))
	for k := range b.Consumption {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	cons := make([][2]*ast.Term, len(keys))
	for i, k := range keys {
		cons[i] = [2]*ast.Term{ast.StringTerm(k), ast.NewTerm(c.num("budget.consumption."+k, b.Consumption[k]))}
	}
	return obj(
		item("consumption", ast.NewObject(cons...)),
		item("exceeded", ast.String(b.Exceeded)),
	)
}

func (c *converter) run(r *Run) ast.Value {
	return obj(
		item("id", ast.String(r.ID)),
		item("tool_calls", intNum(r.ToolCalls)),
		item("write_operations", intNum(r.WriteOps)),
		item("cost", c.num("run.cost", r.Cost)),
		item("facts", stringArray(r.Facts)),
		item("elapsed_ns", intNum(r.ElapsedNS)),
		item("agent_tool_calls", intNum(r.AgentToolCalls)),
		item("agent_cost", c.num("run.agent_cost", r.AgentCost)),
		item("tainted", ast.Boolean(r.Tainted)),
		item("read_internal", ast.Boolean(r.ReadInternal)),
	)
}

func approvalValue(a *Approval) ast.Value {
	return obj(
		item("id", strOmit(a.ID)),
		item("present", ast.Boolean(a.Present)),
		item("valid", ast.Boolean(a.Valid)),
		item("status", strOmit(a.Status)),
	)
}

func findingClassesValue(m map[string]bool) ast.Value {
	items := make([]kv, 0, len(m))
	for c, v := range m {
		items = append(items, item(c, ast.Boolean(v)))
	}
	return obj(items...)
}

func findingsValue(fs []Finding) ast.Value {
	terms := make([]*ast.Term, len(fs))
	for i := range fs {
		f := &fs[i]
		terms[i] = ast.NewTerm(obj(
			item("detector", ast.String(f.Detector)),
			item("location", ast.String(f.Location)),
			item("count", intNum(int64(f.Count))),
			item("hash", ast.String(f.Hash)),
			item("class", ast.String(f.Class)),
		))
	}
	return ast.NewArray(terms...)
}
