// Package tokenservice owns the capability-token service, POST /v1/tokens
// (AISecOps controls AIS-CAP-01/02): a workload proves who it is (a JWT from a
// trusted issuer such as a Kubernetes service-account token, or a client
// certificate over mTLS), names the tool, scope, constraints, run and lifetime
// it wants, the policy (data.aisecops.tokens.result) decides, and on allow the
// service signs a short-lived capability token with a jti. Every request,
// issued or refused, writes exactly one audit line; a request whose audit line
// cannot be written gets no token.
//
// Who the caller is: with "Authorization: Bearer <JWT>", the credential alone
// decides (a bad one is never rescued by a client certificate) and the agent id
// is the Kubernetes service-account name (the kubernetes.io claim, else the
// <name> of a system:serviceaccount:<ns>:<name> subject), else the subject
// itself. Without the header, and with ClientCert configured, a client
// certificate the TLS server verified names the agent by its SPIFFE ID
// spiffe://<trust domain>/agent/<id>, or by its subject CN when it carries no
// SPIFFE ID at all.
//
// It must not verify capability tokens (they are for the Check path, and only
// there: a capability token is never accepted as a workload credential), must
// not decide anything the policy decides, and never logs, audits or returns in
// an error a credential or a token.
package tokenservice

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Audit events of this service (audit.Record.Event).
const (
	EventIssued  = "token_issued"
	EventRefused = "token_refused"
)

// DefaultEvalTimeout bounds one policy evaluation.
const DefaultEvalTimeout = time.Second

// WorkloadVerifier verifies a workload credential (capability.WorkloadVerifier
// satisfies it).
type WorkloadVerifier interface {
	Verify(ctx context.Context, raw string, now time.Time) (*capability.WorkloadIdentity, error)
}

// AgentRevocations says whether an agent's tokens are revoked now
// (*revocation.Set satisfies it).
type AgentRevocations interface {
	AgentRevoked(agentID string, at time.Time) bool
}

// RunClaimer claims run ids (the run store satisfies it).
type RunClaimer interface {
	ClaimRun(ctx context.Context, run riskstore.RunRef, ttl time.Duration) (owner string, err error)
}

// Evaluator is the policy engine as this service sees it (*policy.Engine).
type Evaluator interface {
	EvalToken(ctx context.Context, in *policy.TokenInput) (policy.TokenDecision, error)
}

var (
	_ WorkloadVerifier = (*capability.WorkloadVerifier)(nil)
	_ Evaluator        = (*policy.Engine)(nil)
)

// ClientCertConfig turns on client-certificate identity. The HTTP server must
// verify client certificates itself (tls.Config ClientCAs with ClientAuth
// VerifyClientCertIfGiven or stricter): the service only trusts a certificate
// that arrived with a verified chain (r.TLS.VerifiedChains), never one merely
// presented.
type ClientCertConfig struct {
	// TrustDomain, when set, is the only SPIFFE trust domain accepted
	// (spiffe://<TrustDomain>/agent/<id>).
	TrustDomain string
}

// Config configures a Service.
type Config struct {
	// Signer signs issued tokens: a file key (capability.LoadSignerFile) or
	// anything that satisfies the interface, such as a KMS client.
	Signer   capability.Signer
	Issuer   string // iss of issued tokens: the Check path's verifier issuer
	Audience string // aud of issued tokens: the Check path's verifier audience
	// MaxTTL caps every issued token's lifetime. It must not exceed the Check
	// path verifier's MaxLifetime. Default capability.DefaultMaxLifetime (15m).
	MaxTTL time.Duration
	// DefaultTTL is the lifetime of a request that names none. Default
	// capability.DefaultTTL (5m).
	DefaultTTL time.Duration

	// Workload verifies bearer workload credentials; nil refuses them.
	Workload WorkloadVerifier
	// ClientCert, when set, accepts verified client certificates as identity
	// for requests without an Authorization header.
	ClientCert *ClientCertConfig

	AgentLookup func(id string) (config.Agent, bool)
	ToolLookup  func(name string) (config.Tool, bool)
	// WorkloadLookup returns the agent that lists a workload subject in its
	// workloads (nil: none does).
	WorkloadLookup func(subject string) (config.Agent, bool)
	// AgentNamespace, when set, lets a Kubernetes service account of that
	// namespace act as the agent named like the account (see agentFor).
	AgentNamespace string
	// Revocations refuses agents whose tokens are revoked (nil: none are).
	Revocations AgentRevocations
	// Runs claims a named run for the caller; a run another agent opened is
	// refused. Required.
	Runs RunClaimer
	// RunTTL is how long a claimed run id stays its agent's (default 24h).
	RunTTL time.Duration
	// Redact passes agent-written strings (the run id, the request id) before
	// they reach the audit log (nil: unchanged; the server wires the egress
	// inspector's, which hashes secrets and personal data).
	Redact func(string) string
	Policy Evaluator
	// EvalTimeout bounds a policy evaluation. Default DefaultEvalTimeout.
	EvalTimeout time.Duration
	Audit       audit.Sink
	// PolicyVersion is the serving bundle's version, stamped into tokens and
	// audit lines (policy.Engine.Version).
	PolicyVersion func() string

	Clock  func() time.Time
	Logger *slog.Logger
	// Registerer, when set, receives aisecops_tokens_total{event, code}.
	Registerer prometheus.Registerer
}

