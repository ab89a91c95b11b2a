package riskstore

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// maxRequestIDs bounds the request ids a run remembers for idempotency. Envoy
// retries a Check within its timeout, so only recent ids matter.
const maxRequestIDs = 4096

// Memory is the in-process store: the embedded default and the reference the
// Redis store is tested against. It is safe for concurrent use.
type Memory struct {
	mu        sync.Mutex
	runs      map[string]*memRun
	approvals map[string]memApproval
	nonces    map[string]time.Time
	now       func() time.Time
}

type memRun struct {
	state    State
	requests map[string]Prior
	order    []string // request ids, oldest first
	expires  time.Time
}

type memApproval struct {
	a       Approval
	expires time.Time
}

var (
	_ Store     = (*Memory)(nil)
	_ Approvals = (*Memory)(nil)
	_ Nonces    = (*Memory)(nil)
)

// NewMemory returns an empty store. now is the clock used for TTLs.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{
		runs:      make(map[string]*memRun),
		approvals: make(map[string]memApproval),
		nonces:    make(map[string]time.Time),
		now:       now,
	}
}

func (m *Memory) run(runID string) *memRun {
	r, ok := m.runs[runID]
	if ok && !r.expires.IsZero() && m.now().After(r.expires) {
		delete(m.runs, runID)
		ok = false
	}
	if !ok {
		return nil
	}
	return r
}

// Load implements Store.
func (m *Memory) Load(_ context.Context, runID, requestID string) (State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.run(runID)
	if r == nil {
		return State{RunID: runID}, nil
	}
	st := cloneState(r.state)
	if p, ok := r.requests[requestID]; ok && requestID != "" {
		st.Prior = &p
	}
	return st, nil
}

// Commit implements Store.
func (m *Memory) Commit(_ context.Context, runID string, step Step, limits Limits, now time.Time, ttl time.Duration) (CommitResult, error) {
	if runID == "" {
		return CommitResult{}, fmt.Errorf("riskstore: commit: empty run id")
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.run(runID)
	if r == nil {
		r = &memRun{state: State{RunID: runID}, requests: make(map[string]Prior)}
		m.runs[runID] = r
	}
	if p, ok := r.requests[step.RequestID]; ok && step.RequestID != "" {
		return CommitResult{Outcome: Duplicate, State: cloneState(r.state), Prior: &p}, nil
	}
	if limit := Exceeds(r.state, step, limits, now); limit != "" {
		return CommitResult{Outcome: Refused, Limit: limit, State: cloneState(r.state)}, nil
	}
	s := &r.state
	if s.StartedAt.IsZero() {
		s.StartedAt = now
	}
	s.ToolCalls++
	if step.Write {
		s.WriteOps++
	}
	s.CostMicros += step.CostMicros
	s.RiskTotal += step.Summary.Risk
	s.Recent = append(s.Recent, step.Summary)
	if len(s.Recent) > Window {
		s.Recent = append([]StepSummary(nil), s.Recent[len(s.Recent)-Window:]...)
	}
	if step.RequestID != "" {
		r.requests[step.RequestID] = Prior{DecisionID: step.DecisionID, StepRisk: step.Summary.Risk, RiskTotal: s.RiskTotal}
		r.order = append(r.order, step.RequestID)
		if len(r.order) > maxRequestIDs {
			delete(r.requests, r.order[0])
			r.order = r.order[1:]
		}
	}
	r.expires = m.now().Add(ttl)
	return CommitResult{Outcome: Committed, State: cloneState(*s)}, nil
}

// Exceeds reports the first limit that committing step onto st would exceed, or
// "". It is the single definition of the limits; the Redis script mirrors it and
// the conformance suite holds the two to the same answers.
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
	case l.MaxRisk > 0 && st.RiskTotal+step.Summary.Risk > l.MaxRisk+riskEpsilon:
		return BudgetRisk
	}
	return ""
}

// riskEpsilon absorbs float rounding when a total lands exactly on a threshold.
const riskEpsilon = 1e-9

func cloneState(s State) State {
	s.Recent = append([]StepSummary(nil), s.Recent...)
	s.Prior = nil
	return s
}

// CreateApproval implements Approvals.
func (m *Memory) CreateApproval(_ context.Context, a Approval, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.approvals[a.ID]; ok {
		return fmt.Errorf("riskstore: approval %s: %w", a.ID, ErrConflict)
	}
	if a.Status == "" {
		a.Status = ApprovalPending
	}
	m.approvals[a.ID] = memApproval{a: a, expires: m.now().Add(ttl)}
	return nil
}

func (m *Memory) approval(id string) (memApproval, bool) {
	ma, ok := m.approvals[id]
	if ok && m.now().After(ma.expires) {
		delete(m.approvals, id)
		return memApproval{}, false
	}
	return ma, ok
}

// GetApproval implements Approvals.
func (m *Memory) GetApproval(_ context.Context, id string) (Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ma, ok := m.approval(id)
	if !ok {
		return Approval{}, ErrNotFound
	}
	return ma.a, nil
}

// ListApprovals implements Approvals; status "" lists all, newest first.
func (m *Memory) ListApprovals(_ context.Context, status string) ([]Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Approval
	for id := range m.approvals {
		ma, ok := m.approval(id)
		if ok && (status == "" || ma.a.Status == status) {
			out = append(out, ma.a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// DecideApproval implements Approvals.
func (m *Memory) DecideApproval(_ context.Context, id string, approve bool, by, why string, now time.Time) (Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ma, ok := m.approval(id)
	if !ok {
		return Approval{}, ErrNotFound
	}
	if ma.a.Status != ApprovalPending {
		return ma.a, fmt.Errorf("riskstore: approval %s is %s: %w", id, ma.a.Status, ErrConflict)
	}
	ma.a.Status = ApprovalRejected
	if approve {
		ma.a.Status = ApprovalApproved
	}
	ma.a.DecidedAt, ma.a.DecidedBy, ma.a.Why = now, by, why
	m.approvals[id] = ma
	return ma.a, nil
}

// ConsumeApproval implements Approvals.
func (m *Memory) ConsumeApproval(_ context.Context, id, planHash string) (Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ma, ok := m.approval(id)
	if !ok {
		return Approval{}, ErrNotFound
	}
	if ma.a.Status != ApprovalApproved || ma.a.PlanHash != planHash {
		return ma.a, fmt.Errorf("riskstore: approval %s is %s: %w", id, ma.a.Status, ErrConflict)
	}
	ma.a.Status = ApprovalUsed
	m.approvals[id] = ma
	return ma.a, nil
}

// UseOnce implements Nonces.
func (m *Memory) UseOnce(_ context.Context, id string, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if exp, ok := m.nonces[id]; ok && now.Before(exp) {
		return false, nil
	}
	m.nonces[id] = now.Add(ttl)
	if len(m.nonces) > 1<<16 { // sweep expired ids now and then
		for k, exp := range m.nonces {
			if now.After(exp) {
				delete(m.nonces, k)
			}
		}
	}
	return true, nil
}

// Ping reports whether the store can serve; the memory store always can.
func (m *Memory) Ping(context.Context) error { return nil }
