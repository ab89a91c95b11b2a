// Package riskstore owns the state of agent runs: cumulative chain risk, budget
// consumption, the run's sticky facts (what it has read, what untrusted
// context it has consumed), the agent's budgets across runs, the request ids
// already committed (idempotency), who owns each run id, approvals and
// single-use token ids.
//
// A run belongs to the agent that opened it: its state is keyed by agent and
// run id, and another agent committing under the same run id is refused. A
// Commit checks every limit of the run and of the agent's window and records
// the step atomically, once per request id, so concurrent Checks on one run,
// fresh run ids and Envoy retries cannot overspend a budget or debit twice.
// Time is the store's own clock (one clock for every replica), never the
// caller's. A Commit can also be made conditional on the run's version
// (compare-and-set), so a server that caches a run's state can decide without
// a Load and still never commit a decision taken on a state that has moved.
//
// The package knows nothing of Envoy, tokens or policy, and must not import any
// extauthz package. Ids are opaque: any non-empty id up to MaxIDLen bytes is
// accepted by every store alike (the Redis store hashes them into its keys).
package riskstore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"
)

// DefaultTTL is how long an idle run's state is kept.
const DefaultTTL = 24 * time.Hour

// MaxIDLen bounds agent and run ids (the Check path accepts at most 128 bytes).
const MaxIDLen = 256

// RunRef names one run: the agent that owns it and the run id it chose.
type RunRef struct {
	Agent string
	ID    string
}

func (r RunRef) valid() bool {
	return r.Agent != "" && r.ID != "" && len(r.Agent) <= MaxIDLen && len(r.ID) <= MaxIDLen
}

// Limits are checked atomically by Commit. A zero limit is unlimited.
type Limits struct {
	MaxToolCalls       int64
	MaxWriteOperations int64
	MaxExecutionTime   time.Duration // since the run's first commit, on the store's clock
	MaxCostMicros      int64         // money in integer micro-units: 1.00 = 1_000_000
	MaxRisk            float64       // halt threshold: refuse a step that would take the total above it

	// Agent budgets, across every run of the agent, per fixed window of
	// AgentWindow (whole milliseconds, so the Redis script's arithmetic on its
	// microsecond clock is exact) aligned to the Unix epoch on the store's
	// clock.
	AgentWindow        time.Duration
	AgentMaxToolCalls  int64
	AgentMaxCostMicros int64
}

// Budget names, as used in Limits, audit lines and reason messages.
const (
	BudgetToolCalls      = "max_tool_calls"
	BudgetWriteOps       = "max_write_operations"
	BudgetExecutionTime  = "max_execution_time"
	BudgetCost           = "max_cost"
	BudgetRisk           = "max_risk"
	BudgetAgentToolCalls = "agent_max_tool_calls"
	BudgetAgentCost      = "agent_max_cost"
	// RunOwned is the Limit of a Refused commit under a run id another agent owns.
	RunOwned = "run_owned"
)

// Prior is what was recorded for a request id already committed.
type Prior struct {
	DecisionID string  `json:"decision_id"`
	StepRisk   float64 `json:"step_risk"`
	RiskTotal  float64 `json:"risk_total"`
}

// AgentUsage is the agent's consumption in the current window.
type AgentUsage struct {
	ToolCalls   int64
	CostMicros  int64
	WindowStart time.Time // zero when the agent has no window budgets or no use yet
}

// State is a run as read before deciding.
type State struct {
	Run        RunRef
	ToolCalls  int64
	WriteOps   int64
	CostMicros int64
	RiskTotal  float64
	StartedAt  time.Time // the store's clock at the run's first commit; zero before
	// Facts are the run's sticky facts, sorted: every fact any committed step
	// added stays for the run's whole life (see Step.Facts).
	Facts []string
	// Agent is the agent's use of its window budgets (when Limits set them on
	// the last commit; Load reports the current window).
	Agent AgentUsage
	// Now is the store's clock when this State was read.
	Now   time.Time
	Prior *Prior // set by Load when the request id was already committed
	// Version is the number of commits of the run: 0 for a run never committed
	// (or expired), +1 per Committed step, unchanged by any other outcome. A
	// caller that decided on a State passes its Version as Step.ExpectVersion so
	// that the decision is committed only if nobody committed in between.
	Version int64
}

// HasFact reports whether the run has fact f.
func (s *State) HasFact(f string) bool {
	_, ok := slices.BinarySearch(s.Facts, f)
	return ok
}

// AnyVersion as Step.ExpectVersion commits whatever the run's version is.
const AnyVersion int64 = -1

