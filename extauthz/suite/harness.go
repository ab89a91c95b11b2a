package suite

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

// The issuer and audience of the harness's own tokens. They are never accepted
// anywhere else: the key that signs them lives in this process only.
const (
	issuer   = "aisecops-ci"
	audience = "aisecops-egress"
)

// Harness is what every session of a run shares: the compiled policy bundle,
// an ephemeral signing key and the verifier that trusts it, and the egress
// inspector. Building it compiles the bundle once; sessions are cheap.
type Harness struct {
	engine        *policy.Engine
	signer        capability.Signer
	verifier      *capability.Verifier
	inspector     *extauthz.EgressInspector
	policyVersion string
}

// New compiles the policy bundle in dir ("" for the bundled one) and makes an
// ephemeral Ed25519 key for the run's tokens.
func New(ctx context.Context, policiesDir string) (*Harness, error) {
	engine, err := policy.New(ctx, policy.Options{Dir: policiesDir})
	if err != nil {
		return nil, fmt.Errorf("suite: policy bundle: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("suite: signing key: %w", err)
	}
	signer, err := capability.NewSigner(priv, "")
	if err != nil {
		return nil, fmt.Errorf("suite: signing key: %w", err)
	}
	keys, err := capability.NewStaticKeys(map[string]crypto.PublicKey{signer.KeyID(): signer.Public()})
	if err != nil {
		return nil, fmt.Errorf("suite: signing key: %w", err)
	}
	accepted := engine.AcceptedPolicyVersions()
	verifier, err := capability.NewVerifier(capability.VerifierConfig{Issuer: issuer, Audience: audience, Keys: keys,
		AcceptedPolicyVersions: accepted})
	if err != nil {
		return nil, fmt.Errorf("suite: verifier: %w", err)
	}
	var findingKey [32]byte
	_, _ = rand.Read(findingKey[:]) // crypto/rand.Read never fails on supported platforms
	inspector, err := extauthz.NewEgressInspector(findingKey[:])
	if err != nil {
		return nil, fmt.Errorf("suite: egress inspector: %w", err)
	}
	// Tokens carry the bundle's own version when the bundle accepts it, as the
	// token service issues them; else the newest version it accepts.
	pv := engine.Version()
	if len(accepted) > 0 && !slices.Contains(accepted, pv) {
		pv = accepted[len(accepted)-1]
	}
	return &Harness{engine: engine, signer: signer, verifier: verifier, inspector: inspector, policyVersion: pv}, nil
}

// PolicyVersion is the version of the bundle the harness decides with.
func (h *Harness) PolicyVersion() string { return h.engine.Version() }

// PolicyHash is the content hash of the bundle the harness decides with.
func (h *Harness) PolicyHash() string { return h.engine.Hash() }

// session is one case: a fresh Server over a fresh in-memory store, on the
// configuration it was made for and a clock only its steps move.
type session struct {
	h      *Harness
	file   *config.File
	routes *config.RouteTable
	srv    *extauthz.Server
	store  *riskstore.Memory
	sink   *memorySink

	mu  sync.Mutex
	now time.Time
	seq int
	// lastApproval is the approval id of the session's last require_approval.
	lastApproval string
}

func (h *Harness) session(f *config.File) (*session, error) {
	s := &session{h: h, file: f, routes: config.NewRouteTable(f.Tools), sink: &memorySink{}, now: clockStart}
	s.store = riskstore.NewMemory(s.clock)
	srv, err := extauthz.New(extauthz.Config{
		Directory: extauthz.NewDirectory(f, "suite"), Store: s.store, Approvals: s.store, Nonces: s.store,
		Verifier: h.verifier, Policy: h.engine, Inspector: h.inspector, Audit: s.sink, Clock: s.clock,
		// Generous: a Check is in-process, and a slow CI machine must not
		// turn a decision into deadline_exceeded.
		CheckTimeout: 30 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	s.srv = srv
	return s, nil
}

func (s *session) clock() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

func (s *session) advance(d time.Duration) {
	s.mu.Lock()
	s.now = s.now.Add(d)
	s.mu.Unlock()
}

// memorySink keeps the session's audit records: the decision, its reasons and
// its risk, for allows too (an allow's CheckResponse carries no reasons).
type memorySink struct {
	mu   sync.Mutex
	recs []*audit.Record
}

func (m *memorySink) Write(r *audit.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, r)
	return nil
}

func (m *memorySink) last() *audit.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.recs) == 0 {
		return nil
	}
	return m.recs[len(m.recs)-1]
}

