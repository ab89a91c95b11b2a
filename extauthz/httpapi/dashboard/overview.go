package dashboard

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/riskstore"
)

// Overview is the governance figures of one window (AISecOps v1.0 section
// 19), computed from the audit records. Definitions says how each is
// computed; the README repeats it.
type Overview struct {
	Window      string    `json:"window"`
	From        time.Time `json:"from"`
	To          time.Time `json:"to"`
	GeneratedAt time.Time `json:"generated_at"`

	Checks    int            `json:"checks"`
	Decisions map[string]int `json:"decisions"`
	Series    Series         `json:"series"`
	Reasons   []Count        `json:"reasons"`
	Tools     []ToolCount    `json:"tools"`

	// 19.1
	Runs                    int     `json:"runs"`
	AvgCumulativeRisk       float64 `json:"avg_cumulative_risk"`
	BudgetViolations        int     `json:"budget_violations"`
	BudgetViolationRate     float64 `json:"budget_violation_rate"`
	RunsWithBudgetViolation int     `json:"runs_with_budget_violation"`
	// 19.2
	InjectionDetections int             `json:"injection_detections"`
	EgressDetections    int             `json:"egress_detections"`
	EgressByDetector    []Count         `json:"egress_by_detector"`
	EscalatedRuns       int             `json:"escalated_runs"`
	ChainEscalationRate float64         `json:"chain_escalation_rate"`
	PolicyDenials       int             `json:"policy_denials"`
	PolicyDenialRate    float64         `json:"policy_denial_rate"`
	Approvals           ApprovalFigures `json:"approvals"`
	// 19.3
	PolicyEnforcedPct  float64     `json:"policy_enforced_pct"`
	RunsFullyTracedPct float64     `json:"runs_fully_traced_pct"`
	Containment        Containment `json:"containment"`

	Definitions map[string]string `json:"definitions"`
}

// Series is decisions over time: Buckets of BucketSeconds each, oldest first.
type Series struct {
	BucketSeconds int64    `json:"bucket_seconds"`
	TopReasons    []string `json:"top_reasons"`
	Buckets       []Bucket `json:"buckets"`
}

// Bucket is one interval of the series.
type Bucket struct {
	Start     time.Time      `json:"start"`
	Decisions map[string]int `json:"decisions"`
	Reasons   map[string]int `json:"reasons"` // of Series.TopReasons only
}

// Count is a name and how often.
type Count struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// ToolCount is the calls of one tool by decision.
type ToolCount struct {
	Tool      string         `json:"tool"`
	Calls     int            `json:"calls"`
	Decisions map[string]int `json:"decisions"`
}

// ApprovalFigures are the human-in-the-loop figures.
type ApprovalFigures struct {
	Pending                 int     `json:"pending"`
	Requested               int     `json:"requested"`
	Decided                 int     `json:"decided"`
	MeanSecondsToDecision   float64 `json:"mean_seconds_to_decision"`
	MedianSecondsToDecision float64 `json:"median_seconds_to_decision"`
}

// Containment is mean time to containment.
type Containment struct {
	RiskyRuns   int     `json:"risky_runs"`
	Contained   int     `json:"contained"`
	Uncontained int     `json:"uncontained"`
	MeanSeconds float64 `json:"mean_seconds"`
}

// definitions is how each figure is computed, shown beside it.
var definitions = map[string]string{
	"checks":                   "Checks audited in the window that are steps of a run: tool calls, not dry runs, explains or MCP protocol traffic.",
	"runs":                     "Distinct runs (agent, run id) with at least one Check in the window.",
	"avg_cumulative_risk":      "Mean over those runs of the highest cumulative risk a Check of the run reported in the window.",
	"budget_violation_rate":    "Checks denied budget_exceeded ÷ Checks.",
	"injection_detections":     "Checks with an injection reason (injection_detected, injection_suspected, untrusted_context_external_send, untrusted_memory).",
	"egress_detections":        "Checks with an egress finding or an egress reason (secret, pii, sensitive, destination, payload size).",
	"chain_escalation_rate":    "Runs with a step whose escalation factor E was above 1 ÷ runs.",
	"policy_denial_rate":       "Checks denied for a policy reason ÷ Checks.",
	"time_to_decision":         "For approvals decided in the window: decided_at − created_at (approval store, and approval_decided audit events when written).",
	"policy_enforced_pct":      "Checks decided by an evaluated policy bundle (a policy version recorded and no fault reason) ÷ Checks × 100. Faults are denied fail-closed but not by policy.",
	"runs_fully_traced_pct":    "Runs every Check of which (in the window) carried an explicit run id and a trace id (x-aisecops-trace-id, the plan's trace_id or a W3C traceparent) ÷ runs × 100.",
	"mean_time_to_containment": "Per run: from its first risky step (escalation E > 1, an egress finding, untrusted provenance, or a non-allowed decision) to the first step at or after it that was not allowed (denied, halted or held for approval); mean over runs contained in the window.",
}