// Step is one allowed tool call to record.
type Step struct {
	RequestID  string
	DecisionID string
	Risk       float64
	Write      bool
	CostMicros int64
	// Facts this step adds to the run (its tool class and trust, untrusted
	// context, finding classes): opaque strings to the store, at most
	// MaxFactLen bytes each and without a newline (others are dropped),
	// never removed.
	Facts []string
	// ExpectVersion is the State.Version the step was decided on. If the run's
	// version differs, Commit changes nothing and answers Stale with the current
	// State, so the caller can decide again without another round trip.
	//
	// The zero value means version 0, "decided on an empty run": it is not a
	// wildcard. A caller that does not decide on a State it read passes
	// AnyVersion. Any other negative value is an error.
	ExpectVersion int64
	// Nonce, when set, is a single-use id (a token's jti) this step spends,
	// in the same atomic step as the commit: Commit answers Replayed, and
	// changes nothing, when another owner holds it, and records it for
	// NonceOwner until NonceTTL only when the step commits. The same owner
	// asking again is not a replay (see Nonces.UseOnce). Only a store whose
	// CommitsNonces is true accepts it; the others return an error.
	Nonce      string
	NonceOwner string
	NonceTTL   time.Duration
}

// NonceCommitter is a store that spends a step's nonce within its commit
// (Step.Nonce), saving the round trip of Nonces.UseOnce.
type NonceCommitter interface {
	CommitsNonces() bool
}

// MaxFactLen and MaxFacts bound the facts of one run.
const (
	MaxFactLen = 64
	MaxFacts   = 64
)

// Outcome of a Commit.
type Outcome int

// Outcomes are checked in this order: Duplicate, Replayed, Stale, Refused. A
// retry of a committed step is Duplicate even though its expected version is
// now old; a stale decision never reports a limit, since the limits were
// checked against a state that is gone. A run id owned by another agent is
// Refused with Limit RunOwned before anything else is looked at.
const (
	Committed Outcome = iota + 1
	Duplicate         // the request id was committed before; nothing changed
	Refused           // a limit would be exceeded; nothing changed but the run's lifetime
	Stale             // the run's version is not Step.ExpectVersion; nothing changed
	Replayed          // Step.Nonce is held by another owner; nothing changed
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
	case Replayed:
		return "replayed"
	}
	return "unknown"
}

// CommitResult reports what a Commit did.
type CommitResult struct {
	Outcome Outcome
	Limit   string // for Refused: the Budget* name of the first limit hit, or RunOwned
	// State is the whole run after the commit, or as it stands when nothing
	// changed: what a Load would return, without Prior. A caller may decide its
	// next step on it.
	State State
	Prior *Prior // for Duplicate
}

// Store is the run state.
type Store interface {
	// Load reads a run and refreshes its lifetime (a run an agent keeps
	// touching, even only to be refused, does not expire and come back fresh).
	// requestID, when not empty, is looked up so that an Envoy retry of a
	// committed Check is answered as before (State.Prior).
	Load(ctx context.Context, run RunRef, requestID string) (State, error)
	// Commit records step if the run is at step.ExpectVersion (unless
	// AnyVersion), the run id is not owned by another agent, and every limit
	// allows it, atomically and at most once per step.RequestID. ttl is the
	// run's idle lifetime; a refusal refreshes it too. Any error means
	// "outcome unknown": the caller must deny.
	Commit(ctx context.Context, run RunRef, step Step, limits Limits, ttl time.Duration) (CommitResult, error)
	// ClaimRun makes run.Agent the owner of run.ID unless another agent owns
	// it; it returns the owner either way. A run's first commit claims it too.
	ClaimRun(ctx context.Context, run RunRef, ttl time.Duration) (owner string, err error)
}

// Exceeds reports the first limit that committing step onto st at now would
// exceed, or "". It is the single definition of the limits; the Redis script
// mirrors it and the conformance suite holds the two to the same answers. The
// agent's window usage in st must be that of now's window.
func Exceeds(st State, step Step, l Limits, now time.Time) string {
	switch {
	case l.MaxToolCalls > 0 && st.ToolCalls+1 > l.MaxToolCalls:
		return BudgetToolCalls
	case l.MaxWriteOperations > 0 && step.Write && st.WriteOps+1 > l.MaxWriteOperations:
		return BudgetWriteOps
	case l.MaxCostMicros > 0 && st.CostMicros+step.CostMicros > l.MaxCostMicros:
		return BudgetCost
	case l.MaxExecutionTime > 0 && !st.StartedAt.IsZero() && now.Sub(st.StartedAt) > l.MaxExecutionTime:
		return BudgetExecutionTime
	case l.MaxRisk > 0 && st.RiskTotal+step.Risk > l.MaxRisk+riskEpsilon:
		return BudgetRisk
	case l.AgentWindow > 0 && l.AgentMaxToolCalls > 0 && st.Agent.ToolCalls+1 > l.AgentMaxToolCalls:
		return BudgetAgentToolCalls
	case l.AgentWindow > 0 && l.AgentMaxCostMicros > 0 && st.Agent.CostMicros+step.CostMicros > l.AgentMaxCostMicros:
		return BudgetAgentCost
	}
	return ""
}