// Outcome is the pipeline's answer to one call, as its audit record has it.
type Outcome struct {
	Decision   string   `json:"decision"`
	Reasons    []string `json:"reasons"`
	Status     int      `json:"http_status"`
	Tool       string   `json:"tool,omitempty"`
	StepRisk   float64  `json:"step_risk"`
	RiskTotal  float64  `json:"risk_total"`
	ApprovalID string   `json:"approval_id,omitempty"`
}

// call is one request as the harness builds it.
type call struct {
	agent, tool, host, path, method, run string
	args                                 json.RawMessage
	body                                 string
	headers                              map[string]string
	provenance                           []plan.Provenance
	token                                *TokenSpec
	approved                             bool
}

func (st Step) call() call {
	return call{agent: st.Agent, tool: st.Tool, host: st.Host, path: st.Path, method: st.Method, run: st.Run,
		args: st.Arguments, body: st.Body, headers: st.Headers, provenance: st.Provenance, token: st.Token, approved: st.Approved}
}

// do sends c through the Server's Check, as Envoy's ext_authz filter would,
// and reads the decision back from its audit record.
func (s *session) do(ctx context.Context, c call) (Outcome, error) {
	req, err := s.build(ctx, c)
	if err != nil {
		return Outcome{}, err
	}
	if _, err := s.srv.Check(ctx, req); err != nil {
		return Outcome{}, fmt.Errorf("check: %w", err) // never happens: a deny is a response
	}
	rec := s.sink.last()
	if rec == nil {
		return Outcome{}, errors.New("the check wrote no audit record")
	}
	out := Outcome{Decision: rec.Decision, Status: rec.HTTPStatus, Tool: rec.Tool, StepRisk: rec.StepRisk.Step,
		RiskTotal: rec.CumulativeRisk, ApprovalID: rec.ApprovalID, Reasons: make([]string, 0, len(rec.Reasons))}
	for _, r := range rec.Reasons {
		out.Reasons = append(out.Reasons, r.Code)
	}
	if out.Decision == policy.RequireApproval && out.ApprovalID != "" {
		s.lastApproval = out.ApprovalID
	}
	return out, nil
}

