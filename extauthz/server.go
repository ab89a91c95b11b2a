// Package extauthz owns the decision path: Envoy's CheckRequest in, a governed
// CheckResponse out. A Check is a chain of values, each produced by one stage
// from the ones before it —
//
//	CheckRequest → plan.Plan → Principal → Findings → RunView → Assessment →
//	Verdict → Receipt → CheckResponse + audit record
//
// — over one snapshot of the policy bundle and one of the routes file, taken
// when the Check starts. Deciding and committing are separate: Explain and
// dry-run run the deciding stages only, so they cannot commit anything by
// construction. Every failure of any stage is an explicit deny with a stable
// reason code and one audit record, never a gRPC error.
//
// The package decides; it does not own parsing details, token cryptography,
// Rego, run-state storage or inspection, which live in its subpackages and in
// riskstore behind the small interfaces declared here.
package extauthz

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
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

// Policies hands out the serving policy bundle (nil when none is loaded). A
// Check takes it once: its decision, risk escalation and audited version all
// come from that one bundle.
type Policies interface {
	Current() *policy.Bundle
}

// Inspector inspects the outbound request for secrets, PII, destinations and
// injected instructions. Its error is a deny (reason.EgressBlocked).
type Inspector interface {
	// ctx bounds the inspection: it stops when ctx ends.
	Inspect(ctx context.Context, p *plan.Plan, tool config.Tool, untrustedContext bool) (Inspection, error)
	// Redact returns an agent-written string as it may be stored: unchanged,
	// or a keyed hash when it carries a secret or personal data.
	Redact(v string) string
}

// RunStore is the run state as the Check path uses it.
type RunStore interface {
	Load(ctx context.Context, run riskstore.RunRef, requestID string) (riskstore.State, error)
	Commit(ctx context.Context, run riskstore.RunRef, step riskstore.Step, limits riskstore.Limits, ttl time.Duration) (riskstore.CommitResult, error)
}

// ApprovalStore is the approvals as the Check path uses them.
type ApprovalStore interface {
	CreateApproval(ctx context.Context, a riskstore.Approval, ttl time.Duration) error
	GetApproval(ctx context.Context, id string) (riskstore.Approval, error)
	ConsumeApproval(ctx context.Context, id, binding string) (riskstore.Approval, error)
}

// StepAppender takes a run's timeline steps without blocking.
type StepAppender interface {
	AppendStep(run riskstore.RunRef, meta riskstore.StepMeta, record []byte)
}

// NonceStore records single-use token ids.
type NonceStore interface {
	UseOnce(ctx context.Context, id, owner string, ttl time.Duration) (first bool, err error)
}

var (
	_ RunStore      = (*riskstore.Memory)(nil)
	_ ApprovalStore = (*riskstore.Memory)(nil)
	_ NonceStore    = (*riskstore.Memory)(nil)
	_ RunStore      = (*riskstore.Redis)(nil)
	_ ApprovalStore = (*riskstore.Redis)(nil)
	_ NonceStore    = (*riskstore.Redis)(nil)
	_ Policies      = (*policy.Engine)(nil)
)

// Config wires a Server. Logger, Registerer and Clock are passed in so tests
// run in parallel with their own.
type Config struct {
	Directory   *Directory
	Store       RunStore
	Approvals   ApprovalStore
	Nonces      NonceStore
	Verifier    TokenVerifier
	Policy      Policies
	Inspector   Inspector   // nil: no egress inspection
	Revocations Revocations // nil: nothing is revoked
	Audit       audit.Sink
	// Sealer, when set, makes every record replayable: the policy input goes
	// into the record with the call's arguments sealed (audit.Record.Input).
	Sealer Sealer
	// StepLog, when set, receives every audited Check's timeline step (the
	// store's shared per-run log, so runs read back whole across replicas).
	StepLog StepAppender

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Clock      func() time.Time
	// Tracer, when set, traces every Check (a span per Check, a child per
	// stage, parented to the request's traceparent). nil: tracing is off
	// and costs nothing.
	Tracer trace.Tracer

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
	// commitsNonces: the run store spends single-use tokens within the
	// commit (riskstore.NonceCommitter), so Nonces is not asked.
	commitsNonces bool
}

