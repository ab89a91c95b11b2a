package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/runs"
)

// governed is a `serve` on the embedded default with two more API
// credentials: "ops-token" (operator) and "approver-token" (approver only).
type governed struct {
	home, http, authz string
}

func startGoverned(t *testing.T) *governed {
	t.Helper()
	home := t.TempDir()
	creds := filepath.Join(home, "api-credentials.yaml")
	body := fmt.Sprintf("- {name: ops, token_sha256: %s, roles: [operator]}\n- {name: alice, token_sha256: %s, roles: [approver]}\n",
		httpapi.TokenSHA256("ops-token"), httpapi.TokenSHA256("approver-token"))
	if err := os.WriteFile(creds, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	addrs := startCommand(t, []string{authzUp, httpUp}, "serve", "--home", home, "--authz-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--api-credentials", creds)
	return &governed{home: home, http: addrs[httpUp], authz: addrs[authzUp]}
}

func (g *governed) get(t *testing.T, path, bearer string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.http+path, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// check sends one db.read Check for demo-agent in run, as Envoy would.
func (g *governed) check(t *testing.T, run string) {
	t.Helper()
	var tok bytes.Buffer
	if err := runToken([]string{"--home", g.home, "--agent", "demo-agent", "--tool", "db.read"}, &tok, io.Discard); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(g.authz, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	body := `{"tool":"db.read","arguments":{"table":"customers","limit":10}}`
	resp, err := envoy_service_auth_v3.NewAuthorizationClient(cc).Check(context.Background(), &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
		Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
			Id: fmt.Sprint(time.Now().UnixNano()), Method: "POST", Path: "/query", Host: "db.internal", RawBody: []byte(body),
			Headers: map[string]string{":method": "POST", ":path": "/query", ":authority": "db.internal", "content-type": "application/json",
				"authorization": "Bearer " + strings.TrimSpace(tok.String()), "x-aisecops-run-id": run}}}}})
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("check in %q: %v %v", run, err, resp)
	}
}

// governanceEndpoints are the read endpoints this work adds.
var governanceEndpoints = []string{"/v1/runs", "/v1/runs/r1/timeline", "/v1/runs/r1/graph", "/v1/runs/r1/graph?format=dot", "/v1/evidence"}

// TestGovernanceEndpointsNeedTheOperatorRole: on the served API, every new
// endpoint refuses an anonymous caller (401) and a caller without the
// operator role (403), each with a JSON error, and lets an operator read.
func TestGovernanceEndpointsNeedTheOperatorRole(t *testing.T) {
	g := startGoverned(t)
	for _, ep := range governanceEndpoints {
		for _, c := range []struct {
			bearer string
			status int
			code   string
		}{{"", 401, "unauthenticated"}, {"not-a-token", 401, "unauthenticated"}, {"approver-token", 403, "forbidden"}} {
			status, body := g.get(t, ep, c.bearer)
			var e struct{ Error httpapi.Error }
			if status != c.status || json.Unmarshal(body, &e) != nil || e.Error.Code != c.code {
				t.Errorf("%s as %q: %d %s, want %d %s", ep, c.bearer, status, body, c.status, c.code)
			}
		}
		if status, body := g.get(t, ep, "ops-token"); status == 401 || status == 403 || status >= 500 {
			t.Errorf("%s as operator: %d %s", ep, status, body)
		}
	}
}