// Service is the token service. It is safe for concurrent use.
type Service struct {
	cfg      Config
	requests *prometheus.CounterVec
}

// New checks cfg, reporting every problem at once, and fills defaults.
func New(cfg Config) (*Service, error) {
	var errs []error
	req := func(ok bool, name string) {
		if !ok {
			errs = append(errs, fmt.Errorf("tokenservice: %s is required", name))
		}
	}
	req(cfg.Signer != nil, "Signer")
	req(cfg.Issuer != "", "Issuer")
	req(cfg.Audience != "", "Audience")
	req(cfg.AgentLookup != nil, "AgentLookup")
	req(cfg.Runs != nil, "Runs")
	req(cfg.ToolLookup != nil, "ToolLookup")
	req(cfg.Policy != nil, "Policy")
	req(cfg.Audit != nil, "Audit")
	req(cfg.PolicyVersion != nil, "PolicyVersion")
	if cfg.Workload == nil && cfg.ClientCert == nil {
		errs = append(errs, errors.New("tokenservice: Workload or ClientCert is required (no way to authenticate callers)"))
	}
	if cfg.MaxTTL < 0 || cfg.DefaultTTL < 0 || cfg.EvalTimeout < 0 {
		errs = append(errs, errors.New("tokenservice: MaxTTL, DefaultTTL and EvalTimeout must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = capability.DefaultMaxLifetime
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = capability.DefaultTTL
	}
	if cfg.EvalTimeout == 0 {
		cfg.EvalTimeout = DefaultEvalTimeout
	}
	if cfg.RunTTL <= 0 {
		cfg.RunTTL = riskstore.DefaultTTL
	}
	if cfg.Redact == nil {
		cfg.Redact = func(v string) string { return v }
	}
	if cfg.WorkloadLookup == nil {
		cfg.WorkloadLookup = func(string) (config.Agent, bool) { return config.Agent{}, false }
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg: cfg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aisecops_tokens_total",
			Help: "Token requests by outcome (token_issued, token_refused) and reason code.",
		}, []string{"event", "code"}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(s.requests); err != nil {
			return nil, fmt.Errorf("tokenservice: register metrics: %w", err)
		}
	}
	return s, nil
}

// Handler serves POST /v1/tokens. Mount it on the API's mux under "/v1/tokens".
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tokens", s.issue)
	return mux
}

// Issued is the 201 answer.
type Issued struct {
	Token     string    `json:"token"`
	JTI       string    `json:"jti"`
	ExpiresAt time.Time `json:"expires_at"`
	AgentID   string    `json:"agent_id"`
	Tool      string    `json:"tool"`
}

// Refused is the answer to every request that gets no token.
type Refused struct {
	Decision string          `json:"decision"` // always "deny"
	Reasons  []policy.Reason `json:"reasons"`
}

// outcome is one request's result, written to the audit log and the response.
type outcome struct {
	status  int
	reasons []policy.Reason
	issued  *Issued
	claims  *capability.Claims

	agentID, tool, toolClass, runID string
}

func (s *Service) issue(w http.ResponseWriter, r *http.Request) {
	start := s.cfg.Clock()
	o := s.decide(r, start)
	s.finish(w, r, start, o)
}

