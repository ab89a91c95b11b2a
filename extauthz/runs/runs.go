// Package runs owns the read side of runs (AISecOps v1.0 section 27, DESIGN
// §7): the run index, a run's timeline and its execution graph, served as
// GET /v1/runs, /v1/runs/{id}/timeline and /v1/runs/{id}/graph. It reads the
// store's shared step log, so a run decided on several replicas reads back
// whole, and a graph follows cross-agent links (section 22.2) into the runs
// they name, bounded.
//
// It decides nothing and writes nothing. Every string it shows came from the
// audit record's timeline projection, which never holds an argument value,
// a token or a matched secret; the agent-written ones among them (run ids,
// provenance labels) are escaped for each output format, never trusted as
// syntax.
package runs

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// Store is the step log as this package reads it.
type Store interface {
	riskstore.RunIndex
	Steps(ctx context.Context, run riskstore.RunRef) ([][]byte, error)
}

var (
	_ Store = (*riskstore.Memory)(nil)
	_ Store = (*riskstore.Redis)(nil)
)

// Limits of the API.
const (
	DefaultLimit = 50
	// MaxLimit is the largest page GET /v1/runs serves.
	MaxLimit = riskstore.MaxRunsPage
	// MaxGraphDepth bounds how many links a graph follows from its run.
	MaxGraphDepth = 3
	// MaxGraphRuns bounds the runs one graph shows, its own included.
	MaxGraphRuns = 16
	// MaxGraphSteps bounds the steps one graph shows; past it the graph is
	// marked truncated.
	MaxGraphSteps = 2000
	// maxQuery bounds the query string of every endpoint.
	maxQuery = 2048
)

// decisions are the values a step's decision may take (and ?decision= accepts).
var decisions = []string{"allow", "deny", "require_approval"}

// Routes are the endpoints, each needing the operator role.
func Routes(s Store) []httpapi.Route {
	h := &handlers{store: s}
	return []httpapi.Route{
		{Pattern: "GET /v1/runs", Role: httpapi.RoleOperator, Handler: http.HandlerFunc(h.list)},
		{Pattern: "GET /v1/runs/{id}/timeline", Role: httpapi.RoleOperator, Handler: http.HandlerFunc(h.timeline)},
		{Pattern: "GET /v1/runs/{id}/graph", Role: httpapi.RoleOperator, Handler: http.HandlerFunc(h.graph)},
	}
}

type handlers struct{ store Store }

// RunJSON is a run as GET /v1/runs lists it.
type RunJSON struct {
	RunID          string           `json:"run_id"`
	AgentID        string           `json:"agent_id"`
	Steps          int64            `json:"steps"`
	LastDecision   string           `json:"last_decision"`
	CumulativeRisk float64          `json:"cumulative_risk"`
	Started        time.Time        `json:"started"`
	Updated        time.Time        `json:"updated"`
	Decisions      map[string]int64 `json:"decisions"` // steps by decision
}

// ListJSON is GET /v1/runs' answer; NextCursor is "" on the last page.
type ListJSON struct {
	Runs       []RunJSON `json:"runs"`
	NextCursor string    `json:"next_cursor"`
}

