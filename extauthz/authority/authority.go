// Package authority owns the tool permission audit of an agent release
// (AISecOps specification, section 9, and latent authority drift, section
// 22.3): what each agent may do under a routes file and a policy bundle, and
// what grew between two releases. It reads configuration and bundle files
// only; it decides nothing and runs nothing.
package authority

import (
	"fmt"
	"slices"
	"time"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Agent is what one agent may do: its tools and the limits on its runs.
type Agent struct {
	ID           string              `json:"agent"`
	Thresholds   config.Thresholds   `json:"thresholds"`
	Budgets      config.Budgets      `json:"budgets"`
	AgentBudgets config.AgentBudgets `json:"agent_budgets"`
	Workloads    []string            `json:"workloads,omitempty"`
	Tools        []Tool              `json:"tools"`
}

// Tool is one tool as an agent may call it.
type Tool struct {
	Name                  string        `json:"tool"`
	Class                 string        `json:"class"`
	BaseRisk              float64       `json:"base_risk"`
	Trust                 string        `json:"trust"`
	Cost                  float64       `json:"cost"`
	Host                  string        `json:"host"`
	PathPrefix            string        `json:"path_prefix"`
	Upstream              string        `json:"upstream"`
	Destinations          []string      `json:"destinations,omitempty"`
	DestinationArgs       []string      `json:"destination_args,omitempty"`
	MCPTools              []string      `json:"mcp_tools,omitempty"`
	TrustFirstUserMessage bool          `json:"trust_first_user_message,omitempty"`
	Grant                 *config.Grant `json:"grant,omitempty"`
}

// Of lists every agent of f with the tools it may call, in file order.
func Of(f *config.File) []Agent {
	out := make([]Agent, 0, len(f.Agents))
	for _, a := range f.Agents {
		ag := Agent{ID: a.ID, Thresholds: a.Thresholds, Budgets: a.Budgets, AgentBudgets: a.AgentBudgets, Workloads: a.Workloads}
		for _, name := range a.AllowedTools {
			t, ok := f.Tool(name)
			if !ok {
				continue // Validate rejects this; keep the report total anyway
			}
			tool := Tool{Name: t.Name, Class: t.Class, BaseRisk: t.BaseRisk, Trust: t.Trust, Cost: t.Cost,
				Host: t.Match.Host, PathPrefix: t.Match.PathPrefix, Upstream: upstream(t.Upstream),
				Destinations: t.Destinations, DestinationArgs: t.DestinationArgs, MCPTools: t.MCPTools,
				TrustFirstUserMessage: t.TrustFirstUserMessage}
			if g, ok := a.Grants[name]; ok {
				tool.Grant = &g
			}
			ag.Tools = append(ag.Tools, tool)
		}
		out = append(out, ag)
	}
	return out
}

func upstream(u config.Upstream) string {
	scheme := "http"
	if u.TLS {
		scheme = "https"
	}
	return fmt.Sprintf("%s://%s:%d", scheme, u.Address, u.Port)
}

// Change codes. Every code but the info ones is a growth of authority.
const (
	AgentAdded            = "agent_added"
	ToolAdded             = "tool_added"
	WorkloadAdded         = "workload_added"
	BudgetRaised          = "budget_raised"
	AgentBudgetRaised     = "agent_budget_raised"
	ThresholdRaised       = "threshold_raised"
	GrantWidened          = "grant_widened"
	DestinationsWidened   = "destinations_widened"
	BaseRiskLowered       = "base_risk_lowered"
	TrustRaised           = "trust_raised"
	ClassChanged          = "class_changed"
	CostLowered           = "cost_lowered"
	MCPToolsAdded         = "mcp_tools_added"
	RouteChanged          = "route_changed"
	UntrustedInputTrusted = "first_user_message_trusted"
	PolicyRuleRemoved     = "policy_rule_removed"
	PolicyRuleChanged     = "policy_rule_changed"
	PolicyDataLoosened    = "policy_data_loosened"

	// Info: authority did not grow.
	AgentRemoved  = "agent_removed"
	ToolRemoved   = "tool_removed"
	Narrowed      = "narrowed"
	PolicyChanged = "policy_changed"
)

// Growths are the change codes that widen authority.
var Growths = []string{AgentAdded, ToolAdded, WorkloadAdded, BudgetRaised, AgentBudgetRaised, ThresholdRaised,
	GrantWidened, DestinationsWidened, BaseRiskLowered, TrustRaised, ClassChanged, CostLowered, MCPToolsAdded,
	RouteChanged, UntrustedInputTrusted, PolicyRuleRemoved, PolicyRuleChanged, PolicyDataLoosened}

// Change is one difference between two releases. Agent and Tool are empty
// for what applies to every agent (the policy bundle).
type Change struct {
	Agent  string `json:"agent,omitempty"`
	Tool   string `json:"tool,omitempty"`
	Change string `json:"change"`
	Field  string `json:"field,omitempty"`
	Old    string `json:"old,omitempty"`
	New    string `json:"new,omitempty"`
	Growth bool   `json:"growth"`
	// Acknowledged names the acknowledgement that covers a growth.
	Acknowledged *Ack `json:"acknowledged,omitempty"`
}

func (c Change) String() string {
	s := c.Change
	if c.Field != "" {
		s += " " + c.Field
	}
	switch {
	case c.Old != "" && c.New != "":
		s += ": " + c.Old + " → " + c.New
	case c.New != "":
		s += ": " + c.New
	case c.Old != "":
		s += ": was " + c.Old
	}
	return s
}

// Diff lists what changed from old to new, agent by agent (in new's order,
// then the agents only old had), growths and narrowings alike. A tool's
// change shows under every agent that may call it in both releases, since
// each of them gains what the tool gains.
func Diff(old, new *config.File) []Change {
	var out []Change
	olds := map[string]Agent{}
	for _, a := range Of(old) {
		olds[a.ID] = a
	}
	for _, na := range Of(new) {
		oa, existed := olds[na.ID]
		if !existed {
			out = append(out, Change{Agent: na.ID, Change: AgentAdded, New: toolNames(na.Tools), Growth: true})
			continue
		}
		out = append(out, diffAgent(oa, na)...)
	}
	for _, oa := range Of(old) {
		if _, ok := new.Agent(oa.ID); !ok {
			out = append(out, Change{Agent: oa.ID, Change: AgentRemoved, Old: toolNames(oa.Tools)})
		}
	}
	return out
}

func toolNames(ts []Tool) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return list(names)
}

