package extauthz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// Receipt is what enforcing a verdict did to shared state.
type Receipt struct {
	Committed    bool    // the step was recorded on the run
	Duplicate    bool    // a retry of a request already committed: nothing recorded again
	RiskTotal    float64 // the run's risk after the step (or after its first commit, for a retry)
	RunCalls     int64   // the run's tool calls after the step, as the store counted them (0: unknown)
	JTISpent     bool    // the single-use token was spent by this Check
	ApprovalUsed bool    // the presented approval was consumed by this Check
}

// enforce carries out a verdict, in small steps: confirm a denial decided on
// cached state, request an approval, or — for an allow — spend the token,
// consume the approval and commit the step. It reports whether the Check must
// decide again on a fresher state. Explain and dry-run never reach it.
func (s *Server) enforce(ctx context.Context, o *outcome, last bool) (again bool, _ *reason.Error) {
	if o.verdict.Decision != policy.Allow && o.run.Cached {
		// The run may have moved on another replica, or this may be Envoy
		// retrying a request already allowed: confirm against the store.
		moved, err := s.confirm(ctx, o)
		if err != nil || moved || o.receipt.Duplicate {
			return moved, err
		}
	}
	switch o.verdict.Decision {
	case policy.RequireApproval:
		id, err := requestApproval(ctx, s.cfg.Approvals, o, s.cfg.ApprovalTTL, s.secretMask())
		if err != nil && err.Code == reason.StoreUnavailable {
			s.metrics.storeErrors.WithLabelValues("approval_create").Inc()
		}
		o.verdict.ApprovalID = id
		return false, err
	case policy.Allow:
	default:
		return false, nil
	}
	if err := ctx.Err(); err != nil {
		// Envoy has given up on this Check: commit nothing so the abandoned
		// call costs the run nothing.
		return false, reason.Wrap(reason.DeadlineExceeded, err, "the check deadline passed before commit")
	}
	if o.assessment.Protocol {
		return false, nil // protocol traffic: no token spent, no step recorded
	}
	spend := !o.receipt.JTISpent && mustSpend(o.who.Claims, o.verdict.Obligations)
	// A store that commits nonces spends the token in the commit itself (one
	// round trip); otherwise it is spent first.
	inCommit := spend && s.commitsNonces
	if spend && !inCommit {
		if err := spendToken(ctx, s.cfg.Nonces, o.who.Claims, o.id, o.now); err != nil {
			if err.Code == reason.StoreUnavailable {
				s.metrics.storeErrors.WithLabelValues("nonce").Inc()
			}
			if err.Code == reason.TokenReplayed && o.who.IdemKey != "" {
				// Envoy retrying a call this token already made is answered
				// as the first time, not as a replay.
				if _, prior, rerr := readRun(ctx, s.cfg.Store, s.runs, o.who, o.now); rerr == nil && prior != nil {
					o.retried(prior)
					return false, nil
				}
			}
			return false, err
		}
		o.receipt.JTISpent = true // a re-decision after a stale commit must not spend it twice
	}
	if o.verdict.Input != nil && o.verdict.Input.Approval.Valid && !o.receipt.ApprovalUsed {
		if err := consumeApproval(ctx, s.cfg.Approvals, o.plan.ApprovalID, o.who.Binding); err != nil {
			if err.Code == reason.StoreUnavailable {
				s.metrics.storeErrors.WithLabelValues("approval_consume").Inc()
			}
			return false, err
		}
		o.receipt.ApprovalUsed = true
	}
	return s.commit(ctx, o, last, inCommit)
}

// confirm re-reads a run whose cached state led to a denial: a moved version
// means deciding again; a committed request id is answered as before.
func (s *Server) confirm(ctx context.Context, o *outcome) (moved bool, _ *reason.Error) {
	version := o.run.State.Version
	rv, prior, err := readRun(ctx, s.cfg.Store, s.runs, o.who, o.now)
	if err != nil {
		return false, s.storeFault("load", o.who.Run, err, "run state unavailable")
	}
	rv.Links = o.run.Links
	o.run = rv
	if prior != nil {
		o.retried(prior)
		return false, nil
	}
	return rv.State.Version != version, nil
}

