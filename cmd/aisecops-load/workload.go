package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// The load agents. loadAgent has budgets and thresholds far above anything a
// run of the load reaches, so every Check it sends is allowed and commits: the
// load measures the allow path, which is the expensive one. cappedAgent has
// small budgets that its runs exceed, so the soak can check that no run's
// counters pass them while Redis dies under it.
const (
	loadAgent   = "load-agent"
	cappedAgent = "load-capped"

	tokenIssuer   = "aisecops" // the defaults of `aisecops serve` and `aisecops token`
	tokenAudience = "aisecops-egress"
	policyVersion = "v1.0"
)

// cappedLimits are cappedAgent's run budgets, as loadAgents writes them.
var cappedLimits = struct {
	calls, writes int64
	costMicros    int64
}{15, 4, 250_000}

// loadAgents is appended to the bundled example's agents: the routes file the
// load's server runs on, tools and all exactly as the bundled example.
var loadAgents = fmt.Sprintf(`
  - id: %s
    allowed_tools: [db.read, db.write, send_email, docs.search, llm.openai]
    budgets: {max_tool_calls: 100000000, max_write_operations: 100000000, max_execution_time: 720h, max_cost: 100000000}
    thresholds: {approval: 1000000000, halt: 2000000000}
  - id: %s
    allowed_tools: [db.read, db.write, send_email, docs.search, llm.openai]
    budgets: {max_tool_calls: %d, max_write_operations: %d, max_execution_time: 720h, max_cost: %g}
    thresholds: {approval: 1000000000, halt: 2000000000}
`, loadAgent, cappedAgent, cappedLimits.calls, cappedLimits.writes, float64(cappedLimits.costMicros)/1e6)

// routesFile is the routes file of the load's server: the bundled example
// with the load agents added.
func routesFile() ([]byte, *config.File, error) {
	raw := string(config.Example())
	if !strings.HasSuffix(strings.TrimRight(raw, "\n"), "halt: 2.0") || !strings.Contains(raw, "\nagents:\n") {
		return nil, nil, fmt.Errorf("the bundled example no longer ends with its agents list; update loadAgents")
	}
	out := []byte(strings.TrimRight(raw, "\n") + "\n" + strings.TrimLeft(loadAgents, "\n"))
	f, err := config.Parse("load routes", out)
	if err != nil {
		return nil, nil, err
	}
	return out, f, nil
}

// kind is one kind of call in the mix.
type kind int

const (
	kindRead  kind = iota // db.read: a JSON tool call on an internal read route
	kindMCP               // docs.search: an MCP tools/call with a ~1 KB body
	kindWrite             // db.write: state-changing, single-use token
	kindSend              // send_email: external send, single-use token, destination checked
	kindModel             // llm.openai: a chat completion, token in x-aisecops-token
	numKinds
)

var kindNames = [numKinds]string{"read", "mcp", "write", "send", "model"}

var kindTools = [numKinds]string{"db.read", "docs.search", "db.write", "send_email", "llm.openai"}

// singleUse: the bundled policy spends the token of these classes (its
// consume_jti obligation), so each Check needs a fresh one.
var singleUse = [numKinds]bool{kindWrite: true, kindSend: true}

// Run families. A model call feeds the run untrusted context (the bundled
// policy treats a model's messages as untrusted unless labelled), after which
// an external send is denied (tainted_run_external_send): a real agent that
// both chats and sends does so in separate runs or gets approvals. So runs are
// either tool runs or chat runs, and the mix over all Checks is read 25%,
// MCP 25%, write 15%, send 15%, model 20%.
var (
	toolRun = []kind{kindRead, kindMCP, kindWrite, kindSend}
	chatRun = []kind{kindModel, kindRead, kindModel, kindMCP}
)

// family of the n-th run: 3 tool runs to 2 chat runs.
func family(n int) []kind {
	if n%5 < 3 {
		return toolRun
	}
	return chatRun
}