func (h *handlers) list(w http.ResponseWriter, r *http.Request) {
	q, ok := queryOf(w, r, "agent", "decision", "since", "limit", "cursor")
	if !ok {
		return
	}
	rq := riskstore.RunQuery{Agent: q["agent"], Decision: q["decision"], Limit: DefaultLimit}
	if len(rq.Agent) > riskstore.MaxIDLen {
		badRequest(w, "agent is longer than 256 bytes")
		return
	}
	if rq.Decision != "" && !slices.Contains(decisions, rq.Decision) {
		badRequest(w, "decision must be one of allow, deny, require_approval")
		return
	}
	if s := q["since"]; s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			badRequest(w, "since must be an RFC 3339 time")
			return
		}
		rq.Since = t
	}
	if s := q["limit"]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			badRequest(w, fmt.Sprintf("limit must be an integer from 1 to %d", MaxLimit))
			return
		}
		rq.Limit = n
	}
	if c := q["cursor"]; c != "" {
		pos, err := decodeCursor(c, rq)
		if err != nil {
			httpapi.WriteError(w, http.StatusBadRequest, "bad_cursor", "cursor is not one this listing returned (its filters must be the same)")
			return
		}
		rq.Before = pos
	}
	page, err := h.store.ListRuns(r.Context(), rq)
	if err != nil {
		unavailable(w)
		return
	}
	out := ListJSON{Runs: make([]RunJSON, 0, len(page.Runs))}
	for _, s := range page.Runs {
		out.Runs = append(out.Runs, RunJSON{RunID: s.Run.ID, AgentID: s.Run.Agent, Steps: s.Steps, LastDecision: s.LastDecision,
			CumulativeRisk: s.CumulativeRisk, Started: s.Started, Updated: s.Updated, Decisions: s.Decisions})
	}
	if page.Next != 0 {
		out.NextCursor = encodeCursor(page.Next, rq)
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// StepJSON is one step of a timeline.
type StepJSON struct {
	Seq               int64              `json:"seq"`
	TS                time.Time          `json:"ts"`
	DecisionID        string             `json:"decision_id"`
	Tool              string             `json:"tool"`
	ToolClass         string             `json:"tool_class"`
	MCPMethod         string             `json:"mcp_method,omitempty"`
	Decision          string             `json:"decision"`
	Reasons           []string           `json:"reasons"`
	StepRisk          audit.StepRisk     `json:"step_risk"`
	CumulativeRisk    float64            `json:"cumulative_risk"`
	BudgetConsumption map[string]float64 `json:"budget_consumption"`
	Provenance        []audit.Provenance `json:"provenance"`
	LinkedRuns        []string           `json:"linked_runs"`
	ApprovalID        string             `json:"approval_id,omitempty"`
	Committed         bool               `json:"committed"`
	DryRun            bool               `json:"dry_run,omitempty"`
}

// TimelineJSON is GET /v1/runs/{id}/timeline's answer: the run's steps in
// order. When the log was trimmed (more than riskstore.MaxLogSteps steps),
// the first step shown has a seq above 1.
type TimelineJSON struct {
	RunID   string     `json:"run_id"`
	AgentID string     `json:"agent_id"`
	Steps   []StepJSON `json:"steps"`
}

func (h *handlers) timeline(w http.ResponseWriter, r *http.Request) {
	q, ok := queryOf(w, r, "agent")
	if !ok {
		return
	}
	ref, ok := h.resolve(w, r, q["agent"])
	if !ok {
		return
	}
	tl, err := ReadTimeline(r.Context(), h.store, ref)
	if err != nil {
		writeReadError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, tl)
}

// ErrNoRun is returned for a run with no logged step.
var ErrNoRun = errors.New("runs: no such run")

// ReadTimeline reads a run's timeline from the step log.
func ReadTimeline(ctx context.Context, s Store, ref riskstore.RunRef) (TimelineJSON, error) {
	sum, err := s.Run(ctx, ref)
	if errors.Is(err, riskstore.ErrNotFound) {
		return TimelineJSON{}, ErrNoRun
	}
	if err != nil {
		return TimelineJSON{}, err
	}
	recs, err := s.Steps(ctx, ref)
	if err != nil {
		return TimelineJSON{}, err
	}
	tl := TimelineJSON{RunID: ref.ID, AgentID: ref.Agent, Steps: make([]StepJSON, 0, len(recs))}
	steps := make([]audit.Step, 0, len(recs))
	for _, b := range recs {
		var st audit.Step
		if err := json.Unmarshal(b, &st); err != nil {
			continue // not a step this version wrote: skipped, never guessed at
		}
		steps = append(steps, st)
	}
	// Each replica's writer appends in the background, so the log holds a
	// run's steps in the order they reached Redis; the timeline is in the
	// order they were decided: by each step's time (the deciding replica's
	// clock), then by the run's tool calls after it (the store's count), a
	// commit before the steps decided on its state; other ties in log order.
	slices.SortStableFunc(steps, func(a, b audit.Step) int {
		return cmp.Or(a.TS.Compare(b.TS), cmp.Compare(a.RunCalls, b.RunCalls), cmp.Compare(b2i(b.Committed), b2i(a.Committed)))
	})
	first := max(sum.Steps-int64(len(steps)), 0) + 1 // steps trimmed from the log come before
	for i, st := range steps {
		tl.Steps = append(tl.Steps, stepJSON(first+int64(i), st))
	}
	return tl, nil
}

func stepJSON(seq int64, st audit.Step) StepJSON {
	out := StepJSON{Seq: seq, TS: st.TS, DecisionID: st.DecisionID, Tool: st.Tool, ToolClass: st.ToolClass, MCPMethod: st.MCPMethod,
		Decision: st.Decision, Reasons: st.Reasons, StepRisk: st.StepRisk, CumulativeRisk: st.CumulativeRisk,
		BudgetConsumption: st.BudgetConsumption, Provenance: st.Provenance, LinkedRuns: st.LinkedRuns,
		ApprovalID: st.ApprovalID, Committed: st.Committed, DryRun: st.DryRun}
	if out.Reasons == nil {
		out.Reasons = []string{}
	}
	if out.BudgetConsumption == nil {
		out.BudgetConsumption = map[string]float64{}
	}
	if out.Provenance == nil {
		out.Provenance = []audit.Provenance{}
	}
	if out.LinkedRuns == nil {
		out.LinkedRuns = []string{}
	}
	return out
}

func (h *handlers) graph(w http.ResponseWriter, r *http.Request) {
	q, ok := queryOf(w, r, "agent", "format", "depth")
	if !ok {
		return
	}
	format := q["format"]
	if format == "" {
		format = "json"
	}
	if !slices.Contains([]string{"json", "dot", "mermaid"}, format) {
		badRequest(w, "format must be json, dot or mermaid")
		return
	}
	depth := MaxGraphDepth
	if s := q["depth"]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > MaxGraphDepth {
			badRequest(w, fmt.Sprintf("depth must be an integer from 0 to %d", MaxGraphDepth))
			return
		}
		depth = n
	}
	ref, ok := h.resolve(w, r, q["agent"])
	if !ok {
		return
	}
	g, err := BuildGraph(r.Context(), h.store, ref, depth)
	if err != nil {
		writeReadError(w, err)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	switch format {
	case "dot":
		w.Header().Set("Content-Type", "text/vnd.graphviz; charset=utf-8")
		_, _ = w.Write([]byte(g.DOT()))
	case "mermaid":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte(g.Mermaid()))
	default:
		httpapi.WriteJSON(w, http.StatusOK, g)
	}
}

