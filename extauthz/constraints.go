package extauthz

import (
	"math"
	"strconv"
	"strings"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// rowArgs are the names a tool may read how many rows to return from.
var rowArgs = []string{"max_rows", "limit", "rows", "row_limit", "top_k"}

// scopeArgs are the names a tool may read the resource it acts on from.
var scopeArgs = []string{"resource", "scope", "table", "collection", "dataset", "project"}

// checkConstraints: the token's constraints and the agent's grant on the
// route's tool, checked on every value the upstream may read them from — JSON
// members at any depth of the body whatever its shape (a plan, an MCP call or
// the tool's own body), with names compared case-insensitively; the query
// string; a form body (plan.Plan.Fields). A value of the wrong type, or a
// query or form the parser cannot attribute, is a denial: what cannot be read
// unambiguously cannot be bounded.
//
// A scope is a dot-separated resource path ("project.alpha.orders"): a
// resource the call names must be the scope or under it
// ("project.alpha.orders.eu" is inside, "project.alpha.invoices" is not), and,
// when the agent's grant lists scopes, under one of them. A call that names no
// resource is not narrowed: the route already fixed the tool. Model calls are
// not narrowed (their bodies carry sampling parameters such as top_k, not
// resources).
func checkConstraints(p *plan.Plan, who *Principal) *reason.Error {
	if p.Route.ToolClass == config.ClassLLM {
		return nil
	}
	scope, grantScopes := "", who.Grant.Scopes
	var maxRows int64 = -1
	if c := who.Claims; c != nil {
		scope = c.Scope
		if c.Constraints.MaxRows != nil {
			maxRows = *c.Constraints.MaxRows
		}
	}
	if g := who.Grant.MaxRows; g > 0 && (maxRows < 0 || g < maxRows) {
		maxRows = g
	}
	var names []string
	if scope != "" || len(grantScopes) > 0 {
		names = append(names, scopeArgs...)
	}
	if maxRows >= 0 {
		names = append(names, rowArgs...)
	}
	if len(names) == 0 {
		return nil
	}
	err := p.Fields(names, func(f plan.Field) error {
		if isRowArg(f.Key) {
			return checkRows(f, maxRows)
		}
		return checkScope(f, scope, grantScopes)
	})
	return asReason(err, reason.TokenConstraint)
}

func isRowArg(key string) bool {
	for _, n := range rowArgs {
		if strings.EqualFold(key, n) {
			return true
		}
	}
	return false
}

func checkRows(f plan.Field, maxRows int64) error {
	if maxRows < 0 {
		return nil
	}
	n, ok := number(f)
	if !ok {
		return reason.New(reason.TokenConstraint, "a row-count value in the %s must be a number within the token's max_rows", f.Where)
	}
	if n > float64(maxRows) {
		return reason.New(reason.TokenConstraint, "a row-count value in the %s exceeds the allowed max_rows", f.Where)
	}
	return nil
}

// number reads a field as an upstream would coerce it: a JSON number, or a
// decimal string (a query or form value, or a lenient upstream's coercion of a
// JSON string). NaN is not a number; an infinity is above every bound.
func number(f plan.Field) (float64, bool) {
	if f.Kind != plan.FieldNumber && f.Kind != plan.FieldString {
		return 0, false
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(f.Text), 64)
	if err != nil && !math.IsInf(n, 0) {
		return 0, false
	}
	return n, !math.IsNaN(n)
}

func checkScope(f plan.Field, scope string, grantScopes []string) error {
	if f.Kind != plan.FieldString {
		return reason.New(reason.TokenScope, "a resource value in the %s must be a resource name within the token's scope", f.Where)
	}
	if scope != "" && !within(f.Text, scope) {
		return reason.New(reason.TokenScope, "a resource in the %s is outside the token's scope", f.Where)
	}
	if len(grantScopes) == 0 {
		return nil
	}
	for _, g := range grantScopes {
		if within(f.Text, g) {
			return nil
		}
	}
	return reason.New(reason.TokenScope, "a resource in the %s is outside what the agent is granted", f.Where)
}

// within reports whether resource is scope or under it.
func within(resource, scope string) bool {
	return resource == scope || strings.HasPrefix(resource, scope+".")
}