// build makes the CheckRequest for c: the route's host and path, the context
// extensions the control plane sets on that route, a fresh capability token,
// the run, provenance and approval headers, and the body.
func (s *session) build(ctx context.Context, c call) (*envoy_service_auth_v3.CheckRequest, error) {
	var tool config.Tool
	var routed bool
	if c.tool != "" {
		tool, routed = s.file.Tool(c.tool)
		if !routed {
			return nil, fmt.Errorf("tool %q is not in the routes file", c.tool)
		}
	}
	host, path := c.host, c.path
	if host == "" {
		host = tool.Match.Host
	}
	if path == "" {
		path = defaultPath(tool)
	}
	// Envoy routes by host and path: the tool whose route the request takes
	// is the one whose context extensions it carries. A request no route
	// matches carries none, as through a mesh's ext_authz provider.
	var ext map[string]string
	if c.host != "" || c.path != "" {
		p, _, _ := strings.Cut(path, "?")
		tool, routed = s.routes.Resolve(strings.ToLower(host), p)
	}
	if routed {
		ext = translate.ContextExtensions(tool)
	}
	method := c.method
	if method == "" {
		method = "POST"
	}
	run := c.run
	if run == "" {
		run = defaultRun
	}
	s.seq++
	h := map[string]string{":method": method, ":path": path, ":authority": host, "content-type": "application/json",
		"x-aisecops-run-id": run}
	if len(c.provenance) > 0 {
		js, err := json.Marshal(c.provenance)
		if err != nil {
			return nil, err
		}
		h["x-aisecops-provenance"] = base64.RawURLEncoding.EncodeToString(js)
	}
	if c.token == nil || !c.token.Omit {
		tok, err := s.mint(c, tool.Name)
		if err != nil {
			return nil, err
		}
		if tool.Class == config.ClassLLM {
			h["x-aisecops-token"] = tok
		} else {
			h["authorization"] = "Bearer " + tok
		}
	}
	if c.approved {
		if s.lastApproval == "" {
			return nil, errors.New("approved: no earlier step of the case asked for approval")
		}
		if _, err := s.store.DecideApproval(ctx, s.lastApproval, true, "aisecops-ci", "approved by the suite", s.clock()); err != nil {
			return nil, fmt.Errorf("approve %s: %w", s.lastApproval, err)
		}
		h["x-aisecops-approval"] = s.lastApproval
	}
	for k, v := range c.headers {
		h[k] = v
	}
	body := []byte(c.body)
	if c.body == "" {
		var err error
		if body, err = defaultBody(c, tool); err != nil {
			return nil, err
		}
	}
	return &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
		Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
			Id: fmt.Sprintf("aisecops-ci-%d", s.seq), Method: method, Path: path, Host: host, Headers: h,
			RawBody: body, Size: int64(len(body)),
		}},
		ContextExtensions: ext,
	}}, nil
}

// mint signs the step's token at the session's clock.
func (s *session) mint(c call, routeTool string) (string, error) {
	req := capability.MintRequest{Issuer: issuer, Audience: audience, Agent: c.agent, Tool: routeTool, PolicyVersion: s.h.policyVersion}
	if t := c.token; t != nil {
		if t.Tool != "" {
			req.Tool = t.Tool
		}
		if t.Audience != "" {
			req.Audience = t.Audience
		}
		if t.PolicyVersion != "" {
			req.PolicyVersion = t.PolicyVersion
		}
		req.Scope, req.RunID, req.SingleUse, req.TTL = t.Scope, t.RunID, t.SingleUse, time.Duration(t.TTL)
		req.Constraints.MaxRows, req.Constraints.MaxCost = t.MaxRows, t.MaxCost
	}
	if req.Tool == "" {
		return "", errors.New("the call takes no route: name the token's tool (token.tool)")
	}
	tok, _, err := capability.Mint(s.h.signer, req, s.clock())
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return tok, nil
}

// defaultPath is where a call to t goes when the step names no path: the
// route's prefix, or the chat completions endpoint under a model API's.
func defaultPath(t config.Tool) string {
	p := t.Match.PathPrefix
	if p == "" {
		p = "/"
	}
	if t.Class == config.ClassLLM {
		return strings.TrimSuffix(p, "/") + "/chat/completions"
	}
	return p
}

// defaultBody is the body of a call that gives arguments: a plain execution
// plan, a JSON-RPC tools/call on an MCP route, a one-message chat request on a
// model route.
func defaultBody(c call, t config.Tool) ([]byte, error) {
	args := c.args
	if len(args) == 0 {
		args = json.RawMessage(`{}`)
	}
	switch {
	case t.Class == config.ClassLLM:
		return json.Marshal(map[string]any{"model": "aisecops-ci", "messages": []map[string]string{{"role": "user", "content": "Summarise the ticket."}}})
	case len(t.MCPTools) > 0:
		return json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
			"params": map[string]any{"name": t.MCPTools[0], "arguments": args}})
	}
	return json.Marshal(map[string]any{"agent_id": c.agent, "tool": t.Name, "arguments": args})
}
