package riskstore

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
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
	runs      map[RunRef]*memRun
	expiry    runHeap // every run in runs, soonest expiry first
	owners    map[string]memOwner
	agents    map[string]memAgent
	approvals map[string]memApproval
	nonces    map[string]nonce
	// nonceSweepAt is the nonce count that triggers the next sweep; it doubles
	// with the live count so sweeping stays amortised O(1) per UseOnce.
	nonceSweepAt   int
	now            func() time.Time
	approvalLimits ApprovalLimits
	log            memLog
}

// SetApprovalLimits bounds the pending approvals per run and per agent.
func (m *Memory) SetApprovalLimits(l ApprovalLimits) {
	m.mu.Lock()
	m.approvalLimits = l
	m.mu.Unlock()
}

type memRun struct {
	state    State
	requests map[string]Prior
	order    []string // request ids, oldest first
	expires  time.Time
	ttl      time.Duration // the lifetime of its last commit, renewed by every Load
	idx      int           // position in Memory.expiry
}

type memOwner struct {
	agent   string
	expires time.Time
}

// memAgent is an agent's window usage. It remembers the window length it was
// counted in, so that a Load (which has no Limits) reports the current window.
type memAgent struct {
	use     AgentUsage
	window  time.Duration
	expires time.Time // the window's end or the counting commit's ttl, whichever is later
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

// NewMemory returns an empty store. now is the store's clock: run start
// times, execution-time budgets, agent windows and every TTL follow it.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{
		runs:         make(map[RunRef]*memRun),
		owners:       make(map[string]memOwner),
		agents:       make(map[string]memAgent),
		approvals:    make(map[string]memApproval),
		nonces:       make(map[string]nonce),
		nonceSweepAt: minNonceSweep,
		now:          now,
	}
}

// run returns the live run ref, or nil. It first sweeps a bounded number of
// expired runs, so runs nobody asks for again do not stay in memory.
func (m *Memory) run(ref RunRef, now time.Time) *memRun {
	for range sweepBatch {
		if len(m.expiry) == 0 || !now.After(m.expiry[0].expires) {
			break
		}
		dead := heap.Pop(&m.expiry).(*memRun)
		delete(m.runs, dead.state.Run)
		if o, ok := m.owners[dead.state.Run.ID]; ok && now.After(o.expires) {
			delete(m.owners, dead.state.Run.ID)
		}
		if a, ok := m.agents[dead.state.Run.Agent]; ok && now.After(a.expires) {
			delete(m.agents, dead.state.Run.Agent)
		}
	}
	r, ok := m.runs[ref]
	if ok && now.After(r.expires) {
		m.remove(r)
		return nil
	}
	return r
}

func (m *Memory) remove(r *memRun) {
	heap.Remove(&m.expiry, r.idx)
	delete(m.runs, r.state.Run)
}

// owner returns the live owner of run id, or "".
func (m *Memory) owner(id string, now time.Time) string {
	o, ok := m.owners[id]
	if !ok || now.After(o.expires) {
		delete(m.owners, id)
		return ""
	}
	return o.agent
}

// agent returns the agent's live usage record.
func (m *Memory) agent(id string, now time.Time) (memAgent, bool) {
	a, ok := m.agents[id]
	if ok && now.After(a.expires) {
		delete(m.agents, id)
		return memAgent{}, false
	}
	return a, ok
}

// touch extends r's lifetime and its owner's to now+ttl, never shortening them.
func (m *Memory) touch(r *memRun, now time.Time, ttl time.Duration) {
	exp := now.Add(ttl)
	if exp.After(r.expires) {
		r.expires = exp
		heap.Fix(&m.expiry, r.idx)
	}
	if o := m.owners[r.state.Run.ID]; o.agent == r.state.Run.Agent && exp.After(o.expires) {
		m.owners[r.state.Run.ID] = memOwner{agent: o.agent, expires: exp}
	}
}

// state returns a copy of the run's state as read at now. The agent's usage is
// that of the current window of the length it was last counted in, whatever
// the caller's Limits, so that Load and every Commit outcome report the same.
func (m *Memory) state(ref RunRef, r *memRun, now time.Time) State {
	st := State{Run: ref}
	if r != nil {
		st = r.state
		st.Facts = slices.Clone(st.Facts)
	}
	st.Agent = AgentUsage{}
	if a, ok := m.agent(ref.Agent, now); ok {
		st.Agent = a.use.Current(a.window, now)
	}
	st.Now = now
	st.Prior = nil
	return st
}