// requestApproval records a pending approval for this exact call and returns
// its id.
func requestApproval(ctx context.Context, st ApprovalStore, o *outcome, ttl time.Duration, mask func(string) string) (string, *reason.Error) {
	ap := riskstore.Approval{ID: newID("apr_"), RunID: o.who.Run.ID, AgentID: o.who.Agent.ID, Tool: o.plan.Route.Tool,
		Binding: o.who.Binding, DecisionID: o.id, Risk: o.riskTotal(), Status: riskstore.ApprovalPending, CreatedAt: o.now,
		Detail: approvalDetail(o.plan, mask)}
	for _, r := range o.verdict.Reasons {
		ap.Reasons = append(ap.Reasons, r.Code)
	}
	if err := st.CreateApproval(ctx, ap, ttl); err != nil {
		if errors.Is(err, riskstore.ErrLimit) {
			return "", reason.Wrap(reason.ApprovalLimit, err, "too many approvals are pending for this run or agent")
		}
		return "", reason.Wrap(reason.StoreUnavailable, err, "approval store unavailable")
	}
	return ap.ID, nil
}

// mustSpend reports whether the call spends its token: a single-use token,
// or the policy's consume_jti obligation.
func mustSpend(c *capability.Claims, obligations map[string]any) bool {
	return c != nil && (c.SingleUse || obligations["consume_jti"] != nil)
}

// spendToken records the token's jti as used until it expires.
func spendToken(ctx context.Context, n NonceStore, c *capability.Claims, decisionID string, now time.Time) *reason.Error {
	first, err := n.UseOnce(ctx, "jti:"+c.ID, decisionID, tokenSpendTTL(c, now))
	if err != nil {
		return reason.Wrap(reason.StoreUnavailable, err, "token store unavailable")
	}
	if !first {
		return reason.New(reason.TokenReplayed, "this single-use token was used before")
	}
	return nil
}

// tokenSpendTTL is how long a spent jti is remembered: past the token's
// expiry, after which the verifier refuses it anyway.
func tokenSpendTTL(c *capability.Claims, now time.Time) time.Duration {
	return max(c.ExpiresAt.Sub(now)+time.Minute, time.Minute)
}

// consumeApproval marks the approval used, atomically and only for binding.
func consumeApproval(ctx context.Context, st ApprovalStore, id, binding string) *reason.Error {
	_, err := st.ConsumeApproval(ctx, id, binding)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, riskstore.ErrConflict) || errors.Is(err, riskstore.ErrNotFound):
		return reason.New(reason.ApprovalInvalid, "the approval was already used or does not match this call")
	}
	return reason.Wrap(reason.StoreUnavailable, err, "approval store unavailable")
}

// commit records the allowed step. It reports whether the Check must decide
// again (the run moved under it).
//
// spend: the store spends the single-use token within the commit
// (riskstore.NonceCommitter); a token another call spent is token_replayed.
func (s *Server) commit(ctx context.Context, o *outcome, last, spend bool) (bool, *reason.Error) {
	a, run := o.assessment, o.who.Run
	step := a.Step
	if last {
		step.ExpectVersion = riskstore.AnyVersion
	}
	if spend {
		step.Nonce, step.NonceOwner, step.NonceTTL = "jti:"+o.who.Claims.ID, o.id, tokenSpendTTL(o.who.Claims, o.now)
	}
	res, err := s.cfg.Store.Commit(ctx, run, step, a.Limits, a.TTL)
	if err != nil && step.RequestID != "" && ctx.Err() == nil {
		// The outcome is unknown (a reply lost or late). The idempotency key
		// makes asking again safe: a commit that did land comes back as a
		// Duplicate of this very decision instead of a second debit.
		s.metrics.storeErrors.WithLabelValues("commit_retried").Inc()
		res, err = s.cfg.Store.Commit(ctx, run, step, a.Limits, a.TTL)
	}
	if err != nil {
		s.runs.drop(run) // the run may have moved: read it next time
		return false, s.storeFault("commit", run, err, "run state unavailable")
	}
	s.runs.put(run, res.State, o.now)
	if res.Outcome == riskstore.Replayed {
		if o.who.IdemKey != "" {
			// Envoy retrying a call this token already made is answered as
			// the first time, not as a replay.
			if _, prior, rerr := readRun(ctx, s.cfg.Store, s.runs, o.who, o.now); rerr == nil && prior != nil {
				o.retried(prior)
				return false, nil
			}
		}
		return false, reason.New(reason.TokenReplayed, "this single-use token was used before")
	}
	again, rerr := o.settle(res)
	if spend && o.receipt.Committed {
		o.receipt.JTISpent = true
	}
	return again, rerr
}

