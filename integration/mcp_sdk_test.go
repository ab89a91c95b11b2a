package integration

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aisecops/aisecops-envoy/integration/envoyharness"
	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

// An MCP client and server we did not write — the official Go SDK — talking
// Streamable HTTP through the Envoy-faithful harness, with the bundled routes
// file: what an agent framework sees of our decisions.

// mcpServer is the SDK's MCP server behind the docs.search route, recording
// which tools ran and which HTTP requests reached it.
type mcpServer struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls []string      // tool names, in the order they ran
	reqs  []http.Header // every HTTP request's headers
}

func newMCPServer(t *testing.T) *mcpServer {
	t.Helper()
	m := &mcpServer{}
	s := mcp.NewServer(&mcp.Implementation{Name: "docs", Version: "test"}, nil)
	type query struct {
		Query string `json:"query"`
	}
	type page struct {
		URL string `json:"url"`
	}
	mcp.AddTool(s, &mcp.Tool{Name: "search", Description: "search the docs"}, func(_ context.Context, _ *mcp.CallToolRequest, q query) (*mcp.CallToolResult, any, error) {
		m.ran("search")
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "3 documents match " + q.Query[:min(len(q.Query), 20)]}}}, nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "fetch_page", Description: "fetch a page"}, func(_ context.Context, _ *mcp.CallToolRequest, p page) (*mcp.CallToolResult, any, error) {
		m.ran("fetch_page")
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "page " + p.URL}}}, nil, nil
	})
	// Offered by the server, not by the route: the gateway must stop it.
	mcp.AddTool(s, &mcp.Tool{Name: "delete_all", Description: "delete every document"}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
		m.ran("delete_all")
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "deleted"}}}, nil, nil
	})
	mux := http.NewServeMux()
	// /mcp keeps sessions (the 2025 protocols); /mcp/stateless serves the
	// 2026-07-28 protocol, which a session-keeping handler cannot. Both are
	// under the route's /mcp prefix.
	for path, stateless := range map[string]bool{"/mcp": false, "/mcp/stateless": true} {
		h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, &mcp.StreamableHTTPOptions{
			Stateless: stateless,
			// The server listens on loopback but is addressed as mcp.internal,
			// the route's host, as it would be behind Envoy: the SDK's
			// DNS-rebinding guard would refuse that.
			DisableLocalhostProtection: true,
		})
		mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m.mu.Lock()
			m.reqs = append(m.reqs, r.Header.Clone())
			m.mu.Unlock()
			h.ServeHTTP(w, r)
		}))
	}
	m.srv = httptest.NewServer(mux)
	t.Cleanup(m.srv.Close)
	return m
}

func (m *mcpServer) ran(tool string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, tool)
}

func (m *mcpServer) ranTools() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

func (m *mcpServer) headers() []http.Header {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.reqs)
}

// agentTransport is the agent's side of the gateway: every request the SDK
// makes goes to the route's host with the capability token and the run id.
type agentTransport struct {
	t                *testing.T
	host, token, run string
	mu               sync.Mutex
	approval         string // x-aisecops-approval on the next requests, when set
}

func (a *agentTransport) setApproval(id string) {
	a.mu.Lock()
	a.approval = id
	a.mu.Unlock()
}

func (a *agentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Host = a.host
	r.Header.Set("Authorization", "Bearer "+a.token)
	r.Header.Set("X-Aisecops-Run-Id", a.run)
	a.mu.Lock()
	if a.approval != "" {
		r.Header.Set("X-Aisecops-Approval", a.approval)
	}
	a.mu.Unlock()
	var msg struct{ Method string }
	if r.GetBody != nil {
		if b, err := r.GetBody(); err == nil {
			_ = json.NewDecoder(b).Decode(&msg)
		}
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		a.t.Logf("%s %s %s → %d %s %s", r.Method, r.URL.Path, msg.Method, resp.StatusCode,
			resp.Header.Get("Content-Type"), resp.Header.Get("X-Aisecops-Decision"))
	}
	return resp, err
}

