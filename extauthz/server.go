// Package extauthz owns the decision path: Envoy's CheckRequest in, a governed
// CheckResponse out. A Check runs as stages with types between them —
// CheckRequest → Plan → verified token → findings → run state → risk →
// policy decision → commit → audit → CheckResponse — and every failure of any
// stage is an explicit deny with a stable reason code and one audit line, never
// a gRPC error. The package decides; it does not own parsing details, token
// cryptography, Rego, run-state storage or inspection, which live in its
// subpackages and in riskstore behind the small interfaces declared here.
package extauthz

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// TokenVerifier verifies capability tokens.
type TokenVerifier interface {
	Verify(ctx context.Context, raw string, now time.Time) (*capability.Claims, error)
	CheckRoute(c *capability.Claims, routeTool string) error
}

// Revocations says whether a verified token was revoked (by jti or agent).
type Revocations interface {
	Check(c *capability.Claims) error
}

// PolicyEngine evaluates the Rego bundle.
type PolicyEngine interface {
	Eval(ctx context.Context, in *policy.Input) (policy.Decision, error)
	Version() string
	Escalation() []risk.EscalationRule
	Ready() bool
}

// Inspector inspects the outbound request for secrets, PII, destinations and
// injected instructions. Its error is a deny (reason.EgressBlocked).
type Inspector interface {
	Inspect(p *plan.Plan, tool config.Tool, untrustedContext bool) (Inspection, error)
}

// Config wires a Server. Logger, Registerer and Clock are passed in so tests
// run in parallel with their own.
type Config struct {
	Directory   *Directory
	Store       riskstore.Store
	Approvals   riskstore.Approvals
	Nonces      riskstore.Nonces
	Verifier    TokenVerifier
	Policy      PolicyEngine
	Inspector   Inspector   // nil: no egress inspection
	Revocations Revocations // nil: nothing is revoked
	Audit       audit.Sink

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Clock      func() time.Time

	// CheckTimeout bounds a Check when Envoy sent no deadline (default 1s).
	CheckTimeout time.Duration
	RunTTL       time.Duration // idle lifetime of a run's state (default 24h)
	ApprovalTTL  time.Duration // lifetime of an approval request (default 1h)
	Plan         plan.Options
	// RunCacheSize bounds the runs whose state this replica keeps between
	// Checks (default 65536; negative disables the cache, so every Check
	// reads the store first). RunCacheIdle is how long an entry lives (30s).
	RunCacheSize int
	RunCacheIdle time.Duration
}

// Server implements envoy.service.auth.v3.Authorization.
type Server struct {
	envoy_service_auth_v3.UnimplementedAuthorizationServer
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	runs    *runCache // nil when disabled
}

var _ envoy_service_auth_v3.AuthorizationServer = (*Server)(nil)

// New returns a Server. Every collaborator in cfg except Inspector is required.
func New(cfg Config) (*Server, error) {
	var missing []string
	for name, v := range map[string]any{"Directory": cfg.Directory, "Store": cfg.Store, "Approvals": cfg.Approvals,
		"Nonces": cfg.Nonces, "Verifier": cfg.Verifier, "Policy": cfg.Policy, "Audit": cfg.Audit} {
		if v == nil || isNilPtr(v) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, errors.New("extauthz: missing " + joinSorted(missing))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = time.Second
	}
	if cfg.RunTTL <= 0 {
		cfg.RunTTL = riskstore.DefaultTTL
	}
	if cfg.ApprovalTTL <= 0 {
		cfg.ApprovalTTL = time.Hour
	}
	if cfg.RunCacheSize == 0 {
		cfg.RunCacheSize = 1 << 16
	}
	if cfg.RunCacheIdle <= 0 {
		cfg.RunCacheIdle = 30 * time.Second
	}
	srv := &Server{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registerer)}
	if cfg.RunCacheSize > 0 {
		srv.runs = newRunCache(cfg.RunCacheSize, cfg.RunCacheIdle)
	}
	return srv, nil
}

// maxRedecide bounds how often one Check re-decides because the run moved
// under it (another replica committed first). The last decision commits
// without the version check: the store still enforces every budget and the
// halt threshold atomically, so a hot run makes progress and stays exact.
const maxRedecide = 1

// Ready reports whether Checks can be allowed (policy loaded).
func (s *Server) Ready() bool { return s.cfg.Policy.Ready() }

