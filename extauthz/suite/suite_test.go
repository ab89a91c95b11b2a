package suite_test

import (
	"bytes"
	"context"
	"encoding/xml"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/aisecops/aisecops-envoy/extauthz/suite"
	"github.com/aisecops/aisecops-envoy/policies"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// knownAnswer runs against the bundled routes file as is: demo-agent reads,
// then tries to mail an address outside send_email's allowlist.
const knownAnswer = `
name: known answer
cases:
  - name: read then send outside the allowlist
    steps:
      - agent: demo-agent
        tool: db.read
        arguments: {table: customers, limit: 10}
        expect: {decision: allow, reasons: [allowed]}
      - agent: demo-agent
        tool: send_email
        arguments: {to: drop@exfil.example.net, subject: s, body: b}
        expect: {decision: deny, reasons: [destination_blocked]}
  - name: token for another tool
    steps:
      - agent: demo-agent
        tool: shell.exec
        token: {tool: db.read}
        arguments: {cmd: uptime}
        expect: {decision: deny, reasons: [token_tool_mismatch]}
`

func harness(t *testing.T, policiesDir string) *suite.Harness {
	t.Helper()
	h, err := suite.New(context.Background(), policiesDir)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func bundledRoutes(t *testing.T) *config.File {
	t.Helper()
	f, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func run(t *testing.T, h *suite.Harness, suites ...*suite.Suite) *suite.Report {
	t.Helper()
	rep, err := suite.Run(context.Background(), h, bundledRoutes(t), "example.yaml", suites)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func parse(t *testing.T, name, src string) *suite.Suite {
	t.Helper()
	s, err := suite.Parse(name, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKnownAnswerSuitePasses(t *testing.T) {
	t.Parallel()
	rep := run(t, harness(t, ""), parse(t, "known.yaml", knownAnswer))
	if !rep.OK() || rep.Passed != 2 {
		var b bytes.Buffer
		rep.WriteText(&b)
		t.Fatalf("known-answer suite failed:\n%s", b.String())
	}
	if rep.Classes != nil || rep.Maturity != nil {
		t.Errorf("a suite without classes reported classes: %+v %+v", rep.Classes, rep.Maturity)
	}
}

func TestChangedExpectationFailsNamingStepAndReason(t *testing.T) {
	t.Parallel()
	changed := strings.Replace(knownAnswer, "expect: {decision: deny, reasons: [destination_blocked]}",
		"expect: {decision: allow, reasons: [allowed]}", 1)
	rep := run(t, harness(t, ""), parse(t, "changed.yaml", changed))
	if rep.OK() || rep.Failed != 1 || rep.Passed != 1 {
		t.Fatalf("passed=%d failed=%d, want 1 and 1", rep.Passed, rep.Failed)
	}
	c := rep.Suites[0].Cases[0]
	if c.Pass || c.Steps[0].Pass == false || c.Steps[1].Pass {
		t.Fatalf("want step 2 alone to fail: %+v", c.Steps)
	}
	got := strings.Join(c.Failures(), "\n")
	for _, want := range []string{"step 2", "send_email", "decision: want allow, got deny", "destination_blocked", "missing [allowed]"} {
		if !strings.Contains(got, want) {
			t.Errorf("failure %q lacks %q", got, want)
		}
	}
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "FAIL demo-agent send_email: want allow [allowed], got deny [destination_blocked]") {
		t.Errorf("text report does not show want and got:\n%s", b.String())
	}
}

func TestJUnitParsesAndCountsCases(t *testing.T) {
	t.Parallel()
	changed := strings.Replace(knownAnswer, "reasons: [token_tool_mismatch]", "reasons: [tool_not_allowed]", 1)
	rep := run(t, harness(t, ""), parse(t, "known.yaml", knownAnswer), parse(t, "changed.yaml", changed))
	var b bytes.Buffer
	if err := rep.WriteJUnit(&b); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name  string `xml:"name,attr"`
			Cases []struct {
				Name    string `xml:"name,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatalf("JUnit does not parse: %v\n%s", err, b.String())
	}
	cases, failures := 0, 0
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			cases++
			if c.Failure != nil {
				failures++
				if !strings.Contains(c.Failure.Message, "step 1") || !strings.Contains(c.Failure.Text, "tool_not_allowed") {
					t.Errorf("failure does not name the step and reason: %+v", c.Failure)
				}
			}
		}
	}
	if doc.Tests != 4 || cases != 4 || doc.Failures != 1 || failures != 1 || len(doc.Suites) != 2 {
		t.Fatalf("tests=%d cases=%d failures=%d/%d suites=%d, want 4 4 1 1 2", doc.Tests, cases, doc.Failures, failures, len(doc.Suites))
	}
}

func TestShippedThreatSuitePassesOnBundledPolicy(t *testing.T) {
	t.Parallel()
	threats, err := suite.Threats()
	if err != nil {
		t.Fatal(err)
	}
	rep := run(t, harness(t, ""), threats)
	if !rep.OK() {
		var b bytes.Buffer
		rep.WriteText(&b)
		t.Fatalf("shipped suite fails on the bundled policy:\n%s", b.String())
	}
	for _, id := range suite.ClassIDs {
		i := slices.IndexFunc(rep.Classes, func(c suite.ClassResult) bool { return c.ID == id })
		if i < 0 || !rep.Classes[i].Stopped || rep.Classes[i].Cases == 0 {
			t.Errorf("class %s not covered and stopped: %+v", id, rep.Classes)
		}
	}
	if m := rep.Maturity; m.Stopped != 5 || m.Of != 5 || m.Level != 3 {
		t.Errorf("maturity %+v, want 5/5 level 3", m)
	}
}

// weakened copies the bundled policies to a directory and cuts the deny rule
// whose code is code out of authz.rego.
func weakened(t *testing.T, code string) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(policies.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS(), p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, p), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "authz.rego")
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rule := regexp.MustCompile(`(?s)deny_reasons contains \{\n\t"code": "` + regexp.QuoteMeta(code) + `".*?\n\}\n`)
	cut := rule.ReplaceAll(src, nil)
	if bytes.Equal(cut, src) {
		t.Fatalf("rule %s not found in authz.rego", code)
	}
	if err := os.WriteFile(path, cut, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestWeakenedBundleFailsToolAbuseOnly(t *testing.T) {
	t.Parallel()
	threats, err := suite.Threats()
	if err != nil {
		t.Fatal(err)
	}
	rep := run(t, harness(t, weakened(t, "exec_after_sensitive_read")), threats)
	if rep.OK() {
		t.Fatal("the suite passed on a bundle without exec_after_sensitive_read")
	}
	for _, c := range rep.Classes {
		if c.Stopped != (c.ID != "3.2") {
			t.Errorf("class %s stopped=%v (failed %d of %d)", c.ID, c.Stopped, c.Failed, c.Cases)
		}
	}
	if m := rep.Maturity; m.Stopped != 4 || m.Level != 2 {
		t.Errorf("maturity %+v, want 4/5 level 2", m)
	}
	var failing []suite.CaseResult
	for _, c := range rep.Suites[0].Cases {
		if !c.Pass {
			failing = append(failing, c)
		}
	}
	if len(failing) != 1 || failing[0].Name != "credentials read then shell exfiltration" {
		t.Fatalf("failing cases %+v, want the credentials read then shell case alone", failing)
	}
	got := strings.Join(failing[0].Failures(), "\n")
	for _, want := range []string{"step 2 (code-agent-broad shell.exec)", "want deny, got require_approval", "missing [exec_after_sensitive_read]"} {
		if !strings.Contains(got, want) {
			t.Errorf("failures %q lack %q", got, want)
		}
	}
}

func TestSuiteDecodingIsStrict(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		src  string
		want []string
	}{
		"unknown field": {`
name: x
cases:
  - name: c
    steps:
      - agent: a
        tool: db.read
        expcet: {decision: allow}
`, []string{"strict.yaml", `unknown field "expcet"`}},
		"every problem at once": {`
name: x
cases:
  - name: c
    class: "3.9"
    steps:
      - agent: ""
        tool: db.read
        arguments: {a: 1}
        body: "{}"
        expect: {decision: maybe}
`, []string{"strict.yaml", "cases[0].class", "cases[0].steps[0].agent", "cases[0].steps[0].body", "cases[0].steps[0].expect.decision"}},
		"unknown tool in the routes file": {`
name: x
cases:
  - name: c
    steps:
      - agent: demo-agent
        tool: no.such.tool
        expect: {decision: deny}
`, []string{"strict.yaml", "cases[0].steps[0].tool", "no.such.tool"}},
		"overlay shadowed by the routes file": {`
name: x
tools:
  - {name: other.read, class: read, base_risk: 0.1, trust: internal, match: {host: db.internal, path_prefix: /}, upstream: {address: db.internal, port: 1}}
cases:
  - name: c
    steps:
      - agent: demo-agent
        tool: db.read
        expect: {decision: allow}
`, []string{"strict.yaml", "tools[0]", "other.read", "db.read"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, err := suite.Parse("strict.yaml", []byte(tc.src))
			if err == nil {
				_, err = s.Overlay(bundledRoutes(t), "example.yaml")
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// FuzzParse: a suite file comes with the change under review, so its parser
// must fail cleanly on anything.
func FuzzParse(f *testing.F) {
	f.Add([]byte(knownAnswer))
	f.Add([]byte("name: x\ncases: [{name: c, steps: [{agent: a, tool: t, expect: {decision: allow}}]}]"))
	f.Add([]byte("- not a suite"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := suite.Parse("fuzz.yaml", data)
		if err == nil && (s.Name == "" || len(s.Cases) == 0) {
			t.Fatalf("accepted a suite without name or cases: %+v", s)
		}
	})
}