func diffAgent(o, n Agent) []Change {
	var out []Change
	add := func(tool, code, field, old, new string, growth bool) {
		if !growth {
			code = Narrowed
		}
		out = append(out, Change{Agent: n.ID, Tool: tool, Change: code, Field: field, Old: old, New: new, Growth: growth})
	}
	// Thresholds: a higher one lets a run go further before a human or a halt.
	for _, th := range []struct {
		field    string
		old, new float64
	}{{"approval", o.Thresholds.Approval, n.Thresholds.Approval}, {"halt", o.Thresholds.Halt, n.Thresholds.Halt}} {
		if th.new != th.old {
			add("", ThresholdRaised, th.field, num(th.old), num(th.new), th.new > th.old)
		}
	}
	// Budgets: zero is unlimited, the widest.
	for _, b := range []struct {
		field    string
		old, new float64
		show     func(float64) string
	}{
		{"max_tool_calls", float64(o.Budgets.MaxToolCalls), float64(n.Budgets.MaxToolCalls), num},
		{"max_write_operations", float64(o.Budgets.MaxWriteOperations), float64(n.Budgets.MaxWriteOperations), num},
		{"max_execution_time", float64(o.Budgets.MaxExecutionTime), float64(n.Budgets.MaxExecutionTime), dur},
		{"max_cost", o.Budgets.MaxCost, n.Budgets.MaxCost, num},
	} {
		if b.old != b.new {
			add("", BudgetRaised, b.field, limit(b.old, b.show), limit(b.new, b.show), looser(b.old, b.new))
		}
	}
	ob, nb := o.AgentBudgets, n.AgentBudgets
	for _, b := range []struct {
		field    string
		old, new float64
	}{{"max_tool_calls", float64(ob.MaxToolCalls), float64(nb.MaxToolCalls)}, {"max_cost", ob.MaxCost, nb.MaxCost}} {
		if b.old != b.new {
			add("", AgentBudgetRaised, b.field, limit(b.old, num), limit(b.new, num), looser(b.old, b.new))
		}
	}
	// The same allowance over a shorter window is more per hour.
	if ob.Window != nb.Window && (nb.MaxToolCalls > 0 || nb.MaxCost > 0) && (ob.MaxToolCalls > 0 || ob.MaxCost > 0) {
		add("", AgentBudgetRaised, "window", dur(float64(ob.Window)), dur(float64(nb.Window)), nb.Window < ob.Window)
	}
	for _, w := range n.Workloads {
		if !slices.Contains(o.Workloads, w) {
			add("", WorkloadAdded, "", "", w, true)
		}
	}
	oldTools := map[string]Tool{}
	for _, t := range o.Tools {
		oldTools[t.Name] = t
	}
	for _, nt := range n.Tools {
		ot, had := oldTools[nt.Name]
		if !had {
			out = append(out, Change{Agent: n.ID, Tool: nt.Name, Change: ToolAdded,
				New: fmt.Sprintf("%s, base risk %s, trust %s", nt.Class, num(nt.BaseRisk), nt.Trust), Growth: true})
			continue
		}
		out = append(out, diffTool(n.ID, ot, nt)...)
	}
	for _, ot := range o.Tools {
		if !slices.ContainsFunc(n.Tools, func(t Tool) bool { return t.Name == ot.Name }) {
			out = append(out, Change{Agent: n.ID, Tool: ot.Name, Change: ToolRemoved})
		}
	}
	return out
}

