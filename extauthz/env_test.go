package extauthz_test

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/internal/redistest"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

const (
	testIssuer   = "aisecops-test"
	testAudience = "aisecops-egress"
)

// testConfig is the bundled example plus agents shaped for the tests: the
// AISecOps worked example of section 8 (approval 1.2, a write budget of 10 and nothing else,
// so B is 1.0, 1.0, 1.1) and a tiny call budget.
var testConfig = func() []byte {
	withTools := strings.Replace(string(config.Example()), "\nagents:\n", `
  - name: slack.post
    class: external_send
    base_risk: 0.4
    trust: untrusted
    cost: 0.01
    match: {host: slack.example.com, path_prefix: /}
    upstream: {address: slack.example.com, port: 443, tls: true}
    destinations: ["#team-internal"]
    destination_args: [channel]
  - name: web.fetch
    class: read
    base_risk: 0.3
    trust: neutral
    cost: 0.01
    match: {host: fetch.internal, path_prefix: /}
    upstream: {address: fetch.internal, port: 8443, tls: true}
    destinations: [api.vendor.example]
    destination_args: [url]
  - name: files.read
    class: read
    base_risk: 0.1
    trust: internal
    cost: 0
    match: {host: files.internal, path_prefix: /read}
    upstream: {address: files.internal, port: 8443, tls: true}
  - name: files.admin
    class: exec
    base_risk: 0.9
    trust: internal
    cost: 0
    match: {host: files.internal, path_prefix: /admin}
    upstream: {address: files.internal, port: 8443, tls: true}
agents:
  - id: doc-agent
    allowed_tools: [db.read, slack.post, web.fetch, llm.openai]
    budgets: {max_tool_calls: 50}
    thresholds: {approval: 1.5, halt: 2.0}
`, 1)
	return append([]byte(withTools), []byte(`
  - id: crm-agent
    allowed_tools: [db.read, db.write, send_email]
    budgets: {max_write_operations: 10}
    thresholds: {approval: 1.2, halt: 2.0}
  - id: tiny-agent
    allowed_tools: [db.read]
    budgets: {max_tool_calls: 3}
    thresholds: {approval: 100, halt: 200}
  - id: burst-agent
    allowed_tools: [db.read]
    budgets: {max_tool_calls: 15}
    thresholds: {approval: 1000, halt: 2000}
  - id: bench-agent
    allowed_tools: [docs.search]
    budgets: {}
    thresholds: {approval: 1000000000, halt: 2000000000}
  - id: research-agent
    allowed_tools: [db.read, web.fetch]
    budgets: {}
    thresholds: {approval: 100, halt: 200}
  - id: writer-agent
    allowed_tools: [db.write]
    budgets: {}
    receives_from: [research-agent]
    thresholds: {approval: 1.5, halt: 3.0}
  - id: sticky-agent
    allowed_tools: [db.read, docs.search, shell.exec]
    budgets: {}
    thresholds: {approval: 1000, halt: 2000}
  - id: window-agent
    allowed_tools: [db.read]
    budgets: {max_tool_calls: 100}
    agent_budgets: {window: 1h, max_tool_calls: 3}
    thresholds: {approval: 100, halt: 200}
  - id: scoped-agent
    allowed_tools: [db.read, files.read]
    budgets: {}
    grants:
      db.read: {scopes: [project.alpha], max_rows: 100}
    thresholds: {approval: 100, halt: 200}
`)...)
}()

// env is one authz server behind a real gRPC listener, with real components:
// the OPA engine on the bundled policies, the in-memory store, an audit file.
type env struct {
	t        *testing.T
	signer   capability.Signer
	client   envoy_service_auth_v3.AuthorizationClient
	store    runStore
	audit    string
	now      time.Time
	mu       sync.Mutex
	reg      *prometheus.Registry
	verifier *capability.Verifier
	srv      *extauthz.Server
	cfgFile  *config.File
	sealer   *audit.Sealer
	engine   *policy.Engine
}

type envOption func(*extauthz.Config)

// runStore is a run-state store as the tests use it.
type runStore interface {
	riskstore.Store
	riskstore.Approvals
	riskstore.Nonces
}

// sharing makes a second replica of a: the same store and the same token keys.
func sharing(a *env) envOption {
	return func(c *extauthz.Config) {
		withStore(a.store)(c)
		c.Verifier = a.verifier
	}
}

// withStore runs the server on s.
func withStore(s runStore) envOption {
	return func(c *extauthz.Config) {
		c.Store, c.Approvals, c.Nonces = s, s, s
		if l, ok := s.(extauthz.StepAppender); ok {
			c.StepLog = l
		}
	}
}

// forEachStore runs f on the in-memory store and on a real Redis, which must
// give the same answers (the tests start their own redis-server).
func forEachStore(t *testing.T, f func(t *testing.T, store envOption)) {
	t.Run("memory", func(t *testing.T) { f(t, func(*extauthz.Config) {}) })
	t.Run("redis", func(t *testing.T) { f(t, withStore(newRedisStore(t, redistest.StartServer(t)))) })
}