// resolve names the run of the path's id: the one of ?agent=, or the only
// agent's that has a run of this id. Run ids are chosen by agents and only
// unique per agent, so an id two agents used is ambiguous without ?agent=:
// 409 with the agents, rather than a guess that could show the wrong run.
func (h *handlers) resolve(w http.ResponseWriter, r *http.Request, agent string) (riskstore.RunRef, bool) {
	id := r.PathValue("id")
	switch {
	case id == "" || len(id) > riskstore.MaxIDLen:
		badRequest(w, "the run id must be 1 to 256 bytes")
		return riskstore.RunRef{}, false
	case len(agent) > riskstore.MaxIDLen:
		badRequest(w, "agent is longer than 256 bytes")
		return riskstore.RunRef{}, false
	case agent != "":
		return riskstore.RunRef{Agent: agent, ID: id}, true
	}
	agents, err := h.store.RunAgents(r.Context(), id)
	switch {
	case err != nil:
		unavailable(w)
	case len(agents) == 0:
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "no run with this id")
	case len(agents) > 1:
		httpapi.WriteJSON(w, http.StatusConflict, map[string]ambiguous{"error": {
			Code: "ambiguous_run", Message: "runs of several agents have this id: add ?agent= to name one", Agents: agents}})
	default:
		return riskstore.RunRef{Agent: agents[0], ID: id}, true
	}
	return riskstore.RunRef{}, false
}

type ambiguous struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Agents  []string `json:"agents"`
}

// queryOf reads the query string: bounded, each parameter at most once, and
// only the ones the endpoint knows (a misspelt filter must not silently
// widen a listing).
func queryOf(w http.ResponseWriter, r *http.Request, known ...string) (map[string]string, bool) {
	if len(r.URL.RawQuery) > maxQuery {
		badRequest(w, "query string too long")
		return nil, false
	}
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		badRequest(w, "query string cannot be parsed")
		return nil, false
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		if !slices.Contains(known, k) {
			badRequest(w, fmt.Sprintf("unknown parameter %q", truncate(k, 64)))
			return nil, false
		}
		if len(v) != 1 {
			badRequest(w, fmt.Sprintf("parameter %q given more than once", k))
			return nil, false
		}
		out[k] = v[0]
	}
	return out, true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func badRequest(w http.ResponseWriter, msg string) {
	httpapi.WriteError(w, http.StatusBadRequest, "bad_request", msg)
}

func unavailable(w http.ResponseWriter) {
	httpapi.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the run store is unavailable")
}

func writeReadError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNoRun) {
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "no run with this id for this agent")
		return
	}
	unavailable(w)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