// decide runs the stages: authenticate, name the agent, parse, bound by the
// grant, claim the run, evaluate, mint.
func (s *Service) decide(r *http.Request, now time.Time) *outcome {
	id, err := s.authenticate(r, now)
	if err != nil {
		return refuse(http.StatusUnauthorized, err, "workload credential not accepted")
	}
	agentID, err := s.agentFor(id)
	if err != nil {
		return refuse(http.StatusForbidden, err, "")
	}
	o := &outcome{agentID: agentID}
	if s.cfg.Revocations != nil && s.cfg.Revocations.AgentRevoked(agentID, now) {
		return o.refuse(http.StatusForbidden, reason.New(reason.TokenRevoked, "the agent's tokens are revoked"), "")
	}
	req, err := parseRequest(r, now, s.cfg.DefaultTTL)
	if err != nil {
		return o.refuse(http.StatusBadRequest, err, "invalid token request")
	}
	o.tool, o.runID = req.Tool, req.RunID
	agent, agentKnown := s.cfg.AgentLookup(agentID)
	if agentKnown {
		if err := bound(&req, agent.Grants[req.Tool]); err != nil {
			return o.refuse(http.StatusForbidden, err, "")
		}
	}
	if req.RunID != "" && agentKnown {
		owner, err := s.cfg.Runs.ClaimRun(r.Context(), riskstore.RunRef{Agent: agentID, ID: req.RunID}, s.cfg.RunTTL)
		switch {
		case err != nil:
			return o.refuse(http.StatusServiceUnavailable, reason.Wrap(reason.StoreUnavailable, err, "run store unavailable"), "")
		case owner != agentID:
			return o.refuse(http.StatusForbidden, reason.New(reason.RunNotOwned, "the run belongs to another agent"), "")
		}
	}
	tool, toolKnown := s.cfg.ToolLookup(req.Tool)
	if toolKnown {
		o.toolClass = tool.Class
	}
	in := &policy.TokenInput{
		Time:  policy.Time{NowNS: now.UnixNano(), RFC3339: now.UTC().Format(time.RFC3339Nano)},
		Agent: policy.TokenAgent{ID: agentID, Known: agentKnown, AllowedTools: []string{}},
		Tool:  policy.TokenTool{Name: req.Tool, Known: toolKnown},
		Request: policy.TokenRequest{
			Scope: req.Scope, RunID: req.RunID, RunValid: true,
			TTLSeconds: int64(req.TTL / time.Second), SingleUse: req.SingleUse,
			MaxRows: req.Constraints.MaxRows, MaxCost: req.Constraints.MaxCost, Expiry: req.Constraints.Expiry,
		},
		Credential: id.credential,
	}
	if agentKnown {
		in.Agent.AllowedTools = slices.Clone(agent.AllowedTools)
		in.Agent.ToolAllowed = toolKnown && slices.Contains(agent.AllowedTools, req.Tool)
	}
	if toolKnown {
		in.Tool.Class, in.Tool.Trust, in.Tool.BaseRisk = tool.Class, tool.Trust, tool.BaseRisk
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.EvalTimeout)
	d, err := s.cfg.Policy.EvalToken(ctx, in)
	cancel()
	if err != nil {
		return o.refuse(http.StatusServiceUnavailable, err, "policy evaluation failed")
	}
	if d.Decision != policy.Allow {
		o.status, o.reasons = http.StatusForbidden, d.Reasons
		return o
	}

	ttl := min(req.TTL, s.cfg.MaxTTL)
	if d.MaxTTL > 0 {
		ttl = min(ttl, d.MaxTTL)
	}
	tok, claims, err := capability.Mint(s.cfg.Signer, capability.MintRequest{
		Issuer: s.cfg.Issuer, Audience: s.cfg.Audience,
		Agent: agentID, Tool: req.Tool, Scope: req.Scope, Constraints: req.Constraints,
		RunID: req.RunID, TTL: ttl, MaxTTL: s.cfg.MaxTTL,
		PolicyVersion: s.cfg.PolicyVersion(), SingleUse: req.SingleUse,
	}, now)
	if err != nil {
		// The signer failed (a KMS outage, say): not the caller's fault.
		return o.refuse(http.StatusServiceUnavailable, reason.Wrap(reason.Internal, err, "token signing failed"), "")
	}
	o.status, o.reasons, o.claims = http.StatusCreated, d.Reasons, claims
	o.issued = &Issued{Token: tok, JTI: claims.ID, ExpiresAt: claims.ExpiresAt, AgentID: claims.AgentID, Tool: claims.Tool}
	return o
}

func refuse(status int, err error, fallback string) *outcome {
	return (&outcome{}).refuse(status, err, fallback)
}

// refuse records err as the refusal's one reason: its code and agent-safe
// message when it is a *reason.Error, else fallback with bad_request.
func (o *outcome) refuse(status int, err error, fallback string) *outcome {
	rs := policy.Reason{Code: string(reason.BadRequest), Message: fallback, ControlID: "AIS-CAP-01"}
	var re *reason.Error
	if errors.As(err, &re) {
		rs.Code, rs.Message = string(re.Code), re.Message
		if fallback != "" && re.Message != "" {
			rs.Message = fallback + ": " + re.Message
		}
	}
	o.status, o.reasons, o.issued, o.claims = status, []policy.Reason{rs}, nil, nil
	return o
}

