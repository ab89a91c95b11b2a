package extauthz

import (
	"context"
	"errors"
	"net/http"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// mode says which pipeline a Check runs.
type mode int

const (
	// modeCheck decides and, unless the request asked for a dry-run or an
	// explanation, commits.
	modeCheck mode = iota
	// modeExplain decides only, on the route the routes file gives the request.
	modeExplain
)

// outcome is one Check as its stages settle it: each stage's result, set once
// by run from the stage's return value, and the verdict. The audit record, the
// metrics and the response are built from it and nothing else.
type outcome struct {
	id    string
	start time.Time
	now   time.Time // the Check's clock reading, for every stage
	// bundle and dir are the one policy bundle and the one configuration
	// snapshot this Check decides with.
	bundle *policy.Bundle
	dir    *directory
	// dry: explain or dry-run. Nothing is committed, spent or requested.
	dry     bool
	explain bool

	plan       *plan.Plan
	who        *Principal
	findings   Findings
	run        RunView
	assessment *Assessment
	verdict    Verdict
	receipt    Receipt
	trace      []traceStage
	traceBuf   [12]traceStage // trace's first backing array: a Check has about ten stages

	// timed: stages record when they end (a tracer is configured).
	timed bool
	// traceID is the W3C trace id of the Check's span, or of the traceparent
	// the request carried when no tracer is configured ("" when neither).
	traceID string
}

type traceStage struct {
	Stage  string    `json:"stage"`
	Result string    `json:"result"`
	at     time.Time // when the stage ended, when timed
}

// stage records a stage's result in the trace; a non-nil err ends the Check
// with a deny carrying its code (true).
func (o *outcome) stage(name string, err *reason.Error) bool {
	st := traceStage{Stage: name, Result: "ok"}
	if err != nil {
		st.Result = string(err.Code)
	}
	if o.timed {
		st.at = time.Now()
	}
	o.trace = append(o.trace, st)
	if err != nil {
		o.fail(err)
		return true
	}
	return false
}

// fail turns the Check into a denial carrying err's code. An internal fault
// after commit (an audit failure) still denies: nothing is allowed without its
// audit record.
func (o *outcome) fail(err *reason.Error) {
	o.verdict = Verdict{
		Decision: policy.Deny,
		Reasons:  []policy.Reason{{Code: string(err.Code), Message: err.Message, ControlID: reason.ControlID(err.Code)}},
		Status:   reason.HTTPStatus(err.Code),
		Input:    o.verdict.Input,
		Policy:   o.verdict.Policy,
	}
}

// riskTotal is the run's cumulative risk including this step: as committed,
// as first committed for a retry, or as assessed.
func (o *outcome) riskTotal() float64 {
	switch {
	case o.receipt.Committed || o.receipt.Duplicate:
		return o.receipt.RiskTotal
	case o.assessment != nil:
		return o.run.State.RiskTotal + linkedRisk(o.run.Links) + o.assessment.Factors.Step
	}
	return 0
}

// maxRedecide bounds how often one Check decides again because the run moved
// under it (another replica committed first). The last decision commits
// without the version check: the store still enforces every budget and the
// halt threshold atomically, so a hot run makes progress and stays exact.
const maxRedecide = 1

// run is the pipeline. Each stage gets what its signature names and returns
// its value or a denial; run records both in o. The deciding stages (assess,
// evaluate) run again on the run's current state when the commit finds the
// state they decided on stale.
func (s *Server) run(ctx context.Context, o *outcome, req *envoy_service_auth_v3.CheckRequest, m mode) {
	defer func() {
		// A stage must never take the server down; a panic is an internal fault.
		if r := recover(); r != nil {
			s.log.Error("check panicked; denying", "decision_id", o.id, "panic", r)
			o.fail(reason.New(reason.Internal, "internal error"))
		}
	}()
	o.explain = m == modeExplain
	o.dry = o.explain
	p, err := parse(req, s.cfg.Plan, o.dir, o.explain)
	o.plan = p
	if p != nil && (p.DryRun || p.Explain) {
		o.dry = true
	}
	if o.stage("plan", err) {
		return
	}
	who, err := authenticate(ctx, p, s.cfg.Verifier, s.cfg.Revocations, o.dir, o.now)
	if who != nil {
		o.who = who
	}
	if o.stage("token", err) || o.stage("constraints", checkConstraints(p, who)) {
		return
	}
	f, err := inspect(ctx, p, o.dir.tools[p.Route.Tool], s.cfg.Inspector)
	o.findings = f
	if o.stage("egress", err) {
		return
	}
	rv, prior, lerr := loadRun(ctx, s.cfg.Store, s.runs, who, o.now, !o.dry)
	o.run = rv
	if lerr != nil {
		err = s.storeFault("load", who.Run, lerr, "run state unavailable")
	}
	if o.stage("run_state", err) {
		return
	}
	if prior != nil && !o.dry {
		o.retried(prior)
		return
	}
	links, lerr := linkRuns(ctx, s.cfg.Store, who, p.Provenance)
	if lerr != nil {
		err = s.storeFault("load", who.Run, lerr, "run state unavailable")
	}
	o.run.Links = links
	if o.stage("link", err) {
		return
	}
	for attempt := 0; ; attempt++ {
		if !s.decide(ctx, o) || o.dry {
			return
		}
		again, err := s.enforce(ctx, o, attempt == maxRedecide)
		if o.stage("enforce", err) || !again {
			return
		}
		if attempt == maxRedecide {
			o.fail(reason.New(reason.Internal, "the run state kept changing while this call was decided"))
			return
		}
	}
}

// decide runs the deciding stages on o's current run view: assess, then
// evaluate. It reports whether the Check goes on to enforce.
func (s *Server) decide(ctx context.Context, o *outcome) bool {
	a, err := assess(o.plan, o.who, o.findings, o.run, o.bundle.Escalation(), s.cfg.RunTTL, o.id, o.now)
	o.assessment = &a
	if o.stage("risk", err) {
		return false
	}
	ap, err := s.presentedApproval(ctx, o.plan, o.who, o.receipt)
	if o.stage("approval", err) {
		return false
	}
	in := policyInput(o.now, o.plan, o.who, o.findings, o.run, o.assessment, ap)
	v, err := evaluate(ctx, o.bundle, in)
	o.verdict = v
	return !o.stage("policy", err)
}

// retried answers an Envoy retry of a request already committed as it was
// answered the first time, without counting it again.
func (o *outcome) retried(p *riskstore.Prior) {
	o.verdict = Verdict{
		Decision: policy.Allow,
		Reasons:  []policy.Reason{{Code: string(reason.DuplicateRequest), Message: "retry of a request already allowed; not counted again"}},
		Status:   http.StatusOK,
	}
	o.id = p.DecisionID
	o.receipt = Receipt{Duplicate: true, RiskTotal: p.RiskTotal}
}

// asReason returns err as a *reason.Error, wrapping a foreign error with code.
func asReason(err error, code reason.Code) *reason.Error {
	if err == nil {
		return nil
	}
	var re *reason.Error
	if errors.As(err, &re) {
		return re
	}
	return reason.Wrap(code, err, "request denied")
}
