package extauthz_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/runs"
	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

// runsAPI serves the run endpoints of the store over real HTTP, with the
// operator credential "ops".
func runsAPI(t *testing.T, s runs.Store) *httptest.Server {
	t.Helper()
	st, err := httpapi.NewStaticTokens([]httpapi.Credential{{Name: "ops", TokenSHA256: httpapi.TokenSHA256("ops"), Roles: []string{httpapi.RoleOperator}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.Handler(httpapi.Config{Auth: &httpapi.Auth{Authenticators: []httpapi.Authenticator{st}}, Routes: runs.Routes(s)}))
	t.Cleanup(srv.Close)
	return srv
}

func getJSON(t *testing.T, srv *httptest.Server, path string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer ops")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 && v != nil {
		if s, ok := v.(*string); ok {
			*s = string(body)
		} else if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("%s: %v: %s", path, err, body)
		}
	}
	return resp.StatusCode
}

// timelineOf reads a run's timeline through the API, waiting for want steps
// (a Redis store appends in the background).
func timelineOf(t *testing.T, srv *httptest.Server, path string, want int) runs.TimelineJSON {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var tl runs.TimelineJSON
		status := getJSON(t, srv, path, &tl)
		if status == 200 && len(tl.Steps) >= want {
			return tl
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %d, %d steps, want %d", path, status, len(tl.Steps), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func storeOf(t *testing.T, e *env) runs.Store {
	s, ok := e.store.(runs.Store)
	if !ok {
		t.Fatalf("%T has no step log", e.store)
	}
	return s
}

// TestWorkedExampleTimeline: the seed's worked example (section 8), driven by
// real Checks, reads back through GET /v1/runs/{id}/timeline with its step
// risks 0.10, 0.96 and 0.275 and their factors, and its graph's edges follow
// the provenance labels each call carried.
func TestWorkedExampleTimeline(t *testing.T) { forEachStore(t, testWorkedExampleTimeline) }

func testWorkedExampleTimeline(t *testing.T, store envOption) {
	e := newEnv(t, store)
	srv := runsAPI(t, storeOf(t, e))
	const run = "run-worked-timeline"
	steps := []struct {
		tool, args string
		label      string // the provenance source of the call's context
		r, ee, tt  float64
		b, step    float64
		total      float64
		decision   string
	}{
		{"db.read", `{"table":"crm_contacts","limit":1}`, `{"source_type":"user_prompt","source_name":"ticket-4711","trust_level":"internal"}`, 0.2, 1.0, 0.5, 1.0, 0.10, 0.10, "allow"},
		{"send_email", `{"to":"bob@example.com","subject":"hello","body":"hi"}`, `{"source_type":"tool_output","source_name":"db.read crm_contacts","trust_level":"internal"}`, 0.4, 1.2, 2.0, 1.0, 0.96, 1.06, "allow"},
		{"db.write", `{"table":"crm_contacts","id":7,"status":"emailed"}`, `{"source_type":"tool_output","source_name":"send_email receipt","trust_level":"internal"}`, 0.5, 1.0, 0.5, 1.1, 0.275, 1.335, "require_approval"},
	}
	var ids []string
	for _, s := range steps {
		r := e.call(t, "crm-agent", s.tool, run, s.args)
		r.headers["x-aisecops-provenance"] = b64("[" + s.label + "]")
		res := e.check(t, r)
		recs := e.auditRecords(t)
		ids = append(ids, recs[len(recs)-1].DecisionID)
		if res.body.Decision != "" && res.body.Decision != s.decision {
			t.Fatalf("%s: %s %v", s.tool, res.body.Decision, reasonCodes(res.body))
		}
	}
	tl := timelineOf(t, srv, "/v1/runs/"+run+"/timeline", 3)
	if tl.RunID != run || tl.AgentID != "crm-agent" || len(tl.Steps) != 3 {
		t.Fatalf("timeline %+v", tl)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	for i, s := range steps {
		got := tl.Steps[i]
		f := got.StepRisk
		if got.Seq != int64(i+1) || got.DecisionID != ids[i] || got.Tool != s.tool || got.Decision != s.decision ||
			!near(f.RStep, s.r) || !near(f.E, s.ee) || !near(f.T, s.tt) || !near(f.B, s.b) || !near(f.Step, s.step) || !near(got.CumulativeRisk, s.total) {
			t.Errorf("step %d: %+v\nwant %s %s R %v E %v T %v B %v step %v total %v", i+1, got, s.tool, s.decision, s.r, s.ee, s.tt, s.b, s.step, s.total)
		}
	}
	if got := fmt.Sprintf("%.2f %.2f %.2f", tl.Steps[0].StepRisk.Step, tl.Steps[1].StepRisk.Step, tl.Steps[2].StepRisk.Step); got != "0.10 0.96 0.28" {
		t.Errorf("printed step risks %s, want the seed's 0.10 0.96 0.28", got)
	}
	if b := tl.Steps[2].BudgetConsumption["max_write_operations"]; !near(b, 0.1) {
		t.Errorf("step 3 consumes %v of the write budget, want 0.1 (B = 1.1)", b)
	}

	var g runs.Graph
	if status := getJSON(t, srv, "/v1/runs/"+run+"/graph", &g); status != 200 {
		t.Fatalf("graph: %d", status)
	}
	label := map[string]string{}
	for _, n := range g.Nodes {
		label[n.ID] = n.Kind + " " + n.Label
	}
	var edges []string
	for _, ed := range g.Edges {
		edges = append(edges, label[ed.From]+" -"+ed.Kind+"-> "+label[ed.To])
	}
	want := []string{
		"run crm-agent@" + run + " -sequence-> step #1 db.read allow risk 0.1",
		"step #1 db.read allow risk 0.1 -calls-> tool db.read",
		"source user_prompt: ticket-4711 (internal) -provenance-> step #1 db.read allow risk 0.1",
		"step #1 db.read allow risk 0.1 -sequence-> step #2 send_email allow risk 0.96",
		"step #2 send_email allow risk 0.96 -calls-> tool send_email",
		"source tool_output: db.read crm_contacts (internal) -provenance-> step #2 send_email allow risk 0.96",
		"step #2 send_email allow risk 0.96 -sequence-> step #3 db.write require_approval risk 0.275",
		"step #3 db.write require_approval risk 0.275 -calls-> tool db.write",
		"source tool_output: send_email receipt (internal) -provenance-> step #3 db.write require_approval risk 0.275",
	}
	if !slices.Equal(edges, want) || g.Truncated {
		t.Errorf("graph edges:\n%s\nwant:\n%s", strings.Join(edges, "\n"), strings.Join(want, "\n"))
	}
}

// TestRunAcrossReplicasReadsBackThroughTheAPI: a run whose steps two replicas
// decided, on one real Redis, reads back whole through the API served from a
// third client of that Redis: every step once, in order, and listed once.
func TestRunAcrossReplicasReadsBackThroughTheAPI(t *testing.T) {
	srvRedis := redistest.StartServer(t)
	a := newEnv(t, withStore(newRedisStore(t, srvRedis)))
	b := newEnv(t, sharing(a))
	b2 := newEnv(t, withStore(newRedisStore(t, srvRedis)), func(c *extauthz.Config) { c.Verifier = a.verifier }) // another process's client
	var ids []string
	for i, e := range []*env{a, b, a, b2, b, a, b2} {
		res := e.check(t, a.call(t, "demo-agent", "db.read", "run-spread-api", fmt.Sprintf(`{"table":"t%d"}`, i)))
		if !res.allowed {
			t.Fatal(reasonCodes(res.body))
		}
		ids = append(ids, res.headers[extauthz.HeaderDecisionID])
	}
	reader := newRedisStore(t, srvRedis) // the API's replica decided nothing
	api := runsAPI(t, reader)
	tl := timelineOf(t, api, "/v1/runs/run-spread-api/timeline", len(ids))
	var got []string
	for i, s := range tl.Steps {
		got = append(got, s.DecisionID)
		if s.Seq != int64(i+1) {
			t.Errorf("step %d has seq %d", i+1, s.Seq)
		}
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("timeline %v, want %v", got, ids)
	}
	var list runs.ListJSON
	deadline := time.Now().Add(10 * time.Second)
	for getJSON(t, api, "/v1/runs?agent=demo-agent", &list) == 200 && (len(list.Runs) != 1 || list.Runs[0].Steps != int64(len(ids))) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if len(list.Runs) != 1 || list.Runs[0].RunID != "run-spread-api" || list.Runs[0].Steps != int64(len(ids)) || list.Runs[0].LastDecision != "allow" {
		t.Fatalf("listing %+v", list)
	}
}

// TestCrossAgentRunsAreOneGraph: a writer-agent run whose context is a
// research-agent run's output is one graph: both runs, the research steps,
// and a provenance edge from the research run to the step that consumed it
// (AISecOps v1.0 section 22.2) — in JSON, DOT and Mermaid alike.
func TestCrossAgentRunsAreOneGraph(t *testing.T) { forEachStore(t, testCrossAgentGraph) }

func testCrossAgentGraph(t *testing.T, store envOption) {
	e := newEnv(t, store)
	srv := runsAPI(t, storeOf(t, e))
	for i, tool := range []string{"db.read", "web.fetch"} {
		args := `{"table":"t"}`
		if tool == "web.fetch" {
			args = `{"url":"https://api.vendor.example/data"}`
		}
		if res := e.check(t, e.call(t, "research-agent", tool, "run-research", args)); !res.allowed {
			t.Fatalf("research step %d: %v", i, reasonCodes(res.body))
		}
	}
	r := e.call(t, "writer-agent", "db.write", "run-writer", `{"row":1}`)
	r.headers["x-aisecops-provenance"] = b64(`[{"source_type":"agent_output","source_name":"research-agent@run-research","trust_level":"internal"}]`)
	if res := e.check(t, r); !res.allowed {
		t.Fatalf("linked write: %v", reasonCodes(res.body))
	}
	timelineOf(t, srv, "/v1/runs/run-research/timeline", 2)
	tl := timelineOf(t, srv, "/v1/runs/run-writer/timeline", 1)
	if !slices.Equal(tl.Steps[0].LinkedRuns, []string{"research-agent@run-research"}) {
		t.Fatalf("writer step links %v", tl.Steps[0].LinkedRuns)
	}
	var g runs.Graph
	if status := getJSON(t, srv, "/v1/runs/run-writer/graph?format=json", &g); status != 200 {
		t.Fatalf("graph: %d", status)
	}
	byID := map[string]runs.Node{}
	for _, n := range g.Nodes {
		byID[n.ID] = n
	}
	var edges []string
	for _, ed := range g.Edges {
		edges = append(edges, byID[ed.From].Label+" -"+ed.Kind+"-> "+byID[ed.To].Label)
	}
	want := []string{
		"writer-agent@run-writer -sequence-> #1 db.write allow risk 0.25",
		"#1 db.write allow risk 0.25 -calls-> db.write",
		"research-agent@run-research -provenance-> #1 db.write allow risk 0.25",
		"research-agent@run-research -sequence-> #1 db.read allow risk 0.1",
		"#1 db.read allow risk 0.1 -calls-> db.read",
		"#1 db.read allow risk 0.1 -sequence-> #2 web.fetch allow risk 0.3",
		"#2 web.fetch allow risk 0.3 -calls-> web.fetch",
	}
	if !slices.Equal(edges, want) || g.Truncated {
		t.Errorf("graph (truncated %v):\n%s\nwant:\n%s", g.Truncated, strings.Join(edges, "\n"), strings.Join(want, "\n"))
	}
	for _, f := range []string{"dot", "mermaid"} {
		var text string
		if status := getJSON(t, srv, "/v1/runs/run-writer/graph?format="+f, &text); status != 200 ||
			!strings.Contains(text, "research-agent@run-research") || !strings.Contains(text, "writer-agent@run-writer") {
			t.Errorf("%s: %d\n%s", f, status, text)
		}
	}
	// Depth 0: the linked run is a node, not expanded, and the graph says so.
	if getJSON(t, srv, "/v1/runs/run-writer/graph?depth=0", &g); len(g.Nodes) != 4 || !g.Truncated {
		t.Errorf("depth 0: %d nodes, truncated %v", len(g.Nodes), g.Truncated)
	}
}

// TestRunsPaginationCoversEveryRunOnce: runs made by real Checks, listed
// through the API page by page with the opaque cursor, come back every one
// exactly once, newest first; the same holds with an agent filter.
func TestRunsPaginationCoversEveryRunOnce(t *testing.T) { forEachStore(t, testRunsPagination) }

func testRunsPagination(t *testing.T, store envOption) {
	e := newEnv(t, store)
	srv := runsAPI(t, storeOf(t, e))
	var want, wantDemo []string
	for i := range 23 {
		agent := []string{"demo-agent", "tiny-agent", "doc-agent"}[i%3]
		run := fmt.Sprintf("run-page-%02d", i)
		if res := e.check(t, e.call(t, agent, "db.read", run, `{"table":"t"}`)); !res.allowed {
			t.Fatalf("%s %s: %v", agent, run, reasonCodes(res.body))
		}
		want = append([]string{agent + "@" + run}, want...)
		if agent == "demo-agent" {
			wantDemo = append([]string{agent + "@" + run}, wantDemo...)
		}
		e.advance(time.Second)
	}
	listAll := func(query string, wantN int) []string {
		deadline := time.Now().Add(10 * time.Second)
		for {
			var got []string
			cursor := ""
			for pages := 0; ; pages++ {
				q := query
				if cursor != "" {
					q += "&cursor=" + url.QueryEscape(cursor)
				}
				var page runs.ListJSON
				if status := getJSON(t, srv, "/v1/runs?"+q, &page); status != 200 || pages > 100 {
					t.Fatalf("?%s: %d after %d pages", q, status, pages)
				}
				for _, r := range page.Runs {
					got = append(got, r.AgentID+"@"+r.RunID)
				}
				if cursor = page.NextCursor; cursor == "" {
					break
				}
			}
			if len(got) >= wantN || time.Now().After(deadline) {
				return got
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got := listAll("limit=4", len(want)); !slices.Equal(got, want) {
		t.Errorf("pages of 4:\n%v\nwant\n%v", got, want)
	}
	if got := listAll("limit=3&agent=demo-agent", len(wantDemo)); !slices.Equal(got, wantDemo) {
		t.Errorf("demo-agent's runs by 3:\n%v\nwant\n%v", got, wantDemo)
	}
	if got := listAll("limit=500", len(want)); !slices.Equal(got, want) {
		t.Errorf("one page:\n%v\nwant\n%v", got, want)
	}
}