// trustRank orders trust levels: a higher rank is a lower risk multiplier.
var trustRank = map[string]int{config.TrustUntrusted: 0, config.TrustNeutral: 1, config.TrustInternal: 2}

func diffTool(agent string, o, n Tool) []Change {
	var out []Change
	add := func(code, field, old, new string, growth bool) {
		if !growth {
			code = Narrowed
		}
		out = append(out, Change{Agent: agent, Tool: n.Name, Change: code, Field: field, Old: old, New: new, Growth: growth})
	}
	if n.Class != o.Class {
		// A class decides which rules apply to the tool at all (external
		// send, exec): any move needs a human to say it is not a way out.
		add(ClassChanged, "class", o.Class, n.Class, true)
	}
	if n.BaseRisk != o.BaseRisk {
		add(BaseRiskLowered, "base_risk", num(o.BaseRisk), num(n.BaseRisk), n.BaseRisk < o.BaseRisk)
	}
	if n.Trust != o.Trust {
		add(TrustRaised, "trust", o.Trust, n.Trust, trustRank[n.Trust] > trustRank[o.Trust])
	}
	if n.Cost != o.Cost {
		add(CostLowered, "cost", num(o.Cost), num(n.Cost), n.Cost < o.Cost)
	}
	if n.Host != o.Host || n.PathPrefix != o.PathPrefix || n.Upstream != o.Upstream {
		add(RouteChanged, "route", o.Host+o.PathPrefix+" → "+o.Upstream, n.Host+n.PathPrefix+" → "+n.Upstream, true)
	}
	// Destinations: an entry added widens; with no destination argument
	// left, nothing is checked at all.
	if added := minus(n.Destinations, o.Destinations); len(added) > 0 && len(n.DestinationArgs) > 0 {
		add(DestinationsWidened, "destinations", list(o.Destinations), list(n.Destinations), true)
	} else if removed := minus(o.Destinations, n.Destinations); len(removed) > 0 && len(n.DestinationArgs) > 0 {
		add(DestinationsWidened, "destinations", list(o.Destinations), list(n.Destinations), false)
	}
	if removed := minus(o.DestinationArgs, n.DestinationArgs); len(removed) > 0 {
		add(DestinationsWidened, "destination_args", list(o.DestinationArgs), list(n.DestinationArgs), true)
	} else if added := minus(n.DestinationArgs, o.DestinationArgs); len(added) > 0 {
		add(DestinationsWidened, "destination_args", list(o.DestinationArgs), list(n.DestinationArgs), false)
	}
	if added := minus(n.MCPTools, o.MCPTools); len(added) > 0 {
		add(MCPToolsAdded, "mcp_tools", list(o.MCPTools), list(n.MCPTools), true)
	}
	if n.TrustFirstUserMessage && !o.TrustFirstUserMessage {
		add(UntrustedInputTrusted, "trust_first_user_message", "false", "true", true)
	}
	out = append(out, diffGrant(agent, n.Name, o.Grant, n.Grant)...)
	return out
}

