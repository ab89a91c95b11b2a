package authority_test

import (
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/aisecops/aisecops-envoy/extauthz/authority"
	"github.com/aisecops/aisecops-envoy/policies"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

func routes(t *testing.T, edit func(string) string) *config.File {
	t.Helper()
	f, err := config.Parse("routes.yaml", []byte(edit(string(config.Example()))))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func same(s string) string { return s }

// widened is the bundled example with send_email's allowlist grown by a
// partner domain and demo-agent's call budget doubled.
func widened(s string) string {
	s = strings.Replace(s, "destinations: [example.com]", "destinations: [example.com, partner.example]", 1)
	return strings.Replace(s, "max_tool_calls: 50", "max_tool_calls: 100", 1)
}

func find(cs []authority.Change, agent, tool, change, field string) *authority.Change {
	for i, c := range cs {
		if c.Agent == agent && c.Tool == tool && c.Change == change && c.Field == field {
			return &cs[i]
		}
	}
	return nil
}

func TestAuditDetectsWidenedDestinationAndRaisedBudget(t *testing.T) {
	t.Parallel()
	in := authority.Input{Routes: routes(t, widened), RoutesName: "new.yaml", Since: routes(t, same), SinceName: "old.yaml"}
	r, err := authority.Audit(in)
	if err != nil {
		t.Fatal(err)
	}
	dest := find(r.Changes, "demo-agent", "send_email", authority.DestinationsWidened, "destinations")
	budget := find(r.Changes, "demo-agent", "", authority.BudgetRaised, "max_tool_calls")
	if dest == nil || !dest.Growth || !strings.Contains(dest.New, "partner.example") {
		t.Errorf("widened destinations not reported: %+v", r.Changes)
	}
	if budget == nil || !budget.Growth || budget.Old != "50" || budget.New != "100" {
		t.Errorf("raised budget not reported: %+v", r.Changes)
	}
	if r.OK() || r.Growths != 2 || r.Unacknowledged != 2 {
		t.Fatalf("growths=%d unacknowledged=%d ok=%v, want 2 2 false: %+v", r.Growths, r.Unacknowledged, r.OK(), r.Changes)
	}

	acks, err := authority.ParseAcks("acknowledged.yaml", []byte(`
- {agent: demo-agent, tool: send_email, change: destinations_widened, reason: "partner mail, SEC-42"}
- {agent: demo-agent, change: budget_raised, field: max_tool_calls}
- {agent: demo-agent, tool: shell.exec, change: tool_added}
`))
	if err != nil {
		t.Fatal(err)
	}
	in.Acks = acks
	if r, err = authority.Audit(in); err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Growths != 2 || len(r.Stale) != 1 || r.Stale[0].Change != authority.ToolAdded {
		t.Fatalf("acknowledged: ok=%v growths=%d stale=%+v", r.OK(), r.Growths, r.Stale)
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"GROWTH demo-agent send_email destinations_widened destinations: [example.com] → [example.com, partner.example]  [acknowledged: partner mail, SEC-42]",
		"authority grew in 2 places, 2 acknowledged, 0 not", "stale acknowledgement"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

func TestAuditEveryKindOfChange(t *testing.T) {
	t.Parallel()
	old := routes(t, func(s string) string {
		return s + `  - id: grant-agent
    allowed_tools: [db.read, send_email]
    budgets: {max_tool_calls: 10, max_cost: 1}
    agent_budgets: {window: 1h, max_tool_calls: 100}
    grants:
      db.read: {scopes: [project.alpha], max_rows: 100}
    thresholds: {approval: 1.5, halt: 2.0}
  - id: gone-agent
    allowed_tools: [db.read]
    budgets: {}
`
	})
	new := routes(t, func(s string) string {
		s = strings.Replace(s, "base_risk: 0.9", "base_risk: 0.5", 1) // shell.exec
		s = strings.Replace(s, "trust: untrusted\n    cost: 0.02", "trust: neutral\n    cost: 0.02", 1)
		return s + `  - id: grant-agent
    allowed_tools: [db.read, db.write]
    budgets: {max_tool_calls: 5}
    agent_budgets: {window: 1m, max_tool_calls: 100}
    grants:
      db.read: {scopes: [project.alpha, project.beta]}
    thresholds: {approval: 1.8, halt: 1.9}
    workloads: ["system:serviceaccount:agents:grant"]
  - id: new-agent
    allowed_tools: [shell.exec]
    budgets: {}
`
	})
	r, err := authority.Audit(authority.Input{Routes: new, RoutesName: "new", Since: old, SinceName: "old"})
	if err != nil {
		t.Fatal(err)
	}
	growth := []struct{ agent, tool, change, field string }{
		{"demo-agent", "shell.exec", authority.BaseRiskLowered, "base_risk"},
		{"demo-agent", "send_email", authority.TrustRaised, "trust"},
		{"grant-agent", "", authority.BudgetRaised, "max_cost"}, // 1 → unlimited
		{"grant-agent", "", authority.AgentBudgetRaised, "window"},
		{"grant-agent", "", authority.ThresholdRaised, "approval"},
		{"grant-agent", "", authority.WorkloadAdded, ""},
		{"grant-agent", "db.write", authority.ToolAdded, ""},
		{"grant-agent", "db.read", authority.GrantWidened, "scopes"},
		{"grant-agent", "db.read", authority.GrantWidened, "max_rows"},
		{"new-agent", "", authority.AgentAdded, ""},
	}
	for _, g := range growth {
		if c := find(r.Changes, g.agent, g.tool, g.change, g.field); c == nil || !c.Growth {
			t.Errorf("%+v not reported as growth", g)
		}
	}
	info := []struct{ agent, tool, change, field string }{
		{"grant-agent", "", authority.Narrowed, "max_tool_calls"},
		{"grant-agent", "", authority.Narrowed, "halt"},
		{"grant-agent", "send_email", authority.ToolRemoved, ""},
		{"gone-agent", "", authority.AgentRemoved, ""},
	}
	for _, g := range info {
		if c := find(r.Changes, g.agent, g.tool, g.change, g.field); c == nil || c.Growth {
			t.Errorf("%+v not reported as a narrowing", g)
		}
	}
	if r.Unacknowledged != len(growth) {
		t.Errorf("unacknowledged = %d, want %d: %+v", r.Unacknowledged, len(growth), r.Changes)
	}
}

// bundle is the bundled policy with edit applied to one file.
func bundle(t *testing.T, file string, edit func(string) string) authority.Bundle {
	t.Helper()
	m := fstest.MapFS{}
	err := fs.WalkDir(policies.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS(), p)
		if p == file {
			b = []byte(edit(string(b)))
		}
		m[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := fs.ReadFile(m, file)
	return authority.Bundle{Version: "v1.0", Hash: string(b), Files: m}
}

func TestPolicyDiff(t *testing.T) {
	t.Parallel()
	base := bundle(t, "authz.rego", same)
	tests := map[string]struct {
		b    authority.Bundle
		want []string // change field
	}{
		"deny rule removed": {bundle(t, "authz.rego", func(s string) string {
			i := strings.Index(s, "deny_reasons contains {\n\t\"code\": \"exec_after_sensitive_read\"")
			j := i + strings.Index(s[i:], "\n}\n") + 3
			return s[:i] + s[j:]
		}), []string{"policy_rule_removed aisecops.authz.deny_reasons/exec_after_sensitive_read"}},
		"helper rule edited": {bundle(t, "authz.rego", func(s string) string {
			return strings.Replace(s, "external_route if input.route.trust == \"untrusted\"", "external_route if input.route.trust == \"nobody\"", 1)
		}), []string{"policy_rule_changed aisecops.authz.external_route"}},
		"message reworded": {bundle(t, "authz.rego", func(s string) string {
			return strings.Replace(s, "execution after a read of internal data in the same run", "exec after an internal read", 1)
		}), nil},
		"data loosened": {bundle(t, "data.json", func(s string) string {
			s = strings.Replace(s, `"outbound_classes": {"external_send": true, "exec": true}`, `"outbound_classes": {"external_send": true}`, 1)
			s = strings.Replace(s, `"e": 2.0`, `"e": 1.1`, 1)
			return strings.Replace(s, `"accepted_policy_versions": ["v0.1", "v1.0"]`, `"accepted_policy_versions": ["v0.0", "v0.1", "v1.0"]`, 1)
		}), []string{"policy_data_loosened data.aisecops.outbound_classes", "policy_data_loosened data.aisecops.escalation",
			"policy_data_loosened data.aisecops.accepted_policy_versions"}},
		"data tightened": {bundle(t, "data.json", func(s string) string {
			return strings.Replace(s, `"token_max_ttl_seconds": {"exec": 300, "external_send": 300}`, `"token_max_ttl_seconds": {"exec": 60, "external_send": 300}`, 1)
		}), nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cs, err := authority.DiffPolicy(base, tc.b)
			if err != nil {
				t.Fatal(err)
			}
			var growth []string
			for _, c := range cs {
				if c.Growth {
					growth = append(growth, c.Change+" "+c.Field)
				}
			}
			slices.Sort(growth)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(growth, want) {
				t.Errorf("growths %q, want %q (all: %+v)", growth, want, cs)
			}
			if len(cs) == 0 || cs[0].Change != authority.PolicyChanged {
				t.Errorf("a changed hash is not reported first: %+v", cs)
			}
		})
	}
	if cs, err := authority.DiffPolicy(base, base); err != nil || len(cs) != 0 {
		t.Errorf("same bundle: %+v %v", cs, err)
	}
}

func TestAcknowledgedFileIsStrict(t *testing.T) {
	t.Parallel()
	for src, want := range map[string]string{
		`- {agent: a, change: tool_added, tool: t, why: x}`: `unknown field "why"`,
		`- {agent: a, change: tool_addded}`:                 `[0].change: "tool_addded" is not one of`,
		`{agent: a}`:                                        "acknowledged.yaml",
	} {
		if _, err := authority.ParseAcks("acknowledged.yaml", []byte(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", src, err, want)
		}
	}
	if acks, err := authority.ParseAcks("acknowledged.yaml", []byte("# nothing yet\n")); err != nil || len(acks) != 0 {
		t.Errorf("empty file: %v %v", acks, err)
	}
}

// FuzzParseAcks: the acknowledged file comes with the change under review.
func FuzzParseAcks(f *testing.F) {
	f.Add([]byte("- {agent: a, tool: t, change: tool_added, reason: r}"))
	f.Add([]byte("[]"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		acks, err := authority.ParseAcks("fuzz.yaml", data)
		for _, a := range acks {
			if err == nil && !slices.Contains(authority.Growths, a.Change) {
				t.Fatalf("accepted change %q", a.Change)
			}
		}
	})
}