// mcpWorld is `aisecops all` serving the bundled routes file, the harness in
// front, and the SDK's MCP server as docs.search's upstream.
type mcpWorld struct {
	w     *world
	front string
	srv   *mcpServer
	token string
}

func startMCPWorld(t *testing.T) *mcpWorld {
	t.Helper()
	w := &world{bin: buildBinary(t), home: t.TempDir()}
	a := freeAddrs(t, 3)
	w.authzAddr, w.httpAddr = a[0], a[1]
	w.env = append(os.Environ(), "AISECOPS_HOME="+w.home, "AISECOPS_AUTHZ_ADDR="+w.authzAddr,
		"AISECOPS_HTTP_ADDR="+w.httpAddr, "AISECOPS_XDS_ADDR="+a[2])

	// The bundled routes file as shipped, but for the authz address (a free
	// port) and the Check timeout: 250 ms is tight on a loaded two-core test
	// machine, and a timeout is a 503 the test would read as a verdict.
	example, err := os.ReadFile("../xds/config/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	routes := string(example)
	for old, repl := range map[string]string{"address: 127.0.0.1:9191": "address: " + w.authzAddr, "timeout: 250ms": "timeout: 2s"} {
		if strings.Count(routes, old) != 1 {
			t.Fatalf("example.yaml: %q not found once; update this test", old)
		}
		routes = strings.Replace(routes, old, repl, 1)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(path, []byte(routes), 0o644); err != nil {
		t.Fatal(err)
	}
	if w.file, err = config.Load(path); err != nil {
		t.Fatal(err)
	}
	if w.res, err = translate.Translate(w.file, translate.Options{}); err != nil {
		t.Fatal(err)
	}
	startProc(t, w.bin, w.env, "all", "--config", path, "--policies", copyPolicies(t, filepath.Join(dir, "policies")))
	waitReady(t, "http://"+w.httpAddr+"/readyz")

	srv := newMCPServer(t)
	ups := map[string]string{}
	for _, tool := range w.file.Tools {
		if tool.Name == "docs.search" {
			ups[translate.ClusterName(tool.Upstream)] = srv.srv.URL
		}
	}
	if len(ups) != 1 {
		t.Fatal("the bundled routes file has no docs.search tool")
	}
	conn, err := grpc.NewClient(w.authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h, err := envoyharness.New(envoyharness.Config{
		Routes:    w.res.Routes[0],
		ExtAuthz:  extAuthzOf(t, w.res),
		Authz:     envoy_service_auth_v3.NewAuthorizationClient(conn),
		Upstreams: ups,
	})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(h)
	t.Cleanup(front.Close)
	return &mcpWorld{w: w, front: front.URL, srv: srv, token: w.mint(t, "demo-agent", "docs.search")}
}

// connect opens an SDK client session to path through the harness in a fresh
// run.
func (m *mcpWorld) connect(t *testing.T, ctx context.Context, path string, opts *mcp.ClientSessionOptions) (*mcp.ClientSession, *agentTransport) {
	t.Helper()
	tr := &agentTransport{t: t, host: "mcp.internal", token: m.token, run: m.w.runID()}
	hc := &http.Client{Transport: tr}
	c := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "test"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: m.front + path, HTTPClient: hc}, opts)
	if err != nil {
		t.Fatalf("connect through the gateway: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs, tr
}

// rpcRefusal is what the SDK hands back for our JSON-RPC error.
func rpcRefusal(t *testing.T, err error) (*jsonrpc.Error, verdict) {
	t.Helper()
	var werr *jsonrpc.Error
	if !errors.As(err, &werr) {
		t.Fatalf("error %T %q is not the JSON-RPC error the gateway answered", err, err)
	}
	var v verdict
	if err := json.Unmarshal(werr.Data, &v); err != nil {
		t.Fatalf("error data %s: %v", werr.Data, err)
	}
	return werr, v
}

// TestMCPSDKThroughHarness: the SDK client calls tools on the SDK server
// through the harness; an allowed call runs, a tool the route does not offer
// comes back as an error carrying our reason, and a call that needs a human
// comes back with the approval id. Both protocol generations the SDK speaks
// are run: the stateless 2026-07-28 one it prefers (server/discover, no
// session), its fallback to initialize when the server keeps sessions, and the
// session-based 2025-11-25 one most servers speak today.
func TestMCPSDKThroughHarness(t *testing.T) {
	m := startMCPWorld(t)
	for _, tc := range []struct {
		name, path string
		opts       *mcp.ClientSessionOptions
	}{
		{"protocol 2026-07-28, stateless server", "/mcp/stateless", nil},
		{"sdk default, falls back to initialize", "/mcp", nil},
		{"protocol 2025-11-25", "/mcp", &mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			before := len(m.srv.ranTools())
			cs, tr := m.connect(t, ctx, tc.path, tc.opts)

			tools, err := cs.ListTools(ctx, nil)
			if err != nil {
				t.Fatalf("tools/list: %v", err)
			}
			var names []string
			for _, tl := range tools.Tools {
				names = append(names, tl.Name)
			}
			t.Logf("tools/list through the gateway: %v", names)

			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "search", Arguments: map[string]any{"query": "envoy ext_authz"}})
			if err != nil || res.IsError {
				t.Fatalf("allowed search: %v %+v", err, res)
			}
			if got := m.srv.ranTools()[before:]; !slices.Equal(got, []string{"search"}) {
				t.Fatalf("server ran %v, want [search]", got)
			}

			res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "delete_all", Arguments: map[string]any{}})
			if err == nil {
				t.Fatalf("delete_all was not refused: %+v", res)
			}
			t.Logf("SDK error for the denied call: %q", err.Error())
			werr, v := rpcRefusal(t, err)
			if werr.Code != -32001 || !strings.Contains(err.Error(), "MCP tool is not offered on this route") ||
				v.Decision != "deny" || !contains(v.codes(), "tool_mismatch") || v.DecisionID == "" {
				t.Errorf("denied call reported as code %d %q data %s", werr.Code, err, werr.Data)
			}

			// A read carries small requests: a payload far over the read
			// class's size (64 KiB) asks for a human (payload_size).
			big := map[string]any{"query": strings.Repeat("envoy ", 12<<10)}
			res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "search", Arguments: big})
			if err == nil {
				t.Fatalf("oversized search was not held for approval: %+v", res)
			}
			t.Logf("SDK error for the call needing approval: %q", err.Error())
			werr, v = rpcRefusal(t, err)
			if werr.Code != -32002 || v.Decision != "require_approval" || v.ApprovalID == "" || !contains(v.codes(), "payload_size") {
				t.Errorf("approval reported as code %d %q data %s", werr.Code, err, werr.Data)
			}
			if got := m.srv.ranTools()[before:]; !slices.Equal(got, []string{"search"}) {
				t.Fatalf("server ran %v, want only the allowed search", got)
			}
			// A human approves; the SDK retries the same call (with a new
			// JSON-RPC id) presenting the approval, and it runs — once.
			status, body := post(t, "http://"+m.w.httpAddr+"/v1/approvals/"+v.ApprovalID+"/approve", adminToken(t, m.w.home), `{"why":"known query"}`)
			if status != http.StatusOK {
				t.Fatalf("approve: %d %s", status, body)
			}
			tr.setApproval(v.ApprovalID)
			if res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "search", Arguments: big}); err != nil || res.IsError {
				t.Fatalf("the approved call, retried: %v %+v", err, res)
			}
			if _, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "search", Arguments: big}); err == nil {
				t.Fatal("the approval was used twice")
			}
			tr.setApproval("")
			if got := m.srv.ranTools()[before:]; !slices.Equal(got, []string{"search", "search"}) {
				t.Fatalf("server ran %v, want the allowed and the approved search", got)
			}
			for _, h := range m.srv.headers() {
				if h.Get("Authorization") != "" || h.Get("X-Aisecops-Run-Id") != "" {
					t.Fatalf("agent credentials reached the MCP server: %v", h)
				}
				if h.Get("X-Aisecops-Decision-Id") == "" {
					t.Fatalf("a request reached the MCP server without a decision: %v", h)
				}
			}
		})
	}
}