// TestRunsShowPrintsTheTimeline: `aisecops runs show` reads a served run's
// timeline over HTTP with the admin token of $AISECOPS_HOME, or a credential
// from the environment, and prints it as a table; agent-written text cannot
// put escape sequences on the operator's terminal.
func TestRunsShowPrintsTheTimeline(t *testing.T) {
	g := startGoverned(t)
	for range 2 {
		g.check(t, "run-cli")
	}
	g.check(t, "run-other")
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"runs", "show", "run-cli", "--server", "http://" + g.http, "--home", g.home}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || lines[0] != "run run-cli of agent demo-agent: 2 steps" || !strings.HasPrefix(lines[1], "SEQ") ||
		!strings.Contains(lines[2], "db.read") || !strings.Contains(lines[3], "allow") || !strings.Contains(lines[3], "0.10  0.21") {
		t.Fatalf("runs show:\n%s", out.String())
	}

	out.Reset()
	t.Setenv("AISECOPS_TOKEN", "ops-token")
	if err := run(context.Background(), []string{"runs", "list", "--server", "http://" + g.http, "--home", t.TempDir()}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), "run-other ") || !strings.Contains(out.String(), "run-cli ") {
		t.Fatalf("runs list:\n%q", out.String())
	}

	t.Setenv("AISECOPS_TOKEN", "approver-token")
	err := run(context.Background(), []string{"runs", "show", "run-cli", "--server", "http://" + g.http}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "403 forbidden") || strings.Contains(err.Error(), "approver-token") {
		t.Fatalf("approver credential: %v", err)
	}
	t.Setenv("AISECOPS_TOKEN", "ops-token")
	if err := run(context.Background(), []string{"runs", "show", "nope", "--server", "http://" + g.http}, &out, &errb); err == nil || !strings.Contains(err.Error(), "404 not_found") {
		t.Fatalf("unknown run: %v", err)
	}
}

// TestTimelineTableIsTerminalSafe: text in a timeline (run ids, reasons,
// links) is printed with control characters, line breaks and bidirectional
// overrides escaped, so it cannot move the cursor or forge a row.
func TestTimelineTableIsTerminalSafe(t *testing.T) {
	var out bytes.Buffer
	printTimeline(&out, runs.TimelineJSON{RunID: "r\x1b[2J\u202e1", AgentID: "a\nfake row", Steps: []runs.StepJSON{
		{Seq: 1, Tool: "db.read\r", Decision: "allow", Reasons: []string{"x\x07"}, LinkedRuns: []string{"b@\x1b]0;title\x07"}},
	}})
	for _, r := range out.String() {
		if r != '\n' && unsafeRune(r) {
			t.Fatalf("unsafe rune %U printed:\n%q", r, out.String())
		}
	}
	if n := strings.Count(out.String(), "\n"); n != 3 || !strings.Contains(out.String(), `r\x1b[2J\u202e1`) {
		t.Fatalf("table:\n%q", out.String())
	}
}

// TestEvidenceCommands: `aisecops evidence` exports a served log (records
// the Checks wrote) into one file that `aisecops evidence verify` accepts
// (exit 0) with the log's key from $AISECOPS_HOME; one changed byte fails it
// (exit 1) naming the line and record. GET /v1/evidence serves the same kind
// of file.
func TestEvidenceCommands(t *testing.T) {
	g := startGoverned(t)
	for range 3 {
		g.check(t, "run-evidence")
	}
	out := filepath.Join(t.TempDir(), "evidence.jsonl")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"evidence", "--audit", filepath.Join(g.home, "audit.jsonl"), "--out", out}, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "evidence: 3 records from 1 files, the audit chain verified") {
		t.Errorf("summary: %s", stderr.String())
	}
	verify := func(file string) error {
		stdout.Reset()
		return run(context.Background(), []string{"evidence", "verify", file, "--home", g.home}, &stdout, &stderr)
	}
	if err := verify(out); err != nil || !strings.Contains(stdout.String(), "OK: 3 records") {
		t.Fatalf("verify: %v %s", err, stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	at := len(lines[0]) + len(lines[1]) + strings.Index(lines[2], `"decision":"allow"`) + len(`"decision":"`)
	b[at] = 'A' // "Allow"
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var rec struct {
		DecisionID string `json:"decision_id"`
	}
	_ = json.Unmarshal([]byte(lines[2]), &rec)
	if err := verify(bad); err == nil || !strings.Contains(err.Error(), "line 3 (record "+rec.DecisionID+")") {
		t.Fatalf("a changed byte: %v", err)
	}

	status, body := g.get(t, "/v1/evidence", "ops-token")
	served := filepath.Join(t.TempDir(), "served.jsonl")
	if err := os.WriteFile(served, body, 0o600); status != 200 || err != nil {
		t.Fatalf("GET /v1/evidence: %d %v", status, err)
	}
	if err := verify(served); err != nil || !strings.Contains(stdout.String(), "OK: 3 records") {
		t.Fatalf("served evidence: %v %s", err, stdout.String())
	}
}