// settle records a commit's result in the outcome: a receipt, a re-decision
// on the state the store returned, or the store's refusal as a denial.
func (o *outcome) settle(res riskstore.CommitResult) (again bool, _ *reason.Error) {
	a := o.assessment
	switch res.Outcome {
	case riskstore.Committed:
		o.receipt.Committed, o.receipt.RiskTotal = true, res.State.RiskTotal+linkedRisk(o.run.Links)
		o.receipt.RunCalls = res.State.ToolCalls
		return false, nil
	case riskstore.Duplicate:
		if res.Prior == nil {
			return false, reason.New(reason.Internal, "the store answered a duplicate without its prior decision")
		}
		if res.Prior.DecisionID == o.id {
			// Our own commit, whose reply was lost the first time.
			o.receipt.Committed, o.receipt.RiskTotal = true, res.Prior.RiskTotal
			return false, nil
		}
		o.retried(res.Prior)
		return false, nil
	case riskstore.Stale:
		// Another replica moved the run (or it was not new): decide again on
		// the state the store returned, without reading it again. The linked
		// runs stay. A stale commit does not touch the run, so the view is
		// Cached: a denial is confirmed with a Load, which keeps the run alive
		// as reading it always has (an exhausted run must not expire).
		o.run = RunView{State: res.State, Links: o.run.Links, Cached: true}
		return true, nil
	case riskstore.Refused:
		a.Exceeded = res.Limit
		switch res.Limit {
		case riskstore.BudgetRisk:
			return false, reason.New(reason.RiskHalt, "the run's cumulative risk would pass the halt threshold")
		case riskstore.RunOwned:
			return false, reason.New(reason.RunNotOwned, "the run belongs to another agent")
		}
		return false, reason.New(reason.BudgetExceeded, "the %s budget is spent", res.Limit)
	}
	return false, reason.New(reason.Internal, "unexpected commit outcome")
}

// maxDetailArguments bounds the arguments an approval shows its approver.
const maxDetailArguments = 16 << 10

// secretMask is the Inspector's MaskSecrets, or nil when it has none.
func (s *Server) secretMask() func(string) string {
	if m, ok := s.cfg.Inspector.(interface{ MaskSecrets(string) string }); ok {
		return m.MaskSecrets
	}
	return nil
}

// approvalDetail is what the approver is shown of the held call: the method,
// the normalised path and the arguments, every string (keys included) that
// carries a secret masked by mask. Without a mask there is nothing to show
// safely, and no arguments are kept; arguments over maxDetailArguments are
// left out and their size said. The approval binds the exact request
// (Binding) whatever is shown. Only approvers read it (httpapi).
func approvalDetail(p *plan.Plan, mask func(string) string) map[string]any {
	d := map[string]any{"method": p.Method, "path": p.Path, "tool": p.Call0().Tool}
	args := p.Call0().Arguments
	switch {
	case mask == nil:
		return d
	case len(args) > maxDetailArguments:
		d["arguments_omitted_bytes"] = len(args)
		return d
	case len(args) == 0:
		return d
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return d
	}
	d["arguments"] = maskStrings(v, mask)
	return d
}

func maskStrings(v any, mask func(string) string) any {
	switch x := v.(type) {
	case string:
		return mask(x)
	case []any:
		for i := range x {
			x[i] = maskStrings(x[i], mask)
		}
		return x
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[mask(k)] = maskStrings(e, mask)
		}
		return out
	}
	return v
}
