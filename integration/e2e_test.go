package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	envoy_config_bootstrap_v3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	envoy_config_cluster_v3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_config_endpoint_v3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	envoy_config_listener_v3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_http_ext_authz_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/aisecops/aisecops-envoy/integration/envoyharness"
	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

// The end-to-end scenarios of the Envoy contract (what the service must do
// with what Envoy sends it: timeouts, body limits, stripped headers, retries,
// path normalisation), run against the real
// `aisecops all` binary through a data plane built from the same translated
// resources the control plane pushes: the Envoy-faithful harness always, and a
// real Envoy when ENVOY_BIN names one.

// maxBody is the routes file's authz.max_request_bytes: small, so the 413
// scenario needs no megabyte bodies.
const maxBody = 4096

// routesTemplate is the routes file the binary serves and the data plane is
// built from. demo-agent has the bundled thresholds; careful-agent asks for a
// human on its first db.read (step risk 0.2 > approval 0.05).
const routesTemplate = `
listener: {address: 127.0.0.1, port: 10000}
authz:
  address: %s
  timeout: 1s
  max_request_bytes: %d
tools:
  - name: db.read
    class: read
    base_risk: 0.2
    trust: internal
    cost: 0.01
    match: {host: db.internal, path_prefix: /}
    upstream: {address: 127.0.0.1, port: %d, tls: false}
agents:
  - id: demo-agent
    allowed_tools: [db.read]
    budgets: {max_tool_calls: 100, max_write_operations: 10, max_execution_time: 15m, max_cost: 5.0}
    thresholds: {approval: 1.5, halt: 2.0}
  - id: careful-agent
    allowed_tools: [db.read]
    budgets: {max_tool_calls: 100, max_write_operations: 10, max_execution_time: 15m, max_cost: 5.0}
    thresholds: {approval: 0.05, halt: 5.0}
`

// adminPathPolicy is added to a copy of the bundled policies so the path
// scenarios can see which path the authz service evaluated: the raw path, or
// the path the upstream will route.
const adminPathPolicy = `package aisecops.authz

import rego.v1

# Test-only rule (integration/e2e_test.go): nothing under /admin.
deny_reasons contains {
	"code": "path_forbidden",
	"message": "the admin interface is not a tool",
	"control_id": "AIS-EXE-01",
} if {
	admin_path
}

admin_path if input.request.path == "/admin"

admin_path if startswith(input.request.path, "/admin/")
`

// seen is one request a test upstream received.
type seen struct {
	Method, URI, Host string
	Header            http.Header
	Body              []byte
}