var _ envoy_service_auth_v3.AuthorizationServer = (*Server)(nil)

// New returns a Server. Every collaborator in cfg except Inspector and
// Revocations is required.
func New(cfg Config) (*Server, error) {
	required := []struct {
		name string
		nil  bool
	}{
		{"Approvals", cfg.Approvals == nil}, {"Audit", cfg.Audit == nil}, {"Directory", cfg.Directory == nil},
		{"Nonces", cfg.Nonces == nil}, {"Policy", cfg.Policy == nil}, {"Store", cfg.Store == nil},
		{"Verifier", cfg.Verifier == nil},
	}
	var missing []error
	for _, r := range required {
		if r.nil {
			missing = append(missing, errors.New(r.name))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("extauthz: missing collaborators: %w", errors.Join(missing...))
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
	// Only when the run store is the nonce store: a token must be spent in
	// one place.
	if nc, ok := cfg.Store.(riskstore.NonceCommitter); ok && any(cfg.Store) == any(cfg.Nonces) {
		srv.commitsNonces = nc.CommitsNonces()
	}
	if cfg.RunCacheSize > 0 {
		srv.runs = newRunCache(cfg.RunCacheSize, cfg.RunCacheIdle)
	}
	return srv, nil
}

// Ready reports whether Checks can be allowed (policy loaded).
func (s *Server) Ready() bool { return s.cfg.Policy.Current() != nil }

// Check decides one request and, unless it is a dry-run, commits it. It never
// returns an error: every failure is a denial in the response.
func (s *Server) Check(ctx context.Context, req *envoy_service_auth_v3.CheckRequest) (resp *envoy_service_auth_v3.CheckResponse, err error) {
	o := s.begin()
	defer func() {
		// Last resort: a panic outside the stages (building the audit record or
		// the response) must neither allow nor take the server down.
		if r := recover(); r != nil {
			s.log.Error("check panicked after deciding; denying", "decision_id", o.id, "panic", r)
			s.metrics.auditFailures.Inc()
			resp, err = internalDeny(o.id), nil
		}
	}()
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	ctx, span := s.startSpan(ctx, o, req)
	s.run(ctx, o, req, modeCheck)
	s.finish(ctx, o)
	s.endSpan(ctx, span, o)
	return o.response(), nil
}

// Explain decides req as Check would, without committing anything, and
// returns the decision with its full trace. The route is taken from the
// routes file (the request's host and path), never from the caller's context
// extensions; the explain and dry-run headers do not matter.
func (s *Server) Explain(ctx context.Context, req *envoy_service_auth_v3.CheckRequest) (b Body) {
	o := s.begin()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("explain panicked; denying", "decision_id", o.id, "panic", r)
			b = Body{Decision: policy.Deny, DecisionID: o.id, Reasons: []policy.Reason{{Code: string(reason.Internal), Message: "internal error"}}}
		}
	}()
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	ctx, span := s.startSpan(ctx, o, req)
	s.run(ctx, o, req, modeExplain)
	s.finish(ctx, o)
	s.endSpan(ctx, span, o)
	return o.body()
}

func (s *Server) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.cfg.CheckTimeout)
}

// begin starts an outcome on one snapshot of the policy and the directory.
func (s *Server) begin() *outcome {
	now := s.cfg.Clock()
	o := &outcome{id: newID("d_"), start: now, now: now, bundle: s.cfg.Policy.Current(), dir: s.cfg.Directory.current()}
	o.trace = o.traceBuf[:0]
	return o
}

