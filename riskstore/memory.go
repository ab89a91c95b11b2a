package riskstore

import (
	"container/heap"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// maxRequestIDs bounds the request ids a run remembers for idempotency. Envoy
// retries a Check within its timeout, so only recent ids matter.
const maxRequestIDs = 4096

// sweepBatch is how many expired runs one Load or Commit removes at most. More
// than the one run a Commit can add, so a backlog of dead runs drains while
// traffic flows, and small enough that no call pays for a mass expiry.
const sweepBatch = 8

// minNonceSweep is the nonce count below which expired nonces are left alone.
const minNonceSweep = 1 << 16

// Memory is the in-process store: the embedded default and the reference the
// Redis store is tested against. It is safe for concurrent use.
type Memory struct {
	mu        sync.Mutex
	runs      map[string]*memRun
	expiry    runHeap // every run in runs, soonest expiry first
	approvals map[string]memApproval
	nonces    map[string]time.Time
	// nonceSweepAt is the nonce count that triggers the next sweep; it doubles
	// with the live count so sweeping stays amortised O(1) per UseOnce.
	nonceSweepAt int
	now          func() time.Time
}

type memRun struct {
	state    State
	requests map[string]Prior
	order    []string // request ids, oldest first
	expires  time.Time
	idx      int // position in Memory.expiry
}

// runHeap orders runs by expiry so the sweep finds the dead ones without
// scanning the live ones.
type runHeap []*memRun

func (h runHeap) Len() int           { return len(h) }
func (h runHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h runHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *runHeap) Push(x any) {
	r := x.(*memRun)
	r.idx = len(*h)
	*h = append(*h, r)
}
func (h *runHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	r.idx = -1
	return r
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
		runs:         make(map[string]*memRun),
		approvals:    make(map[string]memApproval),
		nonces:       make(map[string]time.Time),
		nonceSweepAt: minNonceSweep,
		now:          now,
	}
}

// run returns the live run runID, or nil. It first sweeps a bounded number of
// expired runs, so runs nobody asks for again do not stay in memory.
func (m *Memory) run(runID string) *memRun {
	now := m.now()
	for range sweepBatch {
		if len(m.expiry) == 0 || !now.After(m.expiry[0].expires) {
			break
		}
		dead := heap.Pop(&m.expiry).(*memRun)
		delete(m.runs, dead.state.RunID)
	}
	r, ok := m.runs[runID]
	if ok && now.After(r.expires) {
		m.remove(r)
		return nil
	}
	return r
}

func (m *Memory) remove(r *memRun) {
	heap.Remove(&m.expiry, r.idx)
	delete(m.runs, r.state.RunID)
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
	if err := checkNumbers(step, limits); err != nil {
		return CommitResult{}, fmt.Errorf("riskstore: commit run %s: %w", runID, err)
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.run(runID)
	cur := State{RunID: runID}
	if r != nil {
		cur = r.state
		if p, ok := r.requests[step.RequestID]; ok && step.RequestID != "" {
			return CommitResult{Outcome: Duplicate, State: cloneState(cur), Prior: &p}, nil
		}
	}
	if step.ExpectVersion != AnyVersion && step.ExpectVersion != cur.Version {
		return CommitResult{Outcome: Stale, State: cloneState(cur)}, nil
	}
	if limit := Exceeds(cur, step, limits, now); limit != "" {
		return CommitResult{Outcome: Refused, Limit: limit, State: cloneState(cur)}, nil
	}
	// Only a commit creates a run: a refused or stale first step leaves nothing
	// behind, as in Redis.
	if r == nil {
		r = &memRun{state: cur, requests: make(map[string]Prior), expires: m.now().Add(ttl)}
		m.runs[runID] = r
		heap.Push(&m.expiry, r)
	}
	s := &r.state
	if s.StartedAt.IsZero() {
		s.StartedAt = now
	}
	s.Version++
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
	heap.Fix(&m.expiry, r.idx)
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
	if _, ok := m.approval(a.ID); ok { // an expired approval no longer blocks its id
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
	if len(m.nonces) > m.nonceSweepAt {
		for k, exp := range m.nonces {
			if now.After(exp) {
				delete(m.nonces, k)
			}
		}
		m.nonceSweepAt = max(minNonceSweep, 2*len(m.nonces))
	}
	return true, nil
}

// Ping reports whether the store can serve; the memory store always can.
func (m *Memory) Ping(context.Context) error { return nil }
