package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// aisecops runs the command line in-process and returns its output and error
// (an error is exit status 1).
func aisecops(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCICommandsExitCodes: each command exits 1 exactly when the release must
// not ship. They keep nothing either: no key, no audit log,
// no finding key in $AISECOPS_HOME.
func TestCICommandsExitCodes(t *testing.T) {
	home := t.TempDir()
	t.Setenv("AISECOPS_HOME", home)
	oldRoutes := writeTemp(t, "old.yaml", string(config.Example()))
	newRoutes := writeTemp(t, "new.yaml", strings.Replace(strings.Replace(string(config.Example()),
		"destinations: [example.com]", "destinations: [example.com, partner.example]", 1),
		"max_tool_calls: 50", "max_tool_calls: 100", 1))
	acked := writeTemp(t, "acknowledged.yaml", `
- {agent: demo-agent, tool: send_email, change: destinations_widened, reason: partner mail}
- {agent: demo-agent, change: budget_raised, field: max_tool_calls}
`)
	failing := writeTemp(t, "failing.yaml", `
name: failing
cases:
  - name: read is not denied
    steps:
      - {agent: demo-agent, tool: db.read, expect: {decision: deny}}
`)
	junit := filepath.Join(t.TempDir(), "junit.xml")
	tests := []struct {
		args    []string
		wantErr bool
		want    string
	}{
		{[]string{"test"}, false, "15 cases: 15 passed, 0 failed"},
		{[]string{"test", failing, "--junit", junit}, true, "step 1 FAIL demo-agent db.read: want deny, got allow [allowed]"},
		{[]string{"test", "--config", newRoutes, failing}, true, "decision: want deny, got allow"},
		{[]string{"test", "--json"}, false, `"threat_classes_stopped": 5`},
		{[]string{"simulate", "chain"}, false, "0 problems"},
		{[]string{"simulate", "chain", "--config", newRoutes, "--json"}, false, `"problems": 0`},
		{[]string{"audit", "permissions", "--config", newRoutes}, false, "send_email     external_send risk 0.4"},
		{[]string{"audit", "permissions", "--config", newRoutes, "--since", oldRoutes}, true, "GROWTH demo-agent budget_raised max_tool_calls: 50 → 100"},
		{[]string{"audit", "permissions", "--config", newRoutes, "--since", oldRoutes, "--acknowledged", acked}, false, "2 acknowledged, 0 not"},
		{[]string{"audit", "permissions", "--config", oldRoutes, "--since", oldRoutes}, false, "authority grew in 0 places"},
		{[]string{"audit", "permissions", "--since", oldRoutes, "--policies-since", "../../policies"}, false, "none"},
	}
	for _, tc := range tests {
		out, err := aisecops(t, tc.args...)
		if (err != nil) != tc.wantErr {
			t.Errorf("aisecops %s: err %v, want error %v\n%s", strings.Join(tc.args, " "), err, tc.wantErr, out)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("aisecops %s: output lacks %q:\n%s", strings.Join(tc.args, " "), tc.want, out)
		}
		if strings.Contains(strings.Join(tc.args, " "), "--json") {
			var v any
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Errorf("aisecops %s: stdout is not JSON: %v", strings.Join(tc.args, " "), err)
			}
		}
	}
	data, err := os.ReadFile(junit)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil || doc.Tests != 1 || doc.Failures != 1 {
		t.Errorf("junit: %+v %v", doc, err)
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Errorf("the CI commands wrote into AISECOPS_HOME: %v", entries)
	}
}

func TestSuiteErrorsNameFileAndField(t *testing.T) {
	t.Parallel()
	bad := writeTemp(t, "bad.yaml", `
name: bad
cases:
  - name: c
    steps:
      - {agent: demo-agent, tool: db.read, expect: {decision: allow}, argumnets: {}}
`)
	_, err := aisecops(t, "test", bad)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml") || !strings.Contains(err.Error(), `unknown field "argumnets"`) {
		t.Fatalf("err %v, want the file and the field named", err)
	}
}
