package suite

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// ChainOptions bound a simulation.
type ChainOptions struct {
	// MaxSteps is how long a chain runs before it is reported unstopped
	// (default 100).
	MaxSteps int
	// MaxBudgetCalls is the most calls a budget check makes; a budget that
	// needs more is reported as not checked (default 5000).
	MaxBudgetCalls int
}

// ChainReport is, per agent of a routes file, where approval and halt fall
// along generated escalating chains, and whether each budget refuses exactly
// the call that crosses it.
type ChainReport struct {
	Routes        string        `json:"routes"`
	PolicyVersion string        `json:"policy_version"`
	PolicyHash    string        `json:"policy_hash"`
	Agents        []AgentChains `json:"agents"`
	Problems      int           `json:"problems"`
}

// OK reports whether every chain stopped and every budget held at its boundary.
func (r *ChainReport) OK() bool { return r.Problems == 0 }

// AgentChains is one agent's chains and budget checks.
type AgentChains struct {
	Agent      string            `json:"agent"`
	Thresholds config.Thresholds `json:"thresholds"`
	Chains     []ChainResult     `json:"chains"`
	Budgets    []BudgetCheck     `json:"budgets"`
}

// ChainResult is one generated chain: each step's answer, the first step that
// needed approval (a reviewer then approves it and the chain goes on), and the
// step that stopped the run.
type ChainResult struct {
	Name     string      `json:"name"`
	Kind     string      `json:"kind"` // read_then_send, read_then_exec, repeated_send
	Steps    []ChainStep `json:"steps"`
	Approval *Point      `json:"approval,omitempty"`
	Halt     *Point      `json:"halt,omitempty"`
	// Problem is set when the chain ran MaxSteps steps without being stopped.
	Problem string `json:"problem,omitempty"`
}

// ChainStep is one step of a chain. Approved: it was allowed on a reviewer's
// approval of its first answer, require_approval.
type ChainStep struct {
	Step     int     `json:"step"`
	Tool     string  `json:"tool"`
	Outcome  Outcome `json:"outcome"`
	Approved bool    `json:"approved,omitempty"`
}

// Point is where something fell along a chain.
type Point struct {
	Step      int      `json:"step"`
	Tool      string   `json:"tool"`
	RiskTotal float64  `json:"risk_total"`
	Reasons   []string `json:"reasons"`
}

// BudgetCheck is one budget's boundary: the call before the crossing one must
// be allowed and the crossing one denied with budget_exceeded.
type BudgetCheck struct {
	Budget   string   `json:"budget"`
	Limit    string   `json:"limit"`
	Tool     string   `json:"tool,omitempty"`
	Crossing int      `json:"crossing_call,omitempty"` // the number of the call that crosses it
	Before   *Outcome `json:"before,omitempty"`
	Denied   *Outcome `json:"crossing,omitempty"`
	Pass     bool     `json:"pass"`
	Problem  string   `json:"problem,omitempty"`
	Skipped  string   `json:"skipped,omitempty"`
}

// Simulate generates, for every agent of f, escalating chains from its
// allowed tools (an internal read then each external send; a read then each
// exec; each external send repeated) and runs them, approving every approval
// request, until the run is stopped; then checks every budget the agent has at
// its boundary. Each chain and each budget check runs on its own fresh store.
func Simulate(ctx context.Context, h *Harness, f *config.File, routesName string, opts ChainOptions) (*ChainReport, error) {
	if opts.MaxSteps <= 0 {
		opts.MaxSteps = 100
	}
	if opts.MaxBudgetCalls <= 0 {
		opts.MaxBudgetCalls = 5000
	}
	rep := &ChainReport{Routes: routesName, PolicyVersion: h.PolicyVersion(), PolicyHash: h.PolicyHash()}
	for _, a := range f.Agents {
		ac := AgentChains{Agent: a.ID, Thresholds: a.Thresholds}
		tools := allowedTools(f, a)
		for _, spec := range chainSpecs(tools) {
			cr, err := runChain(ctx, h, f, a, spec, opts.MaxSteps)
			if err != nil {
				return nil, fmt.Errorf("agent %s: chain %s: %w", a.ID, spec.name, err)
			}
			if cr.Problem != "" {
				rep.Problems++
			}
			ac.Chains = append(ac.Chains, cr)
		}
		checks, err := budgetChecks(ctx, h, f, a, tools, opts.MaxBudgetCalls)
		if err != nil {
			return nil, fmt.Errorf("agent %s: budgets: %w", a.ID, err)
		}
		for _, c := range checks {
			if !c.Pass && c.Skipped == "" {
				rep.Problems++
			}
		}
		ac.Budgets = checks
		rep.Agents = append(rep.Agents, ac)
	}
	return rep, nil
}