// finish writes the audit record (a failure turns the decision into a deny),
// then observes the outcome.
func (s *Server) finish(ctx context.Context, o *outcome) {
	rec := s.auditRecord(o)
	if err := sealInput(rec, &o.verdict, s.cfg.Sealer, s.redactor()); err != nil {
		s.log.Error("sealing the policy input failed; denying", "decision_id", o.id, "err", err)
		o.fail(reason.Wrap(reason.AuditFailed, err, "the decision could not be recorded for replay"))
		rec = s.auditRecord(o)
	}
	if err := s.cfg.Audit.Write(rec); err != nil {
		s.metrics.auditFailures.Inc()
		s.log.Error("audit write failed; denying", "decision_id", o.id, "err", err)
		o.fail(reason.Wrap(reason.AuditFailed, err, "the decision could not be audited"))
	} else if s.cfg.StepLog != nil && o.who != nil && o.who.Run.ID != "" {
		if b, err := json.Marshal(rec.Step()); err == nil {
			meta := riskstore.StepMeta{TS: rec.TS, Decision: rec.Decision, CumulativeRisk: rec.CumulativeRisk, Committed: rec.Committed}
			s.cfg.StepLog.AppendStep(o.who.Run, meta, b)
		}
	}
	s.observe(o)
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.logDecision(ctx, o)
	}
}

// auditRecord is o's audit record with agent-written strings redacted.
func (s *Server) auditRecord(o *outcome) *audit.Record {
	rec := o.record(s.cfg.Clock().Sub(o.start))
	if redact := s.redactor(); redact != nil {
		redactRecord(rec, redact)
	}
	return rec
}

// redactor is the Inspector's Redact, or nil without one.
func (s *Server) redactor() func(string) string {
	if in := s.cfg.Inspector; in != nil {
		return in.Redact
	}
	return nil
}

// logDecision is the per-Check debug line: codes, counts and hashes only.
func (s *Server) logDecision(ctx context.Context, o *outcome) {
	attrs := []slog.Attr{slog.String("decision_id", o.id), slog.String("decision", o.verdict.Decision), slog.Int("status", o.verdict.Status)}
	if o.plan != nil {
		attrs = append(attrs, slog.String("tool", o.plan.Route.Tool))
	}
	if o.who != nil {
		run := o.who.Run.ID
		if in := s.cfg.Inspector; in != nil {
			run = in.Redact(run)
		}
		attrs = append(attrs, slog.String("run_id", run))
	}
	codes := make([]string, len(o.verdict.Reasons))
	for i, r := range o.verdict.Reasons {
		codes[i] = r.Code
	}
	detectors := make([]string, len(o.findings.List))
	for i, f := range o.findings.List {
		detectors[i] = f.Detector + "@" + f.Location + "#" + f.Hash
	}
	attrs = append(attrs, slog.Any("reasons", codes), slog.Any("findings", detectors), slog.Float64("risk_total", o.riskTotal()))
	s.log.LogAttrs(ctx, slog.LevelDebug, "check decided", attrs...)
}

// observe records the outcome in the metrics. Every label value comes from the
// routes file or from the product's own vocabulary (decisions, reason codes,
// detectors, budgets), never from the caller.
func (s *Server) observe(o *outcome) {
	code := ""
	if len(o.verdict.Reasons) > 0 {
		code = o.verdict.Reasons[0].Code
	}
	tool := ""
	if o.plan != nil && o.plan.Route.Tool != "" {
		tool = o.plan.Route.Tool
		s.metrics.routeVersion.WithLabelValues(tool, o.plan.Route.RouteVersion).Set(1)
	}
	s.metrics.decisions.WithLabelValues(o.verdict.Decision, tool, code).Inc()
	s.metrics.latency.Observe(s.cfg.Clock().Sub(o.start).Seconds())
	if o.assessment != nil {
		s.metrics.cumRisk.Observe(o.riskTotal())
	}
	for _, f := range o.findings.List {
		s.metrics.findings.WithLabelValues(f.Detector).Add(float64(f.Count))
	}
	if a := o.assessment; a != nil && a.Exceeded != "" && o.verdict.Decision == policy.Deny {
		s.metrics.budget.WithLabelValues(a.Exceeded).Inc()
	}
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return prefix + hex.EncodeToString(b[:])
}