// oneStep is the same mix for runs of a single step, where no run carries
// context from one call to the next: every kind in its share.
var oneStep = []kind{
	kindRead, kindMCP, kindWrite, kindSend, kindModel,
	kindRead, kindMCP, kindModel, kindRead, kindMCP,
	kindWrite, kindSend, kindModel, kindRead, kindMCP,
	kindWrite, kindSend, kindModel, kindRead, kindMCP,
}

// mix builds the CheckRequests of the load, as Envoy's ext_authz filter
// sends them (headers, raw body, context extensions of the route), with
// valid capability tokens signed by the server's key.
type mix struct {
	signer capability.Signer
	routes [numKinds]route
	ttl    time.Duration
	now    func() time.Time

	mu     sync.Mutex
	tokens map[[2]string]cachedToken // agent, tool → a reusable token
}

type route struct {
	tool, host, path string
	ext              map[string]string
}

type cachedToken struct {
	raw     string
	expires time.Time
}

func newMix(f *config.File, signer capability.Signer) (*mix, error) {
	m := &mix{signer: signer, ttl: 5 * time.Minute, now: time.Now, tokens: map[[2]string]cachedToken{}}
	paths := [numKinds]string{"/query", "/mcp", "/rows/update", "/send", "/v1/chat/completions"}
	for k := range numKinds {
		tl, ok := f.Tool(kindTools[k])
		if !ok {
			return nil, fmt.Errorf("the routes file has no tool %s", kindTools[k])
		}
		ext := map[string]string{
			"tool": tl.Name, "tool_class": tl.Class, "base_risk": strconv.FormatFloat(tl.BaseRisk, 'g', -1, 64), "trust": tl.Trust,
			"cost": strconv.FormatFloat(tl.Cost, 'g', -1, 64), "route_version": config.RouteVersion(tl),
		}
		if len(tl.MCPTools) > 0 {
			ext["mcp_tools"] = strings.Join(tl.MCPTools, ",")
		}
		path := paths[k]
		if !strings.HasPrefix(path, tl.Match.PathPrefix) {
			path = tl.Match.PathPrefix
		}
		m.routes[k] = route{tool: tl.Name, host: tl.Match.Host, path: path, ext: ext}
	}
	return m, nil
}

// token is a valid token of agent for the kind's tool: a fresh one for the
// single-use kinds, else a cached one renewed well before it expires.
func (m *mix) token(agent string, k kind) (string, error) {
	now := m.now()
	req := capability.MintRequest{Issuer: tokenIssuer, Audience: tokenAudience, Agent: agent, Tool: kindTools[k], TTL: m.ttl, PolicyVersion: policyVersion}
	if singleUse[k] {
		tok, _, err := capability.Mint(m.signer, req, now)
		return tok, err
	}
	key := [2]string{agent, kindTools[k]}
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tokens[key]; ok && now.Before(t.expires) {
		return t.raw, nil
	}
	tok, _, err := capability.Mint(m.signer, req, now)
	if err != nil {
		return "", err
	}
	m.tokens[key] = cachedToken{raw: tok, expires: now.Add(m.ttl / 2)}
	return tok, nil
}

// call is one Check to send: its request, and what the run and request are.
type call struct {
	req       *envoy_service_auth_v3.CheckRequest
	kind      kind
	agent     string
	run       string
	requestID string
}

// mcpQuery makes the MCP tools/call body about 1 KB, like BenchmarkCheck's.
var mcpQuery = strings.Repeat("customer churn analysis for Q3 accounts; ", 22)