// allowedTools are the agent's tools in the order of its allowed_tools.
func allowedTools(f *config.File, a config.Agent) []config.Tool {
	var out []config.Tool
	for _, name := range a.AllowedTools {
		if t, ok := f.Tool(name); ok {
			out = append(out, t)
		}
	}
	return out
}

type chainSpec struct {
	name, kind string
	first      *config.Tool // the read the chain opens with, if any
	repeat     config.Tool  // then this tool, until the run is stopped
}

// chainSpecs are the escalating chains an agent's tools allow. The opening
// read is the agent's read of the most trusted destination, since a read of
// internal data is what the escalation rules raise a later send or exec for.
func chainSpecs(tools []config.Tool) []chainSpec {
	var read *config.Tool
	rank := map[string]int{config.TrustInternal: 0, config.TrustNeutral: 1, config.TrustUntrusted: 2}
	for i, t := range tools {
		if t.Class == config.ClassRead && (read == nil || rank[t.Trust] < rank[read.Trust]) {
			read = &tools[i]
		}
	}
	var out []chainSpec
	for _, t := range tools {
		if read != nil && t.Class == config.ClassExternalSend {
			out = append(out, chainSpec{name: read.Name + " → " + t.Name, kind: "read_then_send", first: read, repeat: t})
		}
	}
	for _, t := range tools {
		if read != nil && t.Class == config.ClassExec {
			out = append(out, chainSpec{name: read.Name + " → " + t.Name, kind: "read_then_exec", first: read, repeat: t})
		}
	}
	for _, t := range tools {
		if t.Class == config.ClassExternalSend {
			out = append(out, chainSpec{name: t.Name + " repeated", kind: "repeated_send", repeat: t})
		}
	}
	return out
}

func runChain(ctx context.Context, h *Harness, f *config.File, a config.Agent, spec chainSpec, maxSteps int) (ChainResult, error) {
	cr := ChainResult{Name: spec.name, Kind: spec.kind}
	s, err := h.session(f)
	if err != nil {
		return cr, err
	}
	for i := 1; i <= maxSteps; i++ {
		t := spec.repeat
		if spec.first != nil && i == 1 {
			t = *spec.first
		}
		c := simCall(a.ID, t, "sim-chain", i)
		out, err := s.do(ctx, c)
		if err != nil {
			return cr, err
		}
		step := ChainStep{Step: i, Tool: t.Name, Outcome: out}
		if out.Decision == policy.RequireApproval {
			if cr.Approval == nil {
				cr.Approval = &Point{Step: i, Tool: t.Name, RiskTotal: out.RiskTotal, Reasons: out.Reasons}
			}
			c.approved = true
			if out, err = s.do(ctx, c); err != nil {
				return cr, err
			}
			step.Outcome, step.Approved = out, true
		}
		cr.Steps = append(cr.Steps, step)
		if out.Decision != policy.Allow {
			cr.Halt = &Point{Step: i, Tool: t.Name, RiskTotal: out.RiskTotal, Reasons: out.Reasons}
			return cr, nil
		}
	}
	cr.Problem = fmt.Sprintf("not stopped after %d steps: no halt threshold or budget bounds this chain", maxSteps)
	return cr, nil
}

// simCall is step i of a generated chain or budget check on t: arguments
// that name an allowed destination where the tool takes one, so the call is
// refused for its place in the run and not for where it goes.
func simCall(agent string, t config.Tool, run string, i int) call {
	args := map[string]any{"note": fmt.Sprintf("aisecops simulate step %d", i)}
	if len(t.DestinationArgs) > 0 && len(t.Destinations) > 0 {
		args[t.DestinationArgs[0]] = destinationValue(t.DestinationArgs[0], t.Destinations[0], i)
	}
	js, _ := json.Marshal(args) // a map of strings always marshals
	return call{agent: agent, tool: t.Name, run: run, args: js}
}

// destinationValue is a value of argument arg that dest allows: a channel or
// handle as is, a URL on the host for a URL-like argument, else an address.
func destinationValue(arg, dest string, i int) string {
	switch {
	case strings.HasPrefix(dest, "#"), strings.HasPrefix(dest, "@"):
		return dest
	case strings.Contains(strings.ToLower(arg), "url"), strings.Contains(strings.ToLower(arg), "uri"),
		strings.Contains(strings.ToLower(arg), "endpoint"):
		return "https://" + strings.TrimPrefix(dest, "*.") + "/"
	}
	return fmt.Sprintf("sim%d@%s", i, strings.TrimPrefix(dest, "*."))
}

