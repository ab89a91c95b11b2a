package suite_test

import (
	"context"
	"slices"
	"testing"

	"github.com/aisecops/aisecops-envoy/extauthz/suite"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

func TestSimulateChainsAndBudgets(t *testing.T) {
	t.Parallel()
	f, err := config.Parse("sim.yaml", append(config.Example(), []byte(`
  - id: loose-agent
    allowed_tools: [send_email]
    budgets: {}
    thresholds: {approval: 1000, halt: 2000}
  - id: window-agent
    allowed_tools: [db.read]
    agent_budgets: {window: 1h, max_tool_calls: 3, max_cost: 0.05}
    thresholds: {approval: 1.5, halt: 2.0}
`)...))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := suite.Simulate(context.Background(), harness(t, ""), f, "sim.yaml", suite.ChainOptions{MaxSteps: 20})
	if err != nil {
		t.Fatal(err)
	}
	agent := func(id string) suite.AgentChains {
		i := slices.IndexFunc(rep.Agents, func(a suite.AgentChains) bool { return a.Agent == id })
		if i < 0 {
			t.Fatalf("no report for %s", id)
		}
		return rep.Agents[i]
	}
	demo := agent("demo-agent")
	chain := func(a suite.AgentChains, name string) suite.ChainResult {
		i := slices.IndexFunc(a.Chains, func(c suite.ChainResult) bool { return c.Name == name })
		if i < 0 {
			t.Fatalf("%s has no chain %q: %+v", a.Agent, name, a.Chains)
		}
		return a.Chains[i]
	}
	if c := chain(demo, "db.read → shell.exec"); c.Halt == nil || c.Halt.Step != 2 || !slices.Contains(c.Halt.Reasons, "exec_after_sensitive_read") {
		t.Errorf("read → exec: %+v", c.Halt)
	}
	if c := chain(demo, "send_email repeated"); c.Approval == nil || c.Approval.Step != 2 || c.Halt == nil || c.Halt.Step != 3 ||
		!slices.Contains(c.Halt.Reasons, "risk_halt") || c.Halt.RiskTotal <= 2.0 {
		t.Errorf("repeated send: approval %+v halt %+v", c.Approval, c.Halt)
	}
	budgets := map[string]suite.BudgetCheck{}
	for _, a := range []string{"demo-agent", "window-agent"} {
		for _, b := range agent(a).Budgets {
			budgets[a+" "+b.Budget] = b
		}
	}
	for key, crossing := range map[string]int{
		"demo-agent max_tool_calls": 51, "demo-agent max_write_operations": 11, "demo-agent max_cost": 101,
		"demo-agent max_execution_time": 3, "window-agent agent_budgets.max_tool_calls": 4, "window-agent agent_budgets.max_cost": 6,
	} {
		b, ok := budgets[key]
		if !ok || !b.Pass || b.Crossing != crossing || b.Before == nil || b.Before.Decision != "allow" ||
			b.Denied == nil || !slices.Contains(b.Denied.Reasons, "budget_exceeded") {
			t.Errorf("%s: %+v, want call %d denied budget_exceeded after an allow", key, b, crossing)
		}
	}
	// An agent whose thresholds bound nothing is reported, and fails the run.
	if c := chain(agent("loose-agent"), "send_email repeated"); c.Problem == "" || c.Halt != nil {
		t.Errorf("loose agent's chain: %+v", c)
	}
	if rep.OK() || rep.Problems != 1 {
		t.Errorf("problems = %d, want 1 (the loose agent)", rep.Problems)
	}
}