// finish writes the audit line, then the response: a token whose audit line
// failed is never handed out.
func (s *Service) finish(w http.ResponseWriter, r *http.Request, start time.Time, o *outcome) {
	rec := s.record(r, start, o)
	if err := s.cfg.Audit.Write(rec); err != nil {
		s.cfg.Logger.Error("token service: audit write failed; refusing", "agent_id", o.agentID, "tool", o.tool, "err", err)
		s.requests.WithLabelValues(EventRefused, string(reason.AuditFailed)).Inc()
		writeJSON(w, http.StatusServiceUnavailable, Refused{Decision: policy.Deny, Reasons: []policy.Reason{{
			Code: string(reason.AuditFailed), Message: "the request could not be audited", ControlID: "AIS-OBS-01",
		}}})
		return
	}
	if o.issued != nil {
		s.requests.WithLabelValues(EventIssued, string(reason.PolicyAllow)).Inc()
		s.cfg.Logger.Info("capability token issued", "agent_id", o.agentID, "tool", o.tool, "run_id", o.runID,
			"jti", o.issued.JTI, "expires_at", o.issued.ExpiresAt, "decision_id", rec.DecisionID)
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusCreated, o.issued)
		return
	}
	code := ""
	if len(o.reasons) > 0 {
		code = o.reasons[0].Code
	}
	s.requests.WithLabelValues(EventRefused, code).Inc()
	s.cfg.Logger.Info("capability token refused", "agent_id", o.agentID, "tool", o.tool, "status", o.status,
		"reason", code, "decision_id", rec.DecisionID)
	if o.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="aisecops-token-service"`)
	}
	writeJSON(w, o.status, Refused{Decision: policy.Deny, Reasons: o.reasons})
}

func (s *Service) record(r *http.Request, start time.Time, o *outcome) *audit.Record {
	rec := &audit.Record{
		TS:            start.UTC(),
		DecisionID:    newID(),
		Event:         EventRefused,
		RequestID:     s.cfg.Redact(requestID(r)),
		RunID:         s.cfg.Redact(o.runID),
		AgentID:       o.agentID,
		Tool:          o.tool,
		ToolClass:     o.toolClass,
		Decision:      policy.Deny,
		HTTPStatus:    o.status,
		Reasons:       make([]audit.Reason, 0, len(o.reasons)),
		ControlIDs:    []string{},
		PolicyVersion: s.cfg.PolicyVersion(),
		LatencyUS:     s.cfg.Clock().Sub(start).Microseconds(),
	}
	if o.issued != nil {
		rec.Event, rec.Decision, rec.TokenJTI = EventIssued, policy.Allow, o.claims.ID
		rec.PolicyVersion = o.claims.PolicyVersion
	}
	for _, rs := range o.reasons {
		rec.Reasons = append(rec.Reasons, audit.Reason{Code: rs.Code, Message: rs.Message, ControlID: rs.ControlID})
		if rs.ControlID != "" && !slices.Contains(rec.ControlIDs, rs.ControlID) {
			rec.ControlIDs = append(rec.ControlIDs, rs.ControlID)
		}
	}
	return rec
}

// requestID is the caller's X-Request-Id when it is a plausible id; it is
// echoed into the audit line, so anything else is dropped.
func requestID(r *http.Request) string {
	v := r.Header.Get("X-Request-Id")
	if len(v) > maxIDLen || !validID(v, idChars) {
		return ""
	}
	return v
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

func writeJSON(w http.ResponseWriter, status int, v any) { httpapi.WriteJSON(w, status, v) }

// bound holds a token request to what the routes file grants the agent on the
// tool: a scope under one of the granted scopes (required when the grant
// lists any), and max_rows and max_cost no larger than granted (the granted
// values when the request names none), so the token states the bound it is
// held to.
func bound(req *Request, g config.Grant) error {
	if len(g.Scopes) > 0 {
		ok := false
		for _, sc := range g.Scopes {
			ok = ok || req.Scope == sc || strings.HasPrefix(req.Scope, sc+".")
		}
		if !ok {
			return reason.New(reason.TokenScope, "the requested scope is not within what the agent is granted on this tool")
		}
	}
	c := &req.Constraints
	if g.MaxRows > 0 {
		if c.MaxRows == nil {
			c.MaxRows = &g.MaxRows
		} else if *c.MaxRows > g.MaxRows {
			return reason.New(reason.TokenConstraint, "the requested max_rows is above what the agent is granted on this tool")
		}
	}
	if g.MaxCost > 0 {
		if c.MaxCost == nil {
			c.MaxCost = &g.MaxCost
		} else if *c.MaxCost > g.MaxCost {
			return reason.New(reason.TokenConstraint, "the requested max_cost is above what the agent is granted on this tool")
		}
	}
	return nil
}