func newRedisStore(t testing.TB, srv *redistest.Server) *riskstore.Redis {
	t.Helper()
	r, err := riskstore.NewRedis(riskstore.RedisOptions{URL: "redis://" + srv.Addr(), OpTimeout: 2 * time.Second, PoolSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	dir := t.TempDir()
	signer, _, err := capability.LoadOrCreateDevKey(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewStaticKeys(map[string]crypto.PublicKey{signer.KeyID(): signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	engine, err := policy.New(ctx, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := capability.NewVerifier(capability.VerifierConfig{Issuer: testIssuer, Audience: testAudience, Keys: keys,
		AcceptedPolicyVersions: engine.AcceptedPolicyVersions()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.Parse("test", testConfig)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{signer: signer, verifier: verifier, audit: filepath.Join(dir, "audit.jsonl"), now: time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC),
		reg: prometheus.NewRegistry(), cfgFile: f}
	if tt, ok := t.(*testing.T); ok {
		e.t = tt
	}
	e.store = riskstore.NewMemory(e.clock)
	alog, err := audit.Open(e.audit, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alog.Close() })
	e.engine = engine
	if e.sealer, err = audit.NewSealer(filepath.Join(dir, audit.SealKeysName)); err != nil {
		t.Fatal(err)
	}
	inspector, err := extauthz.NewEgressInspector([]byte("test-finding-hmac-key-32-bytes!!"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := extauthz.Config{
		Inspector: inspector,
		Directory: extauthz.NewDirectory(f, "test"), Store: e.store, Approvals: e.store, Nonces: e.store, StepLog: e.store.(extauthz.StepAppender),
		Verifier: verifier, Policy: engine, Audit: alog, Registerer: e.reg, Clock: e.clock, Sealer: e.sealer,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if rs, ok := cfg.Store.(runStore); ok {
		e.store = rs
	}
	srv, err := extauthz.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	envoy_service_auth_v3.RegisterAuthorizationServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.client = envoy_service_auth_v3.NewAuthorizationClient(conn)
	return e
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

type tokenOpt func(*capability.MintRequest)

func withRun(id string) tokenOpt       { return func(r *capability.MintRequest) { r.RunID = id } }
func withAudience(a string) tokenOpt   { return func(r *capability.MintRequest) { r.Audience = a } }
func withTTL(d time.Duration) tokenOpt { return func(r *capability.MintRequest) { r.TTL = d } }
func withSingleUse() tokenOpt          { return func(r *capability.MintRequest) { r.SingleUse = true } }
func withPolicyVersion(v string) tokenOpt {
	return func(r *capability.MintRequest) { r.PolicyVersion = v }
}

// token mints a token at the env's clock.
func (e *env) token(t testing.TB, agent, tool string, opts ...tokenOpt) string {
	t.Helper()
	req := capability.MintRequest{Issuer: testIssuer, Audience: testAudience, Agent: agent, Tool: tool, PolicyVersion: "v1.0"}
	for _, o := range opts {
		o(&req)
	}
	tok, _, err := capability.Mint(e.signer, req, e.clock())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// tokenAt mints a token at another clock reading (a replica whose clock differs).
func (e *env) tokenAt(t testing.TB, agent, tool string, at time.Time) string {
	t.Helper()
	tok, _, err := capability.Mint(e.signer, capability.MintRequest{Issuer: testIssuer, Audience: testAudience, Agent: agent, Tool: tool, PolicyVersion: "v1.0"}, at)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// route is a tool's per-route context extensions, as the control plane sets them.
func (e *env) route(tool string) map[string]string {
	tl, ok := e.cfgFile.Tool(tool)
	if !ok {
		panic("no tool " + tool)
	}
	ext := map[string]string{
		"tool": tl.Name, "tool_class": tl.Class, "base_risk": fmt.Sprint(tl.BaseRisk), "trust": tl.Trust,
		"cost": fmt.Sprint(tl.Cost), "route_version": config.RouteVersion(tl),
	}
	if len(tl.MCPTools) > 0 {
		ext["mcp_tools"] = strings.Join(tl.MCPTools, ",")
	}
	return ext
}

// req builds a CheckRequest the way Envoy's ext_authz filter does.
type req struct {
	ext     map[string]string
	headers map[string]string
	repeat  []*envoy_config_core_v3.HeaderValue // extra header_map entries (repeated headers)
	body    string
	id      string
	path    string
	host    string
}

func (r req) build() *envoy_service_auth_v3.CheckRequest {
	path, host := r.path, r.host
	if path == "" {
		path = "/call"
	}
	if host == "" {
		host = "tool.internal"
	}
	h := map[string]string{":method": "POST", ":path": path, ":authority": host, "content-type": "application/json"}
	for k, v := range r.headers {
		h[k] = v
	}
	httpReq := &envoy_service_auth_v3.AttributeContext_HttpRequest{
		Id: r.id, Method: "POST", Path: path, Host: host, Headers: h, RawBody: []byte(r.body), Size: int64(len(r.body)),
	}
	if len(r.repeat) > 0 {
		hm := &envoy_config_core_v3.HeaderMap{}
		for k, v := range h {
			hm.Headers = append(hm.Headers, &envoy_config_core_v3.HeaderValue{Key: k, Value: v})
		}
		hm.Headers = append(hm.Headers, r.repeat...)
		httpReq.Headers = nil
		httpReq.HeaderMap = hm
	}
	return &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
		Request:           &envoy_service_auth_v3.AttributeContext_Request{Http: httpReq},
		ContextExtensions: r.ext,
	}}
}

// call is a tool call by agent on tool in run, with a fresh valid token.
func (e *env) call(t testing.TB, agent, tool, run string, args string) req {
	if args == "" {
		args = "{}"
	}
	return req{
		ext: e.route(tool),
		headers: map[string]string{
			"authorization":     "Bearer " + e.token(t, agent, tool),
			"x-aisecops-run-id": run,
		},
		body: fmt.Sprintf(`{"agent_id":%q,"tool":%q,"arguments":%s,"trace_id":"t-%s"}`, agent, tool, args, run),
		id:   fmt.Sprintf("req-%d", time.Now().UnixNano()),
		host: e.host(tool),
	}
}

// host is the host Envoy routes tool by.
func (e *env) host(tool string) string {
	tl, _ := e.cfgFile.Tool(tool)
	return tl.Match.Host
}

// result is a decoded CheckResponse.
type result struct {
	allowed bool
	status  int
	body    extauthz.Body
	headers map[string]string // allow: headers set upstream; deny: response headers
	removed []string
	rpc     int // a denial answered in JSON-RPC: how many requests it answers
}

func (e *env) check(t testing.TB, r req) result {
	t.Helper()
	return e.checkCtx(context.Background(), t, r)
}

func (e *env) checkCtx(ctx context.Context, t testing.TB, r req) result {
	t.Helper()
	resp, err := e.client.Check(ctx, r.build())
	if err != nil {
		t.Fatalf("Check returned a gRPC error (must be a CheckResponse): %v", err)
	}
	return decode(t, resp)
}

func decode(t testing.TB, resp *envoy_service_auth_v3.CheckResponse) result {
	t.Helper()
	res := result{headers: map[string]string{}}
	if ok := resp.GetOkResponse(); ok != nil {
		if resp.GetStatus().GetCode() != 0 {
			t.Fatalf("ok response with status %v", resp.GetStatus())
		}
		res.allowed, res.status = true, 200
		for _, h := range ok.GetHeaders() {
			res.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		res.removed = ok.GetHeadersToRemove()
		return res
	}
	d := resp.GetDeniedResponse()
	if d == nil {
		t.Fatalf("response is neither ok nor denied: %v", resp)
	}
	if resp.GetStatus().GetCode() == 0 {
		t.Fatalf("denied response with OK gRPC status")
	}
	res.status = int(d.GetStatus().GetCode())
	for _, h := range d.GetHeaders() {
		res.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	body := strings.TrimLeft(d.GetBody(), "[")
	if strings.HasPrefix(body, `{"jsonrpc"`) {
		// An MCP answer: JSON-RPC errors carrying the decision in their data.
		var answers []struct {
			ID    json.RawMessage
			Error struct {
				Code    int
				Message string
				Data    extauthz.Body
			}
		}
		raw := []byte(d.GetBody())
		if raw[0] == '{' {
			raw = append(append([]byte("["), raw...), ']')
		}
		if err := json.Unmarshal(raw, &answers); err != nil || len(answers) == 0 {
			t.Fatalf("denied JSON-RPC body is not valid: %v: %s", err, d.GetBody())
		}
		res.rpc, res.body = len(answers), answers[0].Error.Data
		return res
	}
	if err := json.Unmarshal([]byte(d.GetBody()), &res.body); err != nil {
		t.Fatalf("denied body is not JSON: %v: %s", err, d.GetBody())
	}
	return res
}

func (r result) code() string {
	if len(r.body.Reasons) == 0 {
		return ""
	}
	return r.body.Reasons[0].Code
}

// auditRecords reads the audit log.
func (e *env) auditRecords(t testing.TB) []audit.Record {
	t.Helper()
	f, err := os.Open(e.audit)
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

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func withScope(s string) tokenOpt { return func(r *capability.MintRequest) { r.Scope = s } }
func withMaxRows(n int64) tokenOpt {
	return func(r *capability.MintRequest) { r.Constraints.MaxRows = &n }
}