// budgetCase is one budget to check: the agent with that budget alone, the
// tool that spends it, and the number of the call that crosses it.
type budgetCase struct {
	name, limit string
	tool        *config.Tool
	none        string // why there is no tool, when tool is nil
	agent       config.Agent
	crossing    int
	freshRuns   bool          // agent window budgets: one run per call
	wait        time.Duration // max_execution_time: call 2 at the limit, call 3 past it
}

// budgetChecks finds the boundary of each budget of a. Each check runs with
// the agent's thresholds lifted and its other budgets off, so the budget under
// test is what stops the run and not risk or another budget.
func budgetChecks(ctx context.Context, h *Harness, f *config.File, a config.Agent, tools []config.Tool, maxCalls int) ([]BudgetCheck, error) {
	plain := pick(tools, func(config.Tool) bool { return true })
	costly := pick(tools, func(t config.Tool) bool { return t.Cost > 0 })
	writer := pick(tools, func(t config.Tool) bool { return t.Class == config.ClassWrite })
	const noCost, noWrite = "the agent may call no tool with a cost", "the agent may call no write tool"
	only := func(b config.Budgets, ab config.AgentBudgets) config.Agent {
		x := a
		x.Budgets, x.AgentBudgets = b, ab
		x.Thresholds = config.Thresholds{Approval: 1e9, Halt: 1e9}
		return x
	}
	b, ab := a.Budgets, a.AgentBudgets
	window := time.Duration(ab.Window).String()
	var cases []budgetCase
	if b.MaxToolCalls > 0 {
		cases = append(cases, budgetCase{name: "max_tool_calls", limit: fmt.Sprint(b.MaxToolCalls), tool: plain,
			agent: only(config.Budgets{MaxToolCalls: b.MaxToolCalls}, config.AgentBudgets{}), crossing: int(b.MaxToolCalls) + 1})
	}
	if b.MaxWriteOperations > 0 {
		cases = append(cases, budgetCase{name: "max_write_operations", limit: fmt.Sprint(b.MaxWriteOperations), tool: writer, none: noWrite,
			agent: only(config.Budgets{MaxWriteOperations: b.MaxWriteOperations}, config.AgentBudgets{}), crossing: int(b.MaxWriteOperations) + 1})
	}
	if b.MaxCost > 0 {
		cases = append(cases, budgetCase{name: "max_cost", limit: fmt.Sprint(b.MaxCost), tool: costly, none: noCost,
			agent: only(config.Budgets{MaxCost: b.MaxCost}, config.AgentBudgets{}), crossing: costCalls(b.MaxCost, costly)})
	}
	if b.MaxExecutionTime > 0 {
		cases = append(cases, budgetCase{name: "max_execution_time", limit: time.Duration(b.MaxExecutionTime).String(), tool: plain,
			agent: only(config.Budgets{MaxExecutionTime: b.MaxExecutionTime}, config.AgentBudgets{}), crossing: 3, wait: time.Duration(b.MaxExecutionTime)})
	}
	if ab.MaxToolCalls > 0 {
		cases = append(cases, budgetCase{name: "agent_budgets.max_tool_calls", limit: fmt.Sprintf("%d per %s", ab.MaxToolCalls, window), tool: plain, freshRuns: true,
			agent: only(config.Budgets{}, config.AgentBudgets{Window: ab.Window, MaxToolCalls: ab.MaxToolCalls}), crossing: int(ab.MaxToolCalls) + 1})
	}
	if ab.MaxCost > 0 {
		cases = append(cases, budgetCase{name: "agent_budgets.max_cost", limit: fmt.Sprintf("%v per %s", ab.MaxCost, window), tool: costly, none: noCost, freshRuns: true,
			agent: only(config.Budgets{}, config.AgentBudgets{Window: ab.Window, MaxCost: ab.MaxCost}), crossing: costCalls(ab.MaxCost, costly)})
	}
	var out []BudgetCheck
	for _, c := range cases {
		bc := BudgetCheck{Budget: c.name, Limit: c.limit}
		switch {
		case c.tool == nil:
			bc.Skipped = c.none
			if bc.Skipped == "" {
				bc.Skipped = "the agent may call no tool"
			}
		case c.crossing > maxCalls:
			bc.Skipped = fmt.Sprintf("crossing it takes %d calls (more than %d)", c.crossing, maxCalls)
		default:
			var err error
			if bc, err = boundary(ctx, h, withAgent(f, c.agent), c); err != nil {
				return nil, err
			}
		}
		out = append(out, bc)
	}
	return out, nil
}

