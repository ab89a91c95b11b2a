// Package riskstore owns the state of agent runs: cumulative chain risk, budget
// consumption, a bounded window of recent steps for the escalation rules, the
// request ids already committed (idempotency), approvals and single-use token ids.
//
// A Commit checks every limit and records the step atomically, once per request
// id, so concurrent Checks on one run and Envoy retries cannot overspend a budget
// or debit twice. A Commit can also be made conditional on the run's version
// (compare-and-set), so a server that caches a run's state can decide without a
// Load and still never commit a decision taken on a state that has moved: one
// round trip per Check. The package knows nothing of Envoy, tokens or policy,
// and must not import any extauthz package.
package riskstore

import (
	"context"
	"errors"
	"time"
)

// Window is how many recent steps a run keeps for the escalation rules. The
// window, not the whole history, keeps a Check's cost the same at step 1 and at
// step 1,000.
const Window = 16

// DefaultTTL is how long an idle run's state is kept.
const DefaultTTL = 24 * time.Hour

// Limits are checked atomically by Commit. A zero limit is unlimited.
type Limits struct {
	MaxToolCalls       int64
	MaxWriteOperations int64
	MaxExecutionTime   time.Duration
	MaxCostMicros      int64   // money in integer micro-units: 1.00 = 1_000_000
	MaxRisk            float64 // halt threshold: refuse a step that would take the total above it
}

// Budget names, as used in Limits, audit lines and reason messages.
const (
	BudgetToolCalls     = "max_tool_calls"
	BudgetWriteOps      = "max_write_operations"
	BudgetExecutionTime = "max_execution_time"
	BudgetCost          = "max_cost"
	BudgetRisk          = "max_risk"
)

// StepSummary is what a run remembers of one committed step.
type StepSummary struct {
	Tool      string    `json:"tool"`
	Class     string    `json:"class"`
	Trust     string    `json:"trust"`
	Untrusted bool      `json:"untrusted,omitempty"` // the step's context carried untrusted provenance
	Risk      float64   `json:"risk"`
	At        time.Time `json:"at"`
}

// Prior is what was recorded for a request id already committed.
type Prior struct {
	DecisionID string  `json:"decision_id"`
	StepRisk   float64 `json:"step_risk"`
	RiskTotal  float64 `json:"risk_total"`
}

// State is a run as read before deciding.
type State struct {
	RunID      string
	ToolCalls  int64
	WriteOps   int64
	CostMicros int64
	RiskTotal  float64
	StartedAt  time.Time     // zero until the run's first commit
	Recent     []StepSummary // oldest first, at most Window entries
	Prior      *Prior        // set by Load when the request id was already committed
	// Version is the number of commits of the run: 0 for a run never committed
	// (or expired), +1 per Committed step, unchanged by any other outcome. A
	// caller that decided on a State passes its Version as Step.ExpectVersion so
	// that the decision is committed only if nobody committed in between.
	Version int64
}

// AnyVersion as Step.ExpectVersion commits whatever the run's version is.
const AnyVersion int64 = -1

// Step is one allowed tool call to record.
type Step struct {
	RequestID  string
	DecisionID string
	Summary    StepSummary
	Write      bool
	CostMicros int64
	// ExpectVersion is the State.Version the step was decided on. If the run's
	// version differs, Commit changes nothing and answers Stale with the current
	// State, so the caller can decide again without another round trip.
	//
	// The zero value means version 0, "decided on an empty run": it is not a
	// wildcard. A caller that does not decide on a State it read passes
	// AnyVersion. Any other negative value is an error.
	ExpectVersion int64
}

// Outcome of a Commit.
type Outcome int

// Outcomes are checked in this order: Duplicate, then Stale, then Refused. A
// retry of a committed step is Duplicate even though its expected version is
// now old; a stale decision never reports a limit, since the limits were
// checked against a state that is gone.
const (
	Committed Outcome = iota + 1
	Duplicate         // the request id was committed before; nothing changed
	Refused           // a limit would be exceeded; nothing changed
	Stale             // the run's version is not Step.ExpectVersion; nothing changed
)

func (o Outcome) String() string {
	switch o {
	case Committed:
		return "committed"
	case Duplicate:
		return "duplicate"
	case Refused:
		return "refused"
	case Stale:
		return "stale"
	}
	return "unknown"
}

// CommitResult reports what a Commit did.
type CommitResult struct {
	Outcome Outcome
	Limit   string // for Refused: the Budget* name of the first limit hit
	// State is the whole run (counters, RiskTotal, StartedAt, Recent, Version)
	// after the commit, or as it stands when nothing changed: what a Load would
	// return, without Prior. A caller may decide its next step on it.
	State State
	Prior *Prior // for Duplicate
}

// Store is the run state seen by the authz server.
type Store interface {
	// Load reads a run. requestID, when not empty, is looked up so that an Envoy
	// retry of a committed Check is answered as before (State.Prior).
	Load(ctx context.Context, runID, requestID string) (State, error)
	// Commit records step if the run is at step.ExpectVersion (unless AnyVersion)
	// and every limit allows it, atomically, in one round trip, and at most once
	// per step.RequestID. now is the Check's clock reading; ttl the run's idle
	// lifetime. Any error means "outcome unknown": the caller must deny.
	Commit(ctx context.Context, runID string, step Step, limits Limits, now time.Time, ttl time.Duration) (CommitResult, error)
}

// ErrNotFound is returned for an unknown approval.
var ErrNotFound = errors.New("riskstore: not found")

// ErrConflict is returned when an approval is not in a state that allows the change.
var ErrConflict = errors.New("riskstore: conflict")

// Approval states.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalRejected = "rejected"
	ApprovalUsed     = "used"
)

// Approval is a request for a human decision on one exact plan.
type Approval struct {
	ID         string    `json:"id"`
	RunID      string    `json:"run_id"`
	AgentID    string    `json:"agent_id"`
	Tool       string    `json:"tool"`
	PlanHash   string    `json:"plan_hash"` // hash of tool + arguments + run
	DecisionID string    `json:"decision_id"`
	Risk       float64   `json:"risk"`
	Reasons    []string  `json:"reasons,omitempty"`
	Status     string    `json:"status"`
	CreatedAt  time.Time `json:"created_at"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	DecidedBy  string    `json:"decided_by,omitempty"`
	Why        string    `json:"why,omitempty"`
}

// Approvals holds approvals. An approval is bound to one plan and used once.
type Approvals interface {
	CreateApproval(ctx context.Context, a Approval, ttl time.Duration) error
	GetApproval(ctx context.Context, id string) (Approval, error)
	ListApprovals(ctx context.Context, status string) ([]Approval, error)
	// DecideApproval moves a pending approval to approved or rejected.
	DecideApproval(ctx context.Context, id string, approve bool, by, why string, now time.Time) (Approval, error)
	// ConsumeApproval atomically moves an approved approval whose PlanHash equals
	// planHash to used. Any other state or hash returns ErrConflict.
	ConsumeApproval(ctx context.Context, id, planHash string) (Approval, error)
}

// Nonces records single-use token ids.
type Nonces interface {
	// UseOnce records id until ttl passes; first is false if it was recorded before.
	UseOnce(ctx context.Context, id string, ttl time.Duration) (first bool, err error)
}