// Load implements Store.
func (m *Memory) Load(_ context.Context, ref RunRef, requestID string) (State, error) {
	if !ref.valid() {
		return State{}, fmt.Errorf("riskstore: load: invalid run reference")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	r := m.run(ref, now)
	st := m.state(ref, r, now)
	if r == nil {
		return st, nil
	}
	m.touch(r, now, r.ttl)
	if p, ok := r.requests[requestID]; ok && requestID != "" {
		st.Prior = &p
	}
	return st, nil
}

// Commit implements Store.
func (m *Memory) Commit(_ context.Context, ref RunRef, step Step, limits Limits, ttl time.Duration) (CommitResult, error) {
	if !ref.valid() {
		return CommitResult{}, fmt.Errorf("riskstore: commit: invalid run reference")
	}
	if err := checkNumbers(step, limits); err != nil {
		return CommitResult{}, fmt.Errorf("riskstore: commit run %q: %w", ref.ID, err)
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	r := m.run(ref, now)
	cur := m.state(ref, r, now)
	// The limits are checked against the agent's usage in the window of these
	// Limits; cur (what is returned) reports it as a Load would.
	rec, _ := m.agent(ref.Agent, now)
	check := cur
	check.Agent = rec.use.Current(limits.AgentWindow, now)
	if o := m.owner(ref.ID, now); o != "" && o != ref.Agent {
		return CommitResult{Outcome: Refused, Limit: RunOwned, State: cur}, nil
	}
	if r != nil {
		if p, ok := r.requests[step.RequestID]; ok && step.RequestID != "" {
			return CommitResult{Outcome: Duplicate, State: cur, Prior: &p}, nil
		}
	}
	if step.Nonce != "" {
		if n, ok := m.nonces[step.Nonce]; ok && now.Before(n.expires) && n.owner != step.NonceOwner {
			return CommitResult{Outcome: Replayed, State: cur}, nil
		}
	}
	if step.ExpectVersion != AnyVersion && step.ExpectVersion != cur.Version {
		return CommitResult{Outcome: Stale, State: cur}, nil
	}
	if costOutOfRange(cur.CostMicros, step.CostMicros) || (limits.AgentWindow > 0 && costOutOfRange(check.Agent.CostMicros, step.CostMicros)) {
		return CommitResult{}, fmt.Errorf("riskstore: commit run %q: cost total out of range (|micros| > 2^53)", ref.ID)
	}
	if limit := Exceeds(check, step, limits, now); limit != "" {
		if r != nil {
			m.touch(r, now, ttl) // a refused run stays refused: it does not expire and come back
		}
		return CommitResult{Outcome: Refused, Limit: limit, State: cur}, nil
	}
	// Only a commit creates a run: a refused or stale first step leaves nothing
	// behind, as in Redis.
	if r == nil {
		r = &memRun{state: State{Run: ref}, requests: make(map[string]Prior), expires: now.Add(ttl)}
		m.runs[ref] = r
		heap.Push(&m.expiry, r)
	}
	m.owners[ref.ID] = memOwner{agent: ref.Agent, expires: maxTime(m.owners[ref.ID].expires, now.Add(ttl))}
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
	s.RiskTotal += step.Risk
	s.Facts = mergeFacts(s.Facts, step.Facts)
	r.ttl = ttl
	if limits.AgentWindow > 0 {
		u := check.Agent
		u.ToolCalls++
		u.CostMicros += step.CostMicros
		exp := maxTime(rec.expires, maxTime(now.Add(ttl), u.WindowStart.Add(limits.AgentWindow)))
		m.agents[ref.Agent] = memAgent{use: u, window: limits.AgentWindow, expires: exp}
	}
	if step.RequestID != "" {
		r.requests[step.RequestID] = Prior{DecisionID: step.DecisionID, StepRisk: step.Risk, RiskTotal: s.RiskTotal}
	}
	// Every commit takes a place in the order, one without a request id
	// too, as in Redis (where it is remembered under a generated id so that
	// a client retry stays idempotent): a request id is forgotten after
	// maxRequestIDs later commits of any kind.
	r.order = append(r.order, step.RequestID)
	if len(r.order) > maxRequestIDs {
		if old := r.order[0]; old != "" {
			delete(r.requests, old)
		}
		r.order = r.order[1:]
	}
	if step.Nonce != "" {
		m.addNonce(step.Nonce, step.NonceOwner, now, max(step.NonceTTL, time.Millisecond))
	}
	m.touch(r, now, ttl)
	return CommitResult{Outcome: Committed, State: m.state(ref, r, now)}, nil
}

// ClaimRun implements Store.
func (m *Memory) ClaimRun(_ context.Context, ref RunRef, ttl time.Duration) (string, error) {
	if !ref.valid() {
		return "", fmt.Errorf("riskstore: claim: invalid run reference")
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if o := m.owner(ref.ID, now); o != "" {
		if o == ref.Agent {
			m.owners[ref.ID] = memOwner{agent: o, expires: maxTime(m.owners[ref.ID].expires, now.Add(ttl))}
		}
		return o, nil
	}
	m.owners[ref.ID] = memOwner{agent: ref.Agent, expires: now.Add(ttl)}
	return ref.Agent, nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// checkNumbers refuses values a store cannot compare exactly, and a risk that
// is not a number: a NaN total would never exceed any threshold again.
func checkNumbers(step Step, l Limits) error {
	if math.IsNaN(step.Risk) || math.IsInf(step.Risk, 0) {
		return errors.New("step risk is not a finite number")
	}
	if math.IsNaN(l.MaxRisk) || math.IsInf(l.MaxRisk, 0) {
		return errors.New("max risk is not a finite number")
	}
	if step.CostMicros > maxExactInt || step.CostMicros < -maxExactInt || l.MaxCostMicros > maxExactInt || l.AgentMaxCostMicros > maxExactInt {
		return errors.New("cost out of range (|micros| > 2^53)")
	}
	if step.ExpectVersion < AnyVersion || step.ExpectVersion > maxExactInt {
		return fmt.Errorf("expected version %d out of range", step.ExpectVersion)
	}
	// Whole milliseconds: the Redis store computes windows on Redis's clock in
	// Lua numbers, exactly only for windows of whole milliseconds.
	if l.AgentWindow < 0 || l.AgentWindow%time.Millisecond != 0 {
		return errors.New("agent window must be a whole number of milliseconds")
	}
	return nil
}

// costOutOfRange reports whether total+step leaves ±2^53, where the Redis
// store's Lua doubles would round it; both stores refuse such a commit with
// an error rather than keep an inexact total.
func costOutOfRange(total, step int64) bool {
	return total > maxExactInt-step || total < -maxExactInt-step
}

// maxExactInt is the largest integer a Lua number (a double) holds exactly;
// the Redis script compares money in micro-units as Lua numbers.
const maxExactInt = 1 << 53

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
	if a.Status == ApprovalPending {
		lim := m.approvalLimits.withDefaults()
		run, agent := 0, 0
		for id := range m.approvals {
			if o, ok := m.approval(id); ok && o.a.Status == ApprovalPending && o.a.AgentID == a.AgentID {
				agent++
				if o.a.RunID == a.RunID {
					run++
				}
			}
		}
		if (lim.PerRun > 0 && run >= lim.PerRun) || (lim.PerAgent > 0 && agent >= lim.PerAgent) {
			return fmt.Errorf("riskstore: approval %s: too many pending approvals for its run or agent: %w", a.ID, ErrLimit)
		}
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
func (m *Memory) ConsumeApproval(_ context.Context, id, binding string) (Approval, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ma, ok := m.approval(id)
	if !ok {
		return Approval{}, ErrNotFound
	}
	if ma.a.Status != ApprovalApproved || ma.a.Binding != binding {
		return ma.a, fmt.Errorf("riskstore: approval %s is %s: %w", id, ma.a.Status, ErrConflict)
	}
	ma.a.Status = ApprovalUsed
	m.approvals[id] = ma
	return ma.a, nil
}

// CommitsNonces implements NonceCommitter: Commit spends Step.Nonce under
// the same lock.
func (m *Memory) CommitsNonces() bool { return true }

// nonce is a recorded single-use id: who recorded it and until when.
type nonce struct {
	owner   string
	expires time.Time
}

// UseOnce implements Nonces.
func (m *Memory) UseOnce(_ context.Context, id, owner string, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if n, ok := m.nonces[id]; ok && now.Before(n.expires) {
		return n.owner == owner, nil
	}
	m.addNonce(id, owner, now, ttl)
	return true, nil
}

// addNonce records id for owner until now+ttl, sweeping expired ones when
// the map has doubled since the last sweep. Called with m.mu held.
func (m *Memory) addNonce(id, owner string, now time.Time, ttl time.Duration) {
	m.nonces[id] = nonce{owner: owner, expires: now.Add(ttl)}
	if len(m.nonces) > m.nonceSweepAt {
		for k, n := range m.nonces {
			if now.After(n.expires) {
				delete(m.nonces, k)
			}
		}
		m.nonceSweepAt = max(minNonceSweep, 2*len(m.nonces))
	}
}

// Ping reports whether the store can serve; the memory store always can.
func (m *Memory) Ping(context.Context) error { return nil }