// build is the n-th step of run (of agent) as request requestID.
func (m *mix) build(agent, run, requestID string, k kind, step int) (call, error) {
	tok, err := m.token(agent, k)
	if err != nil {
		return call{}, err
	}
	r := m.routes[k]
	var body string
	headers := map[string]string{"x-aisecops-run-id": run}
	switch k {
	case kindRead:
		body = fmt.Sprintf(`{"agent_id":%q,"tool":%q,"arguments":{"table":"crm_contacts","limit":20,"filter":{"region":"emea","status":"active"}},"trace_id":"t-%s"}`, agent, r.tool, run)
	case kindMCP:
		body = fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"search","arguments":{"query":%q,"top_k":5,"filters":{"region":"emea","year":2026}}}}`, step, mcpQuery)
	case kindWrite:
		body = fmt.Sprintf(`{"agent_id":%q,"tool":%q,"arguments":{"table":"crm_contacts","id":%d,"status":"contacted"},"trace_id":"t-%s"}`, agent, r.tool, step, run)
	case kindSend:
		body = fmt.Sprintf(`{"agent_id":%q,"tool":%q,"arguments":{"to":"customer%d@example.com","subject":"Your order","body":"Your order has shipped and will arrive on Thursday."},"trace_id":"t-%s"}`, agent, r.tool, step, run)
	case kindModel:
		body = `{"model":"gpt-4o","messages":[{"role":"system","content":"You are a support agent."},` +
			`{"role":"user","content":"Summarise the open tickets about delayed shipments in three bullet points."}]}`
	}
	if k == kindModel {
		headers["authorization"] = "Bearer sk-provider-key-not-ours"
		headers["x-aisecops-token"] = tok
	} else {
		headers["authorization"] = "Bearer " + tok
	}
	return call{req: envoyRequest(r, requestID, headers, body), kind: k, agent: agent, run: run, requestID: requestID}, nil
}

// envoyRequest is what Envoy's ext_authz filter sends for an HTTP/1.1
// request of an agent: the request's headers as Envoy has them after its own
// processing, the buffered body, the peers and the route's context
// extensions. The no-op floor decodes exactly the same bytes.
func envoyRequest(r route, requestID string, extra map[string]string, body string) *envoy_service_auth_v3.CheckRequest {
	h := map[string]string{
		":method": "POST", ":path": r.path, ":authority": r.host, ":scheme": "https",
		"content-type": "application/json", "content-length": strconv.Itoa(len(body)),
		"accept": "application/json", "user-agent": "aisecops-load/1 python-httpx/0.27.0",
		"x-request-id": requestID, "x-forwarded-proto": "https", "x-envoy-expected-rq-timeout-ms": "15000",
	}
	for k, v := range extra {
		h[k] = v
	}
	addr := func(ip string, port uint32) *envoy_service_auth_v3.AttributeContext_Peer {
		return &envoy_service_auth_v3.AttributeContext_Peer{Address: &envoy_config_core_v3.Address{Address: &envoy_config_core_v3.Address_SocketAddress{
			SocketAddress: &envoy_config_core_v3.SocketAddress{Address: ip, PortSpecifier: &envoy_config_core_v3.SocketAddress_PortValue{PortValue: port}},
		}}}
	}
	return &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
		Source:      addr("10.1.4.17", 51234),
		Destination: addr("10.1.0.2", 10000),
		Request: &envoy_service_auth_v3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
				Id: requestID, Method: "POST", Path: r.path, Host: r.host, Scheme: "https", Protocol: "HTTP/1.1",
				Headers: h, RawBody: []byte(body), Size: int64(len(body)),
			},
		},
		ContextExtensions: r.ext,
	}}
}

// runner walks the runs of one load worker: runs of steps Checks each, new
// run ids as they end, each run a tool or a chat run.
type runner struct {
	mix    *mix
	agent  string
	prefix string // unique per worker and row
	steps  int

	runs, step, seq int
	run             string
}

// newRunner starts worker n's runs; n staggers where in the mix each worker starts.
func newRunner(m *mix, agent, prefix string, steps, n int) *runner {
	return &runner{mix: m, agent: agent, prefix: prefix, steps: max(steps, 1), runs: n, seq: n}
}

// next is the worker's next Check.
func (w *runner) next() (call, error) {
	if w.run == "" || w.step == w.steps {
		w.run = w.prefix + "-r" + strconv.Itoa(w.runs)
		w.runs++
		w.step = 0
	}
	var k kind
	if w.steps == 1 {
		k = oneStep[w.seq%len(oneStep)]
	} else {
		fam := family(w.runs - 1)
		k = fam[w.step%len(fam)]
	}
	w.step++
	w.seq++
	return w.mix.build(w.agent, w.run, w.prefix+"-q"+strconv.Itoa(w.seq), k, w.step)
}