// boundary makes the calls of c on a fresh store: every call before the
// crossing one must be allowed, the crossing one denied with budget_exceeded.
func boundary(ctx context.Context, h *Harness, f *config.File, c budgetCase) (BudgetCheck, error) {
	bc := BudgetCheck{Budget: c.name, Limit: c.limit, Tool: c.tool.Name, Crossing: c.crossing}
	s, err := h.session(f)
	if err != nil {
		return bc, err
	}
	for i := 1; i <= c.crossing; i++ {
		run := "sim-budget"
		if c.freshRuns {
			run = fmt.Sprintf("sim-budget-%d", i)
		}
		switch {
		case c.wait > 0 && i == 2:
			s.advance(c.wait)
		case c.wait > 0 && i > 2:
			s.advance(time.Second)
		}
		o, err := s.do(ctx, simCall(c.agent.ID, *c.tool, run, i))
		if err != nil {
			return bc, err
		}
		if i < c.crossing {
			if o.Decision != policy.Allow {
				bc.Problem = fmt.Sprintf("call %d of %d, before the budget is spent, was answered %s %s", i, c.crossing-1, o.Decision, codes(o.Reasons))
				bc.Denied = &o
				return bc, nil
			}
			bc.Before = &o
			continue
		}
		bc.Denied = &o
		if o.Decision != policy.Deny || !slices.Contains(o.Reasons, string(reason.BudgetExceeded)) {
			bc.Problem = fmt.Sprintf("call %d crosses the budget but was answered %s %s, not deny [budget_exceeded]", i, o.Decision, codes(o.Reasons))
		}
	}
	bc.Pass = bc.Problem == ""
	return bc, nil
}

// pick is the first tool that ok accepts, model calls last (they need a model
// request body and are the least representative of a budget).
func pick(tools []config.Tool, ok func(config.Tool) bool) *config.Tool {
	var llm *config.Tool
	for i, t := range tools {
		if !ok(t) {
			continue
		}
		if t.Class == config.ClassLLM {
			if llm == nil {
				llm = &tools[i]
			}
			continue
		}
		return &tools[i]
	}
	return llm
}

// costCalls is the number of the call of t that crosses a cost budget:
// the first whose cost brings the total over limit, in the store's micro-units.
func costCalls(limit float64, t *config.Tool) int {
	if t == nil {
		return 0
	}
	per := config.Micros(t.Cost)
	if per <= 0 {
		return 0
	}
	return int(config.Micros(limit)/per) + 1
}

// withAgent is f with a replaced by x.
func withAgent(f *config.File, x config.Agent) *config.File {
	g := *f
	g.Agents = slices.Clone(f.Agents)
	for i := range g.Agents {
		if g.Agents[i].ID == x.ID {
			g.Agents[i] = x
		}
	}
	return &g
}

// WriteText writes the simulation for a reader: per agent, where approval and
// halt fall on each chain, and each budget's boundary.
func (r *ChainReport) WriteText(w io.Writer) error {
	p := &printer{w: w}
	p.f("routes %s, policy %s (%s)\n", r.Routes, r.PolicyVersion, short(r.PolicyHash))
	for _, a := range r.Agents {
		p.f("\nagent %s (approval %g, halt %g)\n", a.Agent, a.Thresholds.Approval, a.Thresholds.Halt)
		if len(a.Chains) == 0 {
			p.f("  chains: none (no external send or exec tool)\n")
		}
		for _, c := range a.Chains {
			p.f("  chain %s\n", c.Name)
			if c.Approval != nil {
				p.f("      approval at step %d (%s), R_total %.3f %s\n", c.Approval.Step, c.Approval.Tool, c.Approval.RiskTotal, codes(c.Approval.Reasons))
			} else {
				p.f("      approval: none before the stop\n")
			}
			switch {
			case c.Halt != nil:
				p.f("      stopped at step %d (%s), R_total %.3f %s\n", c.Halt.Step, c.Halt.Tool, c.Halt.RiskTotal, codes(c.Halt.Reasons))
			default:
				p.f("      FAIL %s\n", c.Problem)
			}
		}
		if len(a.Budgets) == 0 {
			p.f("  budgets: none set\n")
		}
		for _, b := range a.Budgets {
			switch {
			case b.Skipped != "":
				p.f("  budget %s = %s: not checked: %s\n", b.Budget, b.Limit, b.Skipped)
			case b.Pass:
				p.f("  budget %s = %s: PASS call %d of %s denied %s, call %d allowed\n", b.Budget, b.Limit, b.Crossing, b.Tool,
					codes(b.Denied.Reasons), b.Crossing-1)
			default:
				p.f("  budget %s = %s: FAIL %s\n", b.Budget, b.Limit, b.Problem)
			}
		}
	}
	p.f("\n%d problems\n", r.Problems)
	return p.err
}

// WriteJSON writes the simulation as one JSON document.
func (r *ChainReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