// WindowStart is the start of the agent window of length w holding t.
func WindowStart(t time.Time, w time.Duration) time.Time {
	if w <= 0 {
		return time.Time{}
	}
	ns := t.UnixNano()
	return time.Unix(0, ns-ns%int64(w)).UTC()
}

// riskEpsilon absorbs float rounding when a total lands exactly on a threshold.
const riskEpsilon = 1e-9

// validFact reports whether a store keeps f: not empty, at most MaxFactLen
// bytes, no newline (the Redis store joins a run's facts with newlines).
func validFact(f string) bool {
	return f != "" && len(f) <= MaxFactLen && !strings.Contains(f, "\n")
}

// mergeFacts returns the sorted union of have and add, bounded by MaxFacts.
// It never modifies have.
func mergeFacts(have, add []string) []string {
	out, cloned := have, false
	for _, f := range add {
		if !validFact(f) {
			continue
		}
		i, found := slices.BinarySearch(out, f)
		if found || len(out) >= MaxFacts {
			continue
		}
		if !cloned {
			out, cloned = slices.Clone(out), true
		}
		out = slices.Insert(out, i, f)
	}
	return out
}

// Current returns u as the usage of the window of length w holding now: zero
// when u was counted in an earlier window.
func (u AgentUsage) Current(w time.Duration, now time.Time) AgentUsage {
	start := WindowStart(now, w)
	if w <= 0 || !u.WindowStart.Equal(start) {
		return AgentUsage{WindowStart: start}
	}
	return u
}

// ErrNotFound is returned for an unknown approval.
var ErrNotFound = errors.New("riskstore: not found")

// ErrConflict is returned when an approval is not in a state that allows the change.
var ErrConflict = errors.New("riskstore: conflict")

// ErrLimit is returned when creating an approval would pass a bound.
var ErrLimit = errors.New("riskstore: limit reached")

// Approval states.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalRejected = "rejected"
	ApprovalUsed     = "used"
)

// Approval is a request for a human decision on one exact request. Binding is
// a digest of everything the approval is for — agent, tool, run, and the
// exact request (method, normalised path, query, body) — and the only thing
// ConsumeApproval compares; the other fields describe it to the approver.
type Approval struct {
	ID         string    `json:"id"`
	RunID      string    `json:"run_id"`
	AgentID    string    `json:"agent_id"`
	Tool       string    `json:"tool"`
	Binding    string    `json:"binding"`
	DecisionID string    `json:"decision_id"`
	Risk       float64   `json:"risk"`
	Reasons    []string  `json:"reasons,omitempty"`
	Status     string    `json:"status"`
	CreatedAt  time.Time `json:"created_at"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	DecidedBy  string    `json:"decided_by,omitempty"`
	Why        string    `json:"why,omitempty"`
	// Detail is what the approver needs to decide (method, path, arguments
	// with secrets masked, findings), as the caller wrote it.
	Detail map[string]any `json:"detail,omitempty"`
}

// ApprovalLimits bound the pending approvals of one run and of one agent, so
// an agent cannot flood the approvers' queue (or the store): CreateApproval
// answers ErrLimit beyond them. Zero takes the default; negative is unbounded.
type ApprovalLimits struct {
	PerRun   int
	PerAgent int
}

// Default approval bounds.
const (
	DefaultApprovalsPerRun   = 8
	DefaultApprovalsPerAgent = 64
)

func (l ApprovalLimits) withDefaults() ApprovalLimits {
	if l.PerRun == 0 {
		l.PerRun = DefaultApprovalsPerRun
	}
	if l.PerAgent == 0 {
		l.PerAgent = DefaultApprovalsPerAgent
	}
	l.PerRun, l.PerAgent = max(l.PerRun, 0), max(l.PerAgent, 0)
	return l
}

// Approvals holds approvals. An approval is bound to one request and used once.
type Approvals interface {
	// CreateApproval records a; ErrLimit when a pending a would pass the
	// store's ApprovalLimits for its run or agent.
	CreateApproval(ctx context.Context, a Approval, ttl time.Duration) error
	GetApproval(ctx context.Context, id string) (Approval, error)
	ListApprovals(ctx context.Context, status string) ([]Approval, error)
	// DecideApproval moves a pending approval to approved or rejected.
	DecideApproval(ctx context.Context, id string, approve bool, by, why string, now time.Time) (Approval, error)
	// ConsumeApproval atomically moves an approved approval whose Binding equals
	// binding to used. Any other state or binding returns ErrConflict.
	ConsumeApproval(ctx context.Context, id, binding string) (Approval, error)
}

// Nonces records single-use token ids.
type Nonces interface {
	// UseOnce records id for owner until ttl passes; first is false if
	// another owner recorded it before. The same owner asking again is told
	// first: a client that retries a write whose reply it lost (go-redis does,
	// after a read timeout) must not see its own write as a replay. Owners
	// are unique per call (the decision id), so no two calls share one.
	UseOnce(ctx context.Context, id, owner string, ttl time.Duration) (first bool, err error)
}
