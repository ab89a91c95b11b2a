package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/revocation"
	"github.com/aisecops/aisecops-envoy/policies"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

func auditRecordsOf(t *testing.T, path string) []audit.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := audit.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestAuditEventRecords: each event is a record of its own in the chain,
// with who and why; text people wrote is inspected before it is written;
// a failed write is an error for the caller to act on.
func TestAuditEventRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	redact := func(s string) string { return strings.ReplaceAll(s, "4111111111111111", "[redacted]") }
	ev := &auditEvents{sink: l, redact: redact, now: time.Now, log: slog.New(slog.DiscardHandler)}
	ap := riskstore.Approval{ID: "apr_1", RunID: "run-1", AgentID: "crm-agent", Tool: "db.write", Binding: "bind", DecisionID: "d_1",
		Status: riskstore.ApprovalApproved, Why: "card 4111111111111111 is the customer's"}
	if err := ev.approval(context.Background(), ap, httpapi.Caller{Name: "alice"}, httpapi.OutcomeDecided); err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)
	if err := ev.revocation(context.Background(), revocation.Revoked{JTI: &revocation.JTI{JTI: "j1", ExpiresAt: until}, By: "root", Why: "leaked"}); err != nil {
		t.Fatal(err)
	}
	ev.routesChanged("aaa", "bbb")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifyFile(path); err != nil {
		t.Fatalf("the events break the chain: %v", err)
	}
	recs := auditRecordsOf(t, path)
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	a, r, rt := recs[0], recs[1], recs[2]
	if a.Event != audit.EventApprovalDecided || a.ApprovalID != "apr_1" || a.Decision != "approve" || a.DecidedBy != "alice" ||
		a.Why != "card [redacted] is the customer's" || a.RunID != "run-1" || a.AgentID != "crm-agent" || a.Tool != "db.write" ||
		a.Binding != "bind" || a.Detail["outcome"] != "decided" || !strings.HasPrefix(a.DecisionID, "e_") {
		t.Errorf("approval record %+v", a)
	}
	if r.Event != audit.EventRevocation || r.DecidedBy != "root" || r.Why != "leaked" || r.Detail["jti"] != "j1" || r.Detail["until"] != "2026-03-02T12:00:00Z" {
		t.Errorf("revocation record %+v", r)
	}
	if rt.Event != audit.EventRoutesVersionChanged || rt.RouteVersion != "bbb" || rt.Detail["from"] != "aaa" {
		t.Errorf("routes record %+v", rt)
	}
	if err := ev.approval(context.Background(), ap, httpapi.Caller{Name: "alice"}, httpapi.OutcomeDecided); err == nil {
		t.Fatal("a write to a closed log reported no error: the approval would take effect unaudited")
	}
}

// TestServeWritesEventRecords: the served API and the watchers write the
// event records: an approval decision, a revocation, a routes file edit and
// a policy bundle edit each add theirs to the audit log, which still verifies.
func TestServeWritesEventRecords(t *testing.T) {
	home := t.TempDir()
	routes := filepath.Join(home, "routes.yaml")
	if err := os.WriteFile(routes, config.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(home, "policies")
	if err := os.CopyFS(bundle, policies.FS()); err != nil {
		t.Fatal(err)
	}
	addrs := startCommand(t, []string{httpUp}, "serve", "--home", home, "--authz-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--config", routes, "--policies", bundle)
	admin, err := os.ReadFile(filepath.Join(home, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	g := &governed{home: home, http: addrs[httpUp]}
	post := func(path, body string) int {
		t.Helper()
		req, _ := newRequest("POST", "http://"+g.http+path, body)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(admin)))
		resp, err := httpClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post("/v1/revocations", `{"agent_id":"demo-agent","why":"compromised"}`); c != 201 {
		t.Fatalf("revoke: %d", c)
	}
	if c := post("/v1/approvals/apr_none/approve", `{"why":"x"}`); c != 404 {
		t.Fatalf("approve an unknown approval: %d", c)
	}
	if err := os.WriteFile(routes, append(config.Example(), []byte("\n# edited\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	rego := filepath.Join(bundle, "authz.rego")
	b, err := os.ReadFile(rego)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rego, append(b, []byte("\n# edited\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []string{audit.EventRevocation, audit.EventRoutesVersionChanged, audit.EventPolicyVersionChanged}
	deadline := time.Now().Add(20 * time.Second) // the watchers poll every 2 s
	for {
		seen := map[string]audit.Record{}
		for _, r := range auditRecordsOf(t, filepath.Join(home, "audit.jsonl")) {
			seen[r.Event] = r
		}
		missing := ""
		for _, w := range want {
			if _, ok := seen[w]; !ok {
				missing = w
			}
		}
		if missing == "" {
			if r := seen[audit.EventRevocation]; r.DecidedBy != "admin" || r.Why != "compromised" || r.Detail["agent_id"] != "demo-agent" {
				t.Errorf("revocation record %+v", r)
			}
			if r := seen[audit.EventPolicyVersionChanged]; r.Detail["hash"] == r.Detail["from_hash"] || r.Detail["hash"] == "" {
				t.Errorf("policy record %+v", r)
			}
			if _, ok := seen[audit.EventApprovalDecided]; ok {
				t.Error("a decision on an unknown approval was recorded")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s record", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var out bytes.Buffer
	if err := runAudit([]string{"verify", filepath.Join(home, "audit.jsonl"), "--allow-no-sidecar"}, &out, &out); err != nil {
		t.Fatalf("audit verify: %v\n%s", err, out.String())
	}
}

func newRequest(method, url, body string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(body))
}

func httpClient() *http.Client { return &http.Client{Timeout: 30 * time.Second} }