// upstream is a tool server that records every request it receives.
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, seen{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header.Clone(), Body: body})
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"rows":[]}`)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

// since returns the requests received after the first n.
func (u *upstream) since(n int) []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs[n:]...)
}

// world is one running `aisecops all` and everything the scenarios need.
type world struct {
	bin, home string
	env       []string
	httpAddr  string
	authzAddr string
	file      *config.File
	res       *translate.Resources
	up        *upstream
	// newFront starts a data plane for res whose ext_authz cluster is authzAddr
	// and returns its base URL.
	newFront func(t *testing.T, authzAddr string) string
	tokens   map[string]string // agent → db.read capability token
	runs     atomic.Int64
}

func startWorld(t *testing.T, newFront func(w *world) func(t *testing.T, authzAddr string) string) *world {
	t.Helper()
	w := &world{bin: buildBinary(t), home: t.TempDir(), up: newUpstream(t), tokens: map[string]string{}}
	a := freeAddrs(t, 3)
	w.authzAddr, w.httpAddr = a[0], a[1]
	w.env = append(os.Environ(), "AISECOPS_HOME="+w.home, "AISECOPS_AUTHZ_ADDR="+w.authzAddr,
		"AISECOPS_HTTP_ADDR="+w.httpAddr, "AISECOPS_XDS_ADDR="+a[2])

	dir := t.TempDir()
	_, upPort, err := net.SplitHostPort(w.up.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(upPort)
	routes := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(routes, fmt.Appendf(nil, routesTemplate, w.authzAddr, maxBody, port), 0o644); err != nil {
		t.Fatal(err)
	}
	policies := copyPolicies(t, filepath.Join(dir, "policies"))

	if w.file, err = config.Load(routes); err != nil {
		t.Fatal(err)
	}
	if w.res, err = translate.Translate(w.file, translate.Options{}); err != nil {
		t.Fatal(err)
	}
	startProc(t, w.bin, w.env, "all", "--config", routes, "--policies", policies)
	waitReady(t, "http://"+w.httpAddr+"/readyz")
	for _, agent := range []string{"demo-agent", "careful-agent"} {
		w.tokens[agent] = w.mint(t, agent, "db.read")
	}
	w.newFront = newFront(w)
	return w
}

// copyPolicies copies the bundled policies (tests left out) into dir and adds
// adminPathPolicy.
func copyPolicies(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("../policies")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasSuffix(n, "_test.rego") || !(strings.HasSuffix(n, ".rego") || n == "data.json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join("../policies", n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "e2e_admin_path.rego"), []byte(adminPathPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (w *world) mint(t *testing.T, agent, tool string) string {
	t.Helper()
	cmd := exec.Command(w.bin, "token", "--agent", agent, "--tool", tool)
	cmd.Env = w.env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("aisecops token: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// runID is a fresh run per call, so scenarios do not share risk or budgets.
func (w *world) runID() string { return fmt.Sprintf("run-e2e-%d", w.runs.Add(1)) }

// call is one agent request through the data plane, always to db.internal.
type call struct {
	method, path string
	header       http.Header
	body         string
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) decode(t *testing.T) verdict {
	t.Helper()
	var v verdict
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("reply %d is not a decision body: %v\n%s", r.status, err, r.body)
	}
	return v
}

// verdict is the JSON body of a denial, approval request or dry-run answer.
type verdict struct {
	Decision   string `json:"decision"`
	DecisionID string `json:"decision_id"`
	ApprovalID string `json:"approval_id"`
	Reasons    []struct {
		Code string `json:"code"`
	} `json:"reasons"`
	Trace *struct {
		DryRun bool              `json:"dry_run"`
		Stages []json.RawMessage `json:"stages"`
		Tool   string            `json:"tool"`
		RunID  string            `json:"run_id"`
	} `json:"trace"`
}

func (v verdict) codes() []string {
	var out []string
	for _, r := range v.Reasons {
		out = append(out, r.Code)
	}
	return out
}

func send(t *testing.T, front string, c call) reply {
	t.Helper()
	if c.method == "" {
		c.method = http.MethodPost
	}
	req, err := http.NewRequest(c.method, front+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "db.internal"
	for k, vs := range c.header {
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	if c.body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: 15 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: body}
}

// agentCall is a db.read plan from agent with its token in a fresh run.
func (w *world) agentCall(agent, path, args string) call {
	return call{path: path, header: http.Header{
		"Authorization":     {"Bearer " + w.tokens[agent]},
		"X-Aisecops-Run-Id": {w.runID()},
	}, body: `{"tool":"db.read","arguments":` + args + `}`}
}

func noneReached(t *testing.T, up *upstream, before int) {
	t.Helper()
	if got := up.since(before); len(got) != 0 {
		t.Fatalf("the tool was reached %d time(s): %s %s", len(got), got[0].Method, got[0].URI)
	}
}

func oneReached(t *testing.T, up *upstream, before int) seen {
	t.Helper()
	got := up.since(before)
	if len(got) != 1 {
		t.Fatalf("the tool was reached %d times, want 1", len(got))
	}
	return got[0]
}

// scenario is one row of the end-to-end table; front is the data plane's base URL.
type scenario struct {
	name string
	run  func(t *testing.T, w *world, front string)
}

// scenarioTable is the Envoy contract as rows, shared by every data plane.
func scenarioTable() []scenario {
	return []scenario{
		{"allowed call reaches the tool without token or inputs", func(t *testing.T, w *world, front string) {
			c := w.agentCall("demo-agent", "/query?limit=5", `{"table":"customers","limit":5}`)
			c.header.Set("X-Aisecops-Trace-Id", "step-1")
			c.header.Set("X-Aisecops-Decision-Id", "forged-by-agent") // must be overwritten, not doubled
			c.header.Set("X-Aisecops-Risk-Total", "0")
			c.header.Set("X-Aisecops-Custom", "agent-junk")
			c.header.Set("X-Tool-Header", "kept")
			before := w.up.count()
			r := send(t, front, c)
			if r.status != http.StatusOK {
				t.Fatalf("status %d, want 200: %s", r.status, r.body)
			}
			got := oneReached(t, w.up, before)
			if v := got.Header.Values("Authorization"); len(v) != 0 {
				t.Error("the capability token reached the tool")
			}
			for k, vs := range got.Header {
				lk := strings.ToLower(k)
				if !strings.HasPrefix(lk, "x-aisecops-") {
					continue
				}
				switch lk {
				case "x-aisecops-decision-id", "x-aisecops-risk-total":
					if len(vs) != 1 {
						t.Errorf("%s reached the tool %d times: %q", lk, len(vs), vs)
					}
				default:
					t.Errorf("agent input %s reached the tool", lk)
				}
			}
			id := got.Header.Get("X-Aisecops-Decision-Id")
			if id == "" || id == "forged-by-agent" {
				t.Errorf("x-aisecops-decision-id = %q, want the authz service's id", id)
			}
			if rt := got.Header.Get("X-Aisecops-Risk-Total"); rt == "" || rt == "0" {
				t.Errorf("x-aisecops-risk-total = %q, want the run's risk", rt)
			}
			if got.Header.Get("X-Tool-Header") != "kept" {
				t.Error("an ordinary header was removed")
			}
			if got.URI != "/query?limit=5" || string(got.Body) != c.body {
				t.Errorf("tool got %s %q, want the request unchanged", got.URI, got.Body)
			}
		}},
		{"bad token is denied with the JSON body", func(t *testing.T, w *world, front string) {
			c := w.agentCall("demo-agent", "/query", `{"table":"customers"}`)
			c.header.Set("Authorization", "Bearer forged.token.value")
			before := w.up.count()
			r := send(t, front, c)
			if r.status != http.StatusForbidden {
				t.Fatalf("status %d, want 403: %s", r.status, r.body)
			}
			noneReached(t, w.up, before)
			if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("content-type %q, want application/json", ct)
			}
			v := r.decode(t)
			if v.Decision != "deny" || v.DecisionID == "" || len(v.Reasons) == 0 || !strings.HasPrefix(v.Reasons[0].Code, "token_") {
				t.Errorf("body %s, want a deny with a token_* reason and a decision id", r.body)
			}
			if bytes.Contains(r.body, []byte("forged.token.value")) {
				t.Error("the token was echoed to the agent")
			}
		}},
		{"body over max_request_bytes is 413 and never reaches the tool", func(t *testing.T, w *world, front string) {
			// The dangerous argument sits after the cut-off: a front that sent only
			// the first max_request_bytes could be fooled by the harmless prefix.
			args := `{"table":"customers","pad":"` + strings.Repeat("a", maxBody) + `","query":"DROP TABLE customers"}`
			c := w.agentCall("demo-agent", "/query", args)
			before := w.up.count()
			r := send(t, front, c)
			if r.status != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d, want 413: %s", r.status, r.body)
			}
			noneReached(t, w.up, before)
		}},
		{"authz slower than the timeout is 503 and never reaches the tool", func(t *testing.T, w *world, front string) {
			slow := newSlowAuthz(t)
			slowFront := w.newFront(t, slow.addr)
			before := w.up.count()
			r := send(t, slowFront, w.agentCall("demo-agent", "/query", `{"table":"customers"}`))
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("status %d, want 503 (status_on_error): %s", r.status, r.body)
			}
			noneReached(t, w.up, before)
			if slow.calls.Load() == 0 {
				t.Error("the data plane never asked the authz service")
			}
		}},
		{"authz that accepts and never answers is 503", func(t *testing.T, w *world, front string) {
			stalled := newStalledListener(t)
			stalledFront := w.newFront(t, stalled)
			before := w.up.count()
			r := send(t, stalledFront, w.agentCall("demo-agent", "/query", `{"table":"customers"}`))
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("status %d, want 503 (status_on_error): %s", r.status, r.body)
			}
			noneReached(t, w.up, before)
		}},
		{"repeated x-aisecops-run-id is denied", func(t *testing.T, w *world, front string) {
			c := w.agentCall("demo-agent", "/query", `{"table":"customers"}`)
			c.header["X-Aisecops-Run-Id"] = []string{"run-good", "run-evil"}
			before := w.up.count()
			r := send(t, front, c)
			if r.status != http.StatusForbidden {
				t.Fatalf("status %d, want 403: %s", r.status, r.body)
			}
			noneReached(t, w.up, before)
			if v := r.decode(t); v.Decision != "deny" || !contains(v.codes(), "duplicate_header") {
				t.Errorf("body %s, want a deny with duplicate_header", r.body)
			}
		}},
		{"dry-run answers 200 with the trace and never reaches the tool", func(t *testing.T, w *world, front string) {
			c := w.agentCall("demo-agent", "/query", `{"table":"customers"}`)
			c.header.Set("X-Aisecops-Dry-Run", "true")
			run := c.header.Get("X-Aisecops-Run-Id")
			before := w.up.count()
			r := send(t, front, c)
			if r.status != http.StatusOK {
				t.Fatalf("status %d, want 200: %s", r.status, r.body)
			}
			noneReached(t, w.up, before)
			v := r.decode(t)
			if v.Decision != "allow" || v.Trace == nil || !v.Trace.DryRun || len(v.Trace.Stages) == 0 || v.Trace.Tool != "db.read" || v.Trace.RunID != run {
				t.Errorf("body %s, want allow with the full trace of db.read in %s", r.body, run)
			}
		}},
		{"paths are evaluated as the upstream will route them", testPaths},
		{"require_approval, approve, retry once", testApproval},
	}
}

// testPaths: the route matches the raw path (prefix /), the tool resolves dot
// segments, slashes and %2e; the decision must be about the resolved path.
func testPaths(t *testing.T, w *world, front string) {
	tests := []struct {
		path   string
		denied bool
	}{
		{"/admin", true},
		{"//admin", true},
		{"/a/../admin", true},
		{"/public/%2e%2e/admin/users", true},
		{"/public/%2E%2e/%2e%2E/admin", true},
		{"/x/..%2fadmin", true},
		{"/admin/../public", false}, // starts with /admin, resolves elsewhere
		{"/a/../b", false},
		{"/adminx", false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			before := w.up.count()
			r := send(t, front, w.agentCall("demo-agent", tc.path, `{"table":"customers"}`))
			if tc.denied {
				if r.status != http.StatusForbidden {
					t.Fatalf("status %d, want 403: %s", r.status, r.body)
				}
				noneReached(t, w.up, before)
				if v := r.decode(t); !contains(v.codes(), "path_forbidden") {
					t.Errorf("body %s, want path_forbidden", r.body)
				}
				return
			}
			if r.status != http.StatusOK {
				t.Fatalf("status %d, want 200: %s", r.status, r.body)
			}
			if got := oneReached(t, w.up, before); got.URI != tc.path {
				t.Errorf("tool got path %q, want %q unchanged", got.URI, tc.path)
			}
		})
	}
}

// testApproval: careful-agent's first db.read needs a human; the approval is
// bound to the exact plan and spent by the one allow it produces.
func testApproval(t *testing.T, w *world, front string) {
	run := w.runID()
	args := `{"table":"customers","limit":5}`
	mk := func(args, approval string) call {
		c := call{path: "/query", header: http.Header{
			"Authorization":     {"Bearer " + w.tokens["careful-agent"]},
			"X-Aisecops-Run-Id": {run},
		}, body: `{"tool":"db.read","arguments":` + args + `}`}
		if approval != "" {
			c.header.Set("X-Aisecops-Approval", approval)
		}
		return c
	}
	before := w.up.count()
	r := send(t, front, mk(args, ""))
	if r.status != http.StatusForbidden || r.header.Get("X-Aisecops-Decision") != "require_approval" {
		t.Fatalf("status %d decision %q, want 403 require_approval: %s", r.status, r.header.Get("X-Aisecops-Decision"), r.body)
	}
	v := r.decode(t)
	if v.Decision != "require_approval" || v.ApprovalID == "" {
		t.Fatalf("body %s, want require_approval with an approval_id", r.body)
	}
	id := v.ApprovalID

	// Not approved yet: the retry does not pass.
	if r := send(t, front, mk(args, id)); r.status == http.StatusOK {
		t.Fatalf("pending approval let the call through: %s", r.body)
	}
	noneReached(t, w.up, before)

	api := "http://" + w.httpAddr + "/v1/approvals/" + id
	if status, body := post(t, api+"/approve", "", `{"why":"test"}`); status != http.StatusUnauthorized {
		t.Fatalf("approve without the admin token: %d %s, want 401", status, body)
	}
	admin, err := os.ReadFile(filepath.Join(w.home, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if status, body := post(t, api+"/approve", strings.TrimSpace(string(admin)), `{"why":"test"}`); status != http.StatusOK {
		t.Fatalf("approve: %d %s", status, body)
	}

	// Bound to the plan: other arguments do not ride on it.
	if r := send(t, front, mk(`{"table":"payroll","limit":5}`, id)); r.status == http.StatusOK {
		t.Fatalf("approval used for another plan: %s", r.body)
	}
	noneReached(t, w.up, before)

	r = send(t, front, mk(args, id))
	if r.status != http.StatusOK {
		t.Fatalf("approved retry: status %d: %s", r.status, r.body)
	}
	got := oneReached(t, w.up, before)
	if got.Header.Get("X-Aisecops-Approval") != "" || got.Header.Get("Authorization") != "" {
		t.Error("approval id or token reached the tool")
	}

	// Used once.
	if r := send(t, front, mk(args, id)); r.status == http.StatusOK {
		t.Fatalf("approval used twice: %s", r.body)
	}
	if n := len(w.up.since(before)); n != 1 {
		t.Fatalf("the tool was reached %d times, want 1", n)
	}
}

func post(t *testing.T, url, bearer, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// slowAuthz is an ext_authz service slower than any timeout: it answers only
// when the caller has given up.
type slowAuthz struct {
	envoy_service_auth_v3.UnimplementedAuthorizationServer
	addr  string
	calls atomic.Int32
}

func (s *slowAuthz) Check(ctx context.Context, _ *envoy_service_auth_v3.CheckRequest) (*envoy_service_auth_v3.CheckResponse, error) {
	s.calls.Add(1)
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

func newSlowAuthz(t *testing.T) *slowAuthz {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &slowAuthz{addr: l.Addr().String()}
	srv := grpc.NewServer()
	envoy_service_auth_v3.RegisterAuthorizationServer(srv, s)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return s
}

// newStalledListener accepts connections and never speaks: no HTTP/2 preface,
// no answer.
func newStalledListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// extAuthzOf digs the ext_authz filter config out of the egress listener's
// HTTP connection manager, as Envoy would read it.
func extAuthzOf(t *testing.T, res *translate.Resources) *envoy_extensions_filters_http_ext_authz_v3.ExtAuthz {
	t.Helper()
	h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
	if err := res.Listeners[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	for _, f := range h.GetHttpFilters() {
		if f.GetName() == translate.ExtAuthzFilter {
			ea := &envoy_extensions_filters_http_ext_authz_v3.ExtAuthz{}
			if err := f.GetTypedConfig().UnmarshalTo(ea); err != nil {
				t.Fatal(err)
			}
			return ea
		}
	}
	t.Fatal("no ext_authz filter on the egress listener")
	return nil
}

// harnessFront builds envoyharness data planes from w's translated resources.
func harnessFront(w *world) func(t *testing.T, authzAddr string) string {
	return func(t *testing.T, authzAddr string) string {
		t.Helper()
		conn, err := grpc.NewClient(authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		ups := map[string]string{}
		for _, tool := range w.file.Tools { // every tool's upstream is the one test upstream
			ups[translate.ClusterName(tool.Upstream)] = w.up.srv.URL
		}
		h, err := envoyharness.New(envoyharness.Config{
			Routes:    w.res.Routes[0],
			ExtAuthz:  extAuthzOf(t, w.res),
			Authz:     envoy_service_auth_v3.NewAuthorizationClient(conn),
			Upstreams: ups,
		})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv.URL
	}
}

func runScenarios(t *testing.T, w *world) {
	front := w.newFront(t, w.authzAddr)
	for _, sc := range scenarioTable() {
		t.Run(sc.name, func(t *testing.T) { sc.run(t, w, front) })
	}
}

// TestEndToEndThroughHarness runs the scenario table through the Envoy-faithful
// harness against the real binary.
func TestEndToEndThroughHarness(t *testing.T) {
	w := startWorld(t, harnessFront)
	runScenarios(t, w)
}

// envoyBootstrap is the static bootstrap a real Envoy runs the scenarios from:
// the translated resources with the route configuration inlined into the
// listener (as envoy/bootstrap-static.yaml is made), EDS clusters given their
// endpoints inline as STATIC clusters, the listener on listen, the admin
// interface on admin and the ext_authz cluster pointing at authzAddr.
func envoyBootstrap(res *translate.Resources, listen, admin, authzAddr string) (*envoy_config_bootstrap_v3.Bootstrap, error) {
	if len(res.Listeners) != 1 || len(res.Routes) != 1 {
		return nil, fmt.Errorf("want one listener and one route configuration, got %d and %d", len(res.Listeners), len(res.Routes))
	}
	l := proto.Clone(res.Listeners[0]).(*envoy_config_listener_v3.Listener)
	la, err := socketAddr(listen)
	if err != nil {
		return nil, err
	}
	l.Address = la
	if len(l.GetFilterChains()) != 1 || len(l.GetFilterChains()[0].GetFilters()) != 1 {
		return nil, fmt.Errorf("listener %s: want one filter chain with one filter", l.GetName())
	}
	fl := l.GetFilterChains()[0].GetFilters()[0]
	h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
	if err := fl.GetTypedConfig().UnmarshalTo(h); err != nil {
		return nil, err
	}
	h.RouteSpecifier = &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_RouteConfig{
		RouteConfig: proto.Clone(res.Routes[0]).(*envoy_config_route_v3.RouteConfiguration)}
	a, err := anypb.New(h)
	if err != nil {
		return nil, err
	}
	fl.ConfigType = &envoy_config_listener_v3.Filter_TypedConfig{TypedConfig: a}

	endpoints := map[string]*envoy_config_endpoint_v3.ClusterLoadAssignment{}
	for _, e := range res.Endpoints {
		endpoints[e.GetClusterName()] = e
	}
	var clusters []*envoy_config_cluster_v3.Cluster
	for _, c := range res.Clusters {
		c = proto.Clone(c).(*envoy_config_cluster_v3.Cluster)
		if c.GetType() == envoy_config_cluster_v3.Cluster_EDS {
			e, ok := endpoints[c.GetName()]
			if !ok {
				return nil, fmt.Errorf("EDS cluster %s has no endpoints", c.GetName())
			}
			c.ClusterDiscoveryType = &envoy_config_cluster_v3.Cluster_Type{Type: envoy_config_cluster_v3.Cluster_STATIC}
			c.EdsClusterConfig = nil
			c.LoadAssignment = proto.Clone(e).(*envoy_config_endpoint_v3.ClusterLoadAssignment)
		}
		if c.GetName() == translate.AuthzCluster {
			aa, err := socketAddr(authzAddr)
			if err != nil {
				return nil, err
			}
			c.ClusterDiscoveryType = &envoy_config_cluster_v3.Cluster_Type{Type: envoy_config_cluster_v3.Cluster_STATIC}
			eps := c.GetLoadAssignment().GetEndpoints()
			if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
				return nil, fmt.Errorf("authz cluster: want one endpoint")
			}
			eps[0].GetLbEndpoints()[0].GetEndpoint().Address = aa
		}
		clusters = append(clusters, c)
	}
	ad, err := socketAddr(admin)
	if err != nil {
		return nil, err
	}
	return &envoy_config_bootstrap_v3.Bootstrap{
		Node:            &envoy_config_core_v3.Node{Id: "e2e-envoy", Cluster: "aisecops-egress"},
		Admin:           &envoy_config_bootstrap_v3.Admin{Address: ad},
		StaticResources: &envoy_config_bootstrap_v3.Bootstrap_StaticResources{Listeners: []*envoy_config_listener_v3.Listener{l}, Clusters: clusters},
	}, nil
}

func socketAddr(hostport string) (*envoy_config_core_v3.Address, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("%s: bad port", hostport)
	}
	return &envoy_config_core_v3.Address{Address: &envoy_config_core_v3.Address_SocketAddress{SocketAddress: &envoy_config_core_v3.SocketAddress{
		Address: host, PortSpecifier: &envoy_config_core_v3.SocketAddress_PortValue{PortValue: uint32(port)}}}}, nil
}

// envoyFront starts real Envoys (ENVOY_BIN) from w's translated resources.
func envoyFront(w *world) func(t *testing.T, authzAddr string) string {
	return func(t *testing.T, authzAddr string) string {
		t.Helper()
		pa := freeAddrs(t, 2)
		listen, admin := pa[0], pa[1]
		b, err := envoyBootstrap(w.res, listen, admin, authzAddr)
		if err != nil {
			t.Fatal(err)
		}
		if err := envoyconfig.CheckBootstrap(b); err != nil {
			t.Fatalf("generated bootstrap: %v", err)
		}
		js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "envoy.json")
		if err := os.WriteFile(path, js, 0o644); err != nil {
			t.Fatal(err)
		}
		p := startProc(t, os.Getenv("ENVOY_BIN"), os.Environ(), "-c", path, "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn")
		deadline := time.Now().Add(30 * time.Second)
		for {
			select {
			case err := <-p.exited:
				t.Fatalf("envoy exited: %v\n%s", err, p.logs.String())
			default:
			}
			if resp, err := http.Get("http://" + admin + "/ready"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return "http://" + listen
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("envoy not ready within 30 s\n%s", p.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestEndToEndThroughRealEnvoy runs the same scenario table through a real
// Envoy, when ENVOY_BIN names one.
func TestEndToEndThroughRealEnvoy(t *testing.T) {
	if os.Getenv("ENVOY_BIN") == "" {
		t.Skip("ENVOY_BIN not set: real-Envoy scenarios skipped")
	}
	w := startWorld(t, envoyFront)
	runScenarios(t, w)
}

// TestEnvoyBootstrapForTestPorts proves, with or without an Envoy binary, that
// the bootstrap the real-Envoy scenarios run from passes Envoy's own API
// validation and sends every route where the harness sends it.
func TestEnvoyBootstrapForTestPorts(t *testing.T) {
	t.Parallel()
	f, err := config.Parse("routes.yaml", fmt.Appendf(nil, routesTemplate, "127.0.0.1:9191", maxBody, 8080))
	if err != nil {
		t.Fatal(err)
	}
	res, err := translate.Translate(f, translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoyBootstrap(res, "127.0.0.1:10001", "127.0.0.1:9902", "127.0.0.1:9292")
	if err != nil {
		t.Fatal(err)
	}
	if err := envoyconfig.CheckBootstrap(b); err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := envoyconfig.ValidateBootstrapYAML(js); err != nil { // JSON is YAML: the file Envoy reads round-trips
		t.Fatalf("round trip: %v", err)
	}
	endpoint := func(c *envoy_config_cluster_v3.Cluster) string {
		sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	}
	got := map[string]string{}
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetType() != envoy_config_cluster_v3.Cluster_STATIC {
			t.Errorf("cluster %s is %v, want STATIC", c.GetName(), c.GetType())
		}
		got[c.GetName()] = endpoint(c)
	}
	want := map[string]string{
		translate.AuthzCluster: "127.0.0.1:9292",
		translate.ClusterName(config.Upstream{Address: "127.0.0.1", Port: 8080}): "127.0.0.1:8080",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("clusters (-want +got):\n%s", d)
	}
	l := b.GetStaticResources().GetListeners()[0]
	if sa := l.GetAddress().GetSocketAddress(); sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 10001 {
		t.Errorf("listener at %v, want 127.0.0.1:10001", sa)
	}
	if ea := extAuthzOf(t, &translate.Resources{Listeners: []*envoy_config_listener_v3.Listener{l}}); ea.GetFailureModeAllow() ||
		ea.GetWithRequestBody().GetMaxRequestBytes() != maxBody || ea.GetStatusOnError().GetCode() != 503 {
		t.Errorf("ext_authz filter lost the product's settings: %v", ea)
	}
}