// Check decides one request. It never returns an error: every failure is a
// denial in the response.
func (s *Server) Check(ctx context.Context, req *envoy_service_auth_v3.CheckRequest) (resp *envoy_service_auth_v3.CheckResponse, err error) {
	c := &check{req: req, start: s.cfg.Clock(), id: newID("d_")}
	defer func() {
		// Last resort: a panic outside the stages (building the audit record or
		// the response) must neither allow nor take the server down.
		if r := recover(); r != nil {
			s.log.Error("check panicked after deciding; denying", "decision_id", c.id, "panic", r)
			s.metrics.auditFailures.Inc()
			resp, err = internalDeny(c.id), nil
		}
	}()
	c.now = c.start
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.CheckTimeout)
		defer cancel()
	}
	s.decide(ctx, c)
	rec := c.record(s.cfg.Policy.Version(), s.cfg.Clock().Sub(c.start))
	if err := s.cfg.Audit.Write(rec); err != nil {
		s.metrics.auditFailures.Inc()
		s.log.Error("audit write failed; denying", "decision_id", c.id, "err", err)
		c.fail(reason.Wrap(reason.AuditFailed, err, "the decision could not be audited"))
	}
	s.observe(c)
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.logDecision(ctx, c)
	}
	return c.response(), nil
}

// logDecision is the per-Check debug line: codes, counts and hashes only.
func (s *Server) logDecision(ctx context.Context, c *check) {
	attrs := []slog.Attr{slog.String("decision_id", c.id), slog.String("decision", c.decision), slog.Int("status", c.status)}
	if c.plan != nil {
		attrs = append(attrs, slog.String("tool", c.plan.Route.Tool), slog.String("run_id", c.plan.RunID))
	}
	codes := make([]string, len(c.reasons))
	for i, r := range c.reasons {
		codes[i] = r.Code
	}
	detectors := make([]string, len(c.findings))
	for i, f := range c.findings {
		detectors[i] = f.Detector + "@" + f.Location + "#" + f.Hash
	}
	attrs = append(attrs, slog.Any("reasons", codes), slog.Any("findings", detectors), slog.Float64("risk_total", c.riskTotal()))
	s.log.LogAttrs(ctx, slog.LevelDebug, "check decided", attrs...)
}

type stage struct {
	name string
	run  func(context.Context, *check) *reason.Error
}

// decide runs the stages in order; the first that denies ends the Check. The
// deciding stages run again, on the run's current state, when the store says
// the state they decided on was stale.
func (s *Server) decide(ctx context.Context, c *check) {
	defer func() {
		// A stage must never take the server down; a panic is an internal fault.
		if r := recover(); r != nil {
			s.log.Error("check panicked; denying", "decision_id", c.id, "panic", r)
			c.fail(reason.New(reason.Internal, "internal error"))
		}
	}()
	front := []stage{{"plan", s.parse}, {"token", s.authenticate}, {"egress", s.inspect}, {"run_state", s.loadRun}}
	back := []stage{{"risk", s.assess}, {"policy", s.evaluate}, {"enforce", s.enforce}}
	if !s.runStages(ctx, c, front) {
		return
	}
	for attempt := 0; ; attempt++ {
		c.redecide = false
		c.lastAttempt = attempt == maxRedecide
		if !s.runStages(ctx, c, back) || !c.redecide {
			return
		}
		if c.lastAttempt {
			c.fail(reason.New(reason.Internal, "the run state kept changing while this call was decided"))
			return
		}
		c.resetDecision()
	}
}

// runStages runs stages until one denies or settles the decision.
func (s *Server) runStages(ctx context.Context, c *check, stages []stage) bool {
	for _, st := range stages {
		if err := st.run(ctx, c); err != nil {
			c.traceStage(st.name, string(err.Code))
			c.fail(err)
			return false
		}
		c.traceStage(st.name, "ok")
		if c.finished {
			return false
		}
	}
	return true
}

func (s *Server) observe(c *check) {
	code := ""
	if len(c.reasons) > 0 {
		code = c.reasons[0].Code
	}
	tool := ""
	if c.plan != nil {
		tool = c.plan.Route.Tool
		if c.plan.Route.RouteVersion != "" {
			s.metrics.routeVersion.WithLabelValues(tool, c.plan.Route.RouteVersion).Set(1)
		}
	}
	s.metrics.decisions.WithLabelValues(c.decision, tool, code).Inc()
	s.metrics.latency.Observe(s.cfg.Clock().Sub(c.start).Seconds())
	if c.assessed {
		s.metrics.cumRisk.Observe(c.riskTotal())
	}
	for _, f := range c.findings {
		s.metrics.findings.WithLabelValues(f.Detector).Add(float64(f.Count))
	}
	if c.exceeded != "" && c.decision == policy.Deny {
		s.metrics.budget.WithLabelValues(c.exceeded).Inc()
	}
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return prefix + hex.EncodeToString(b[:])
}