// parseWindow reads "15m", "24h", "7d" (at least a minute, at most 31 days).
func parseWindow(s string) (time.Duration, error) {
	if s == "" {
		return 24 * time.Hour, nil
	}
	if len(s) > 16 {
		return 0, fmt.Errorf("window too long")
	}
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("window %q: %w", s, err)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("window %q: %w", s, err)
		}
	}
	if d < time.Minute || d > 31*24*time.Hour {
		return 0, fmt.Errorf("window %q: between 1m and 31d", s)
	}
	return d, nil
}

// runAcc accumulates one run over the window.
type runAcc struct {
	maxCum    float32
	traced    bool
	escalated bool
	budget    bool
	riskyAt   int64
	containAt int64
}

// Overview computes the window ending at now. approvals are the approval
// store's (nil: none).
func (x *Index) Overview(window time.Duration, label string, now time.Time, approvals []riskstore.Approval) Overview {
	from := now.Add(-window)
	o := Overview{Window: label, From: from.UTC(), To: now.UTC(), GeneratedAt: now.UTC(), Decisions: map[string]int{}, Definitions: definitions}
	const nBuckets = 24
	bucket := window / nBuckets
	o.Series.BucketSeconds = int64(bucket / time.Second)
	o.Series.Buckets = make([]Bucket, nBuckets)
	for i := range o.Series.Buckets {
		o.Series.Buckets[i] = Bucket{Start: from.Add(time.Duration(i) * bucket).UTC(), Decisions: map[string]int{}, Reasons: map[string]int{}}
	}

	x.mu.RLock()
	lo, hi := from.UnixNano(), now.UnixNano()
	start := sort.Search(len(x.events), func(i int) bool { return x.events[i].ts >= lo })
	reasons := map[uint32]int{}
	tools := map[uint32]*ToolCount{}
	dets := map[uint32]int{}
	runs := map[uint32]*runAcc{}
	enforced := 0
	bucketReasons := make([]map[uint32]int, nBuckets)
	for i := start; i < len(x.events); i++ {
		e := &x.events[i]
		if e.ts > hi {
			continue // written out of order, after now: not in this window
		}
		if e.flags&fMCPProtocol != 0 {
			continue
		}
		o.Checks++
		dec := x.strs.str(e.decision)
		o.Decisions[dec]++
		b := min(int((e.ts-lo)/int64(bucket)), nBuckets-1)
		o.Series.Buckets[b].Decisions[dec]++
		if bucketReasons[b] == nil {
			bucketReasons[b] = map[uint32]int{}
		}
		for _, r := range e.reasons {
			reasons[r]++
			bucketReasons[b][r]++
		}
		tc := tools[e.tool]
		if tc == nil {
			tc = &ToolCount{Tool: x.strs.str(e.tool), Decisions: map[string]int{}}
			tools[e.tool] = tc
		}
		tc.Calls++
		tc.Decisions[dec]++
		for _, d := range e.dets {
			dets[d]++
		}
		if e.flags&fBudget != 0 {
			o.BudgetViolations++
		}
		if e.flags&fInjection != 0 {
			o.InjectionDetections++
		}
		if e.flags&fEgress != 0 {
			o.EgressDetections++
		}
		if e.flags&fPolicyDeny != 0 {
			o.PolicyDenials++
		}
		if e.flags&fFault == 0 && dec != "" {
			enforced++
		}
		ra := runs[e.run]
		if ra == nil {
			ra = &runAcc{traced: true}
			runs[e.run] = ra
		}
		ra.maxCum = max(ra.maxCum, e.cum)
		ra.traced = ra.traced && e.flags&fTraced != 0
		ra.escalated = ra.escalated || e.flags&fEscalated != 0
		ra.budget = ra.budget || e.flags&fBudget != 0
		risky := e.flags&(fEscalated|fEgress|fUntrusted|fInjection) != 0 || dec != "allow"
		if ra.riskyAt == 0 && risky {
			ra.riskyAt = e.ts
		}
		if ra.riskyAt != 0 && ra.containAt == 0 && dec != "allow" {
			ra.containAt = e.ts
		}
	}
	type named struct {
		id uint32
		n  int
	}
	var rs []named
	for id, n := range reasons {
		rs = append(rs, named{id, n})
	}
	for id, n := range dets {
		o.EgressByDetector = append(o.EgressByDetector, Count{x.strs.str(id), n})
	}
	slices.SortFunc(rs, func(a, b named) int {
		return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(x.strs.str(a.id), x.strs.str(b.id)))
	})
	for _, r := range rs {
		o.Reasons = append(o.Reasons, Count{x.strs.str(r.id), r.n})
	}
	for i, r := range rs {
		if i == 5 {
			break
		}
		name := x.strs.str(r.id)
		o.Series.TopReasons = append(o.Series.TopReasons, name)
		for b := range o.Series.Buckets {
			if n := bucketReasons[b][r.id]; n > 0 {
				o.Series.Buckets[b].Reasons[name] = n
			}
		}
	}
	var audited []decidedApproval
	for _, d := range x.decided {
		if d.ts >= lo && d.ts <= hi {
			audited = append(audited, d)
		}
	}
	x.mu.RUnlock()

	for _, tc := range tools {
		o.Tools = append(o.Tools, *tc)
	}
	slices.SortFunc(o.Tools, func(a, b ToolCount) int { return cmp.Or(cmp.Compare(b.Calls, a.Calls), cmp.Compare(a.Tool, b.Tool)) })
	slices.SortFunc(o.EgressByDetector, func(a, b Count) int { return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Name, b.Name)) })

	o.Runs = len(runs)
	var sumCum float64
	traced, waitSum := 0, 0.0
	for _, ra := range runs {
		sumCum += float64(ra.maxCum)
		if ra.traced {
			traced++
		}
		if ra.escalated {
			o.EscalatedRuns++
		}
		if ra.budget {
			o.RunsWithBudgetViolation++
		}
		if ra.riskyAt != 0 {
			o.Containment.RiskyRuns++
			if ra.containAt != 0 {
				o.Containment.Contained++
				waitSum += time.Duration(ra.containAt - ra.riskyAt).Seconds()
			} else {
				o.Containment.Uncontained++
			}
		}
	}
	if o.Runs > 0 {
		o.AvgCumulativeRisk = round(sumCum/float64(o.Runs), 4)
		o.RunsFullyTracedPct = round(100*float64(traced)/float64(o.Runs), 2)
		o.ChainEscalationRate = round(float64(o.EscalatedRuns)/float64(o.Runs), 4)
	}
	if o.Checks > 0 {
		o.BudgetViolationRate = round(float64(o.BudgetViolations)/float64(o.Checks), 4)
		o.PolicyDenialRate = round(float64(o.PolicyDenials)/float64(o.Checks), 4)
		o.PolicyEnforcedPct = round(100*float64(enforced)/float64(o.Checks), 2)
	}
	if o.Containment.Contained > 0 {
		o.Containment.MeanSeconds = round(waitSum/float64(o.Containment.Contained), 3)
	}
	o.Approvals = approvalFigures(approvals, audited, from, now)
	if o.Reasons == nil {
		o.Reasons = []Count{}
	}
	if o.Tools == nil {
		o.Tools = []ToolCount{}
	}
	if o.EgressByDetector == nil {
		o.EgressByDetector = []Count{}
	}
	return o
}