// diffGrant compares what a token for the tool may carry. No grant is the
// widest: the tool is not narrowed at all.
func diffGrant(agent, tool string, o, n *config.Grant) []Change {
	var out []Change
	add := func(field, old, new string, growth bool) {
		code := GrantWidened
		if !growth {
			code = Narrowed
		}
		out = append(out, Change{Agent: agent, Tool: tool, Change: code, Field: field, Old: old, New: new, Growth: growth})
	}
	switch {
	case o == nil && n == nil:
		return nil
	case n == nil:
		add("grant", grantString(o), "none (not narrowed)", true)
		return out
	case o == nil:
		add("grant", "none (not narrowed)", grantString(n), false)
		return out
	}
	switch {
	case len(o.Scopes) > 0 && len(n.Scopes) == 0:
		add("scopes", list(o.Scopes), "any", true)
	case len(minus(n.Scopes, o.Scopes)) > 0:
		add("scopes", list(o.Scopes), list(n.Scopes), true)
	case len(minus(o.Scopes, n.Scopes)) > 0:
		add("scopes", list(o.Scopes), list(n.Scopes), false)
	}
	if o.MaxRows != n.MaxRows {
		add("max_rows", limit(float64(o.MaxRows), num), limit(float64(n.MaxRows), num), looser(float64(o.MaxRows), float64(n.MaxRows)))
	}
	if o.MaxCost != n.MaxCost {
		add("max_cost", limit(o.MaxCost, num), limit(n.MaxCost, num), looser(o.MaxCost, n.MaxCost))
	}
	return out
}

func grantString(g *config.Grant) string {
	return fmt.Sprintf("scopes %s, max_rows %s, max_cost %s", list(g.Scopes), limit(float64(g.MaxRows), num), limit(g.MaxCost, num))
}

// looser reports whether a limit moved from old to new is wider (0 is none).
func looser(old, new float64) bool {
	switch {
	case new == 0:
		return old != 0
	case old == 0:
		return false
	}
	return new > old
}

func limit(v float64, show func(float64) string) string {
	if v == 0 {
		return "unlimited"
	}
	return show(v)
}

func num(v float64) string { return fmt.Sprintf("%g", v) }

func dur(v float64) string { return time.Duration(v).String() }

// minus is the entries of a not in b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func list(xs []string) string {
	if len(xs) == 0 {
		return "[]"
	}
	s := "["
	for i, x := range xs {
		if i > 0 {
			s += ", "
		}
		s += x
	}
	return s + "]"
}
