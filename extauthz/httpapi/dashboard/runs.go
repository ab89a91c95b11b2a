package dashboard

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// RunSummary is a run as /v1/runs lists it (DESIGN §7), plus the tools it
// called.
type RunSummary struct {
	RunID          string    `json:"run_id"`
	AgentID        string    `json:"agent_id"`
	Steps          int       `json:"steps"`
	LastDecision   string    `json:"last_decision"`
	CumulativeRisk float64   `json:"cumulative_risk"`
	Started        time.Time `json:"started"`
	Updated        time.Time `json:"updated"`
	Tools          []string  `json:"tools"`
}

// RunFilter selects runs; empty fields match everything.
type RunFilter struct {
	Agent, Tool, Decision string
	Since                 time.Time
	Limit                 int
}

// maxRunsListed bounds one answer.
const maxRunsListed = 500

// Runs lists the runs that match f, most recently updated first: what the
// runs page searches when it filters by tool, which /v1/runs does not. A run
// matches the tool or decision when any of its steps does.
func (x *Index) Runs(f RunFilter) []RunSummary {
	if f.Limit <= 0 || f.Limit > maxRunsListed {
		f.Limit = 100
	}
	x.mu.RLock()
	type acc struct {
		s        RunSummary
		tools    map[uint32]bool
		matchDec bool
	}
	runs := map[uint32]*acc{}
	var order []uint32
	for i := range x.events {
		e := &x.events[i]
		if e.flags&fMCPProtocol != 0 {
			continue
		}
		a := runs[e.run]
		if a == nil {
			agent, id, _ := strings.Cut(x.strs.str(e.run), "\x00")
			a = &acc{s: RunSummary{RunID: id, AgentID: agent, Started: time.Unix(0, e.ts).UTC()}, tools: map[uint32]bool{}}
			runs[e.run] = a
			order = append(order, e.run)
		}
		a.s.Steps++
		a.s.LastDecision = x.strs.str(e.decision)
		a.s.CumulativeRisk = float64(e.cum)
		a.s.Updated = time.Unix(0, e.ts).UTC()
		a.tools[e.tool] = true
		a.matchDec = a.matchDec || f.Decision == "" || a.s.LastDecision == f.Decision
	}
	var out []RunSummary
	for _, id := range order {
		a := runs[id]
		if f.Agent != "" && a.s.AgentID != f.Agent || !a.matchDec || a.s.Updated.Before(f.Since) {
			continue
		}
		hasTool := f.Tool == ""
		for t := range a.tools {
			name := x.strs.str(t)
			a.s.Tools = append(a.s.Tools, name)
			hasTool = hasTool || name == f.Tool
		}
		if !hasTool {
			continue
		}
		slices.Sort(a.s.Tools)
		a.s.CumulativeRisk = round(a.s.CumulativeRisk, 4)
		out = append(out, a.s)
	}
	x.mu.RUnlock()
	slices.SortFunc(out, func(a, b RunSummary) int {
		return cmp.Or(b.Updated.Compare(a.Updated), cmp.Compare(a.AgentID, b.AgentID), cmp.Compare(a.RunID, b.RunID))
	})
	if len(out) > f.Limit {
		out = out[:f.Limit]
	}
	if out == nil {
		out = []RunSummary{}
	}
	return out
}