// approvalFigures: pending now; requested and decided in the window, with the
// time each decided one waited.
// Decisions the store has forgotten (it keeps an approval for its TTL) still
// count from their approval_decided audit events.
func approvalFigures(list []riskstore.Approval, audited []decidedApproval, from, to time.Time) ApprovalFigures {
	var f ApprovalFigures
	var waits []float64
	inStore := map[string]bool{}
	for _, a := range list {
		inStore[a.ID] = true
	}
	for _, d := range audited {
		if !inStore[d.id] {
			waits = append(waits, d.wait.Seconds())
		}
	}
	for _, a := range list {
		if a.Status == riskstore.ApprovalPending {
			f.Pending++
		}
		if !a.CreatedAt.Before(from) && !a.CreatedAt.After(to) {
			f.Requested++
		}
		if !a.DecidedAt.IsZero() && !a.DecidedAt.Before(from) && !a.DecidedAt.After(to) {
			waits = append(waits, a.DecidedAt.Sub(a.CreatedAt).Seconds())
		}
	}
	f.Decided = len(waits)
	if len(waits) > 0 {
		slices.Sort(waits)
		sum := 0.0
		for _, w := range waits {
			sum += w
		}
		f.MeanSecondsToDecision = round(sum/float64(len(waits)), 3)
		f.MedianSecondsToDecision = round(waits[len(waits)/2], 3)
	}
	return f
}

func round(v float64, places int) float64 {
	p := 1.0
	for range places {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}
