package runs

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

var t0 = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)

// api serves Routes over the HTTP API's own handler, with the credentials
// "ops" (operator), "approver" (approver only) and "root" (admin).
func api(t *testing.T, s Store) http.Handler {
	t.Helper()
	st, err := httpapi.NewStaticTokens([]httpapi.Credential{
		{Name: "ops", TokenSHA256: httpapi.TokenSHA256("ops"), Roles: []string{httpapi.RoleOperator}},
		{Name: "alice", TokenSHA256: httpapi.TokenSHA256("approver"), Roles: []string{httpapi.RoleApprover}},
		{Name: "root", TokenSHA256: httpapi.TokenSHA256("root"), Roles: []string{httpapi.RoleAdmin}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return httpapi.Handler(httpapi.Config{Auth: &httpapi.Auth{Authenticators: []httpapi.Authenticator{st}}, Routes: Routes(s)})
}

func get(h http.Handler, target, bearer string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "http://x"+target, nil)
	if bearer != "" {
		r.Header.Set("Authorization", "Bearer "+bearer)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// step appends one step to s, as the Check path does.
func step(s *riskstore.Memory, agent, run string, st audit.Step) {
	st.AgentID, st.RunID = agent, run
	if st.Decision == "" {
		st.Decision = "allow"
	}
	if st.TS.IsZero() {
		st.TS = t0
	}
	b, err := json.Marshal(st)
	if err != nil {
		panic(err)
	}
	s.AppendStep(riskstore.RunRef{Agent: agent, ID: run}, riskstore.StepMeta{TS: st.TS, Decision: st.Decision, CumulativeRisk: st.CumulativeRisk, Committed: st.Committed}, b)
}

func errorCode(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var body struct {
		Error struct {
			Code    string   `json:"code"`
			Message string   `json:"message"`
			Agents  []string `json:"agents"`
		} `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Code == "" || body.Error.Message == "" {
		t.Fatalf("status %d: not a JSON error: %s", w.Code, w.Body)
	}
	return body.Error.Code
}

// TestEveryEndpointNeedsTheOperatorRole: anonymous → 401, a credential
// without the role → 403, both JSON errors; operator and admin read.
func TestEveryEndpointNeedsTheOperatorRole(t *testing.T) {
	s := riskstore.NewMemory(time.Now)
	step(s, "a", "r1", audit.Step{Tool: "db.read"})
	h := api(t, s)
	for _, target := range []string{"/v1/runs", "/v1/runs/r1/timeline", "/v1/runs/r1/graph", "/v1/runs/r1/graph?format=dot"} {
		for _, c := range []struct {
			bearer string
			status int
			code   string
		}{{"", 401, "unauthenticated"}, {"wrong", 401, "unauthenticated"}, {"approver", 403, "forbidden"}, {"ops", 200, ""}, {"root", 200, ""}} {
			w := get(h, target, c.bearer)
			if w.Code != c.status {
				t.Errorf("%s as %q: %d, want %d: %s", target, c.bearer, w.Code, c.status, w.Body)
				continue
			}
			if c.code != "" {
				if got := errorCode(t, w); got != c.code {
					t.Errorf("%s as %q: code %s, want %s", target, c.bearer, got, c.code)
				}
				if strings.Contains(w.Body.String(), "db.read") {
					t.Errorf("%s as %q: a refusal shows data: %s", target, c.bearer, w.Body)
				}
			}
		}
	}
}

// TestListRejectsBadInput: every parameter is bounded and checked; a
// misspelt or repeated one is refused rather than ignored.
func TestListRejectsBadInput(t *testing.T) {
	s := riskstore.NewMemory(time.Now)
	h := api(t, s)
	for _, q := range []string{
		"limit=0", "limit=501", "limit=-1", "limit=abc", "limit=1e3", "limit=99999999999999999999",
		"decision=maybe", "since=yesterday", "agent=" + strings.Repeat("a", 257),
		"agents=a", "limit=1&limit=2", "cursor=c1.AAAA", "cursor=garbage", "cursor=" + strings.Repeat("A", 5000),
		"a=%zz", "x=" + strings.Repeat("b", 3000),
	} {
		w := get(h, "/v1/runs?"+q, "ops")
		if w.Code != http.StatusBadRequest {
			t.Errorf("?%.60s: %d, want 400: %s", q, w.Code, w.Body)
			continue
		}
		errorCode(t, w)
	}
	if w := get(h, "/v1/runs?limit=500&decision=deny&since=2026-03-02T12:00:00Z&agent=a", "ops"); w.Code != 200 {
		t.Errorf("valid query: %d %s", w.Code, w.Body)
	}
}

func list(t *testing.T, h http.Handler, query string) ListJSON {
	t.Helper()
	w := get(h, "/v1/runs?"+query, "ops")
	if w.Code != 200 {
		t.Fatalf("list ?%s: %d %s", query, w.Code, w.Body)
	}
	var out ListJSON
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCursorTampering: a cursor changed in any byte, or taken to a listing
// with other filters, is refused (400 bad_cursor), never read as another
// position or another listing.
func TestCursorTampering(t *testing.T) {
	s := riskstore.NewMemory(time.Now)
	for i := range 6 {
		step(s, "a", fmt.Sprintf("r%d", i), audit.Step{Tool: "db.read"})
	}
	h := api(t, s)
	page := list(t, h, "limit=2")
	c := page.NextCursor
	if c == "" || len(page.Runs) != 2 {
		t.Fatalf("first page %+v", page)
	}
	if got := list(t, h, "limit=2&cursor="+url.QueryEscape(c)); len(got.Runs) != 2 || got.Runs[0].RunID == page.Runs[0].RunID {
		t.Fatalf("second page %+v", got)
	}
	for i := range len(c) {
		for _, b := range []byte{'A', '_', '-', 'z', '0', '.'} {
			if c[i] == b {
				continue
			}
			bad := c[:i] + string(b) + c[i+1:]
			w := get(h, "/v1/runs?limit=2&cursor="+url.QueryEscape(bad), "ops")
			if w.Code != http.StatusBadRequest || errorCode(t, w) != "bad_cursor" {
				// A changed base64 digit may decode to the same bytes only in
				// its unused low bits, which Strict decoding refuses.
				t.Errorf("cursor with byte %d changed to %q: %d %s", i, b, w.Code, w.Body)
			}
		}
	}
	for _, q := range []string{"agent=a", "decision=deny", "since=2026-03-02T00:00:00Z"} {
		w := get(h, "/v1/runs?limit=2&"+q+"&cursor="+url.QueryEscape(c), "ops")
		if w.Code != http.StatusBadRequest || errorCode(t, w) != "bad_cursor" {
			t.Errorf("cursor reused with %s: %d %s", q, w.Code, w.Body)
		}
	}
}

// TestRunIDPathTricks: the id is one path segment, bounded; dot segments,
// encoded slashes and NULs name runs (or nothing), never another endpoint.
func TestRunIDPathTricks(t *testing.T) {
	s := riskstore.NewMemory(time.Now)
	step(s, "a", "a/b", audit.Step{Tool: "db.read"})
	step(s, "a", "..", audit.Step{Tool: "db.write"})
	h := api(t, s)
	cases := []struct {
		path   string
		status int
		run    string
	}{
		{"/v1/runs/a%2Fb/timeline", 200, "a/b"},
		{"/v1/runs/%2e%2e/timeline", 200, ".."},
		{"/v1/runs/a%00/timeline", 404, ""},
		{"/v1/runs/" + strings.Repeat("x", 257) + "/timeline", 400, ""},
		{"/v1/runs/nope/timeline", 404, ""},
		{"/v1/runs/nope/graph", 404, ""},
		{"/v1/runs/a%2Fb/graph?format=mermaid", 200, ""},
	}
	for _, c := range cases {
		w := get(h, c.path, "ops")
		if w.Code != c.status {
			t.Errorf("%s: %d, want %d: %s", c.path, w.Code, c.status, w.Body)
			continue
		}
		if c.run != "" {
			var tl TimelineJSON
			if err := json.Unmarshal(w.Body.Bytes(), &tl); err != nil || tl.RunID != c.run || len(tl.Steps) != 1 {
				t.Errorf("%s: %+v %v", c.path, tl, err)
			}
		}
	}
	// Dot segments in the raw path are cleaned by the mux (a redirect), never
	// served as some other endpoint's data.
	for _, p := range []string{"/v1/runs/../runs/a%2Fb/timeline", "/v1/runs/x/../../approvals", "/v1/runs//timeline"} {
		w := get(h, p, "ops")
		if w.Code == 200 {
			t.Errorf("%s answered 200: %s", p, w.Body)
		}
	}
}

// TestAmbiguousRunID: one id used by two agents is a 409 naming them unless
// ?agent= chooses; with it, each agent's run reads back as its own.
func TestAmbiguousRunID(t *testing.T) {
	s := riskstore.NewMemory(time.Now)
	step(s, "owner", "shared", audit.Step{Tool: "db.read", Decision: "allow"})
	step(s, "intruder", "shared", audit.Step{Tool: "db.write", Decision: "deny", Reasons: []string{"run_not_owned"}})
	h := api(t, s)
	for _, ep := range []string{"timeline", "graph", "graph?format=dot"} {
		w := get(h, "/v1/runs/shared/"+ep, "ops")
		var body struct {
			Error struct {
				Code   string   `json:"code"`
				Agents []string `json:"agents"`
			} `json:"error"`
		}
		if w.Code != http.StatusConflict || json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Error.Code != "ambiguous_run" ||
			!slices.Equal(body.Error.Agents, []string{"intruder", "owner"}) {
			t.Errorf("%s without agent: %d %s", ep, w.Code, w.Body)
		}
	}
	for agent, tool := range map[string]string{"owner": "db.read", "intruder": "db.write"} {
		var tl TimelineJSON
		w := get(h, "/v1/runs/shared/timeline?agent="+agent, "ops")
		if err := json.Unmarshal(w.Body.Bytes(), &tl); err != nil || w.Code != 200 || tl.AgentID != agent || len(tl.Steps) != 1 || tl.Steps[0].Tool != tool {
			t.Errorf("?agent=%s: %d %s", agent, w.Code, w.Body)
		}
	}
	if w := get(h, "/v1/runs/shared/timeline?agent=nobody", "ops"); w.Code != 404 {
		t.Errorf("an agent without the run: %d", w.Code)
	}
}

// nasty labels: each tries to break out of its quoting in DOT or Mermaid, add
// a node, an edge, a directive, markup, or forge a line.
var nasty = []string{
	`x"]; evil [label="pwned`,
	`x" -> evil; "`,
	"line1\nevil [label=x];\r\n}",
	`back\"slash\`,
	`\N \G \L \l`,
	`"]) --> evil(["`,
	"%%{init: {'securityLevel':'loose'}}%%",
	`<script>alert(1)</script><img src=x onerror=alert(1)>`,
	"`**md**` #quot; #35; &amp; &#34;",
	"click s1 \"javascript:alert(1)\"",
	"\u202eevil\u2066\u2028x\x00\x7f",
	"\xff\xfe invalid utf8",
	strings.Repeat("long ", 200),
}

// TestGraphLabelsCannotInject: agent-written text (run ids, provenance
// labels) goes through the graph as data: the DOT and Mermaid outputs contain
// exactly the graph's statements, and each label reads back as the JSON
// graph's label.
func TestGraphLabelsCannotInject(t *testing.T) {
	s := riskstore.NewMemory(time.Now)
	var prov []audit.Provenance
	for _, n := range nasty {
		prov = append(prov, audit.Provenance{SourceType: "retrieval", SourceName: n, TrustLevel: n})
	}
	run := `run"]; x -> y; %%` + "\n"
	step(s, "a", run, audit.Step{Tool: "db.read", Provenance: prov})
	g, err := BuildGraph(context.Background(), s, riskstore.RunRef{Agent: "a", ID: run}, MaxGraphDepth)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Nodes) != 3+len(nasty) || len(g.Edges) != 2+len(nasty) {
		t.Fatalf("graph has %d nodes and %d edges, want %d and %d", len(g.Nodes), len(g.Edges), 3+len(nasty), 2+len(nasty))
	}
	checkDOT(t, g)
	checkMermaid(t, g)
}

var (
	dotNode = regexp.MustCompile(`^  ([rstp][0-9]+) \[label="((?:[^"\\\n]|\\.)*)", shape=(box|ellipse|note|doubleoctagon)\];$`)
	dotEdge = regexp.MustCompile(`^  ([rstp][0-9]+) -> ([rstp][0-9]+) \[label="(sequence|calls|provenance)", style=(solid|dashed|bold)\];$`)
	mmNode  = regexp.MustCompile(`^  ([rstp][0-9]+)(\(\["|\["|\{\{"|\[\(")([A-Za-z0-9 ._:/@+=,#;-]*)("\]\)|"\]|"\}\}|"\)\])$`)
	mmEdge  = regexp.MustCompile(`^  ([rstp][0-9]+) (-->|-\.->|==>)\|(sequence|calls|provenance)\| ([rstp][0-9]+)$`)
	mmCode  = regexp.MustCompile(`#([0-9]+);`)
)

// checkDOT reads the DOT text line by line with the grammar the renderer may
// write, and requires exactly the graph's nodes and edges, labels unchanged.
func checkDOT(t *testing.T, g *Graph) {
	t.Helper()
	lines := strings.Split(g.DOT(), "\n")
	if lines[0] != "digraph aisecops_run {" || lines[1] != "  rankdir=LR;" || lines[len(lines)-2] != "}" || lines[len(lines)-1] != "" {
		t.Fatalf("DOT frame wrong:\n%s", g.DOT())
	}
	var nodes []Node
	var edges []Edge
	for _, l := range lines[2 : len(lines)-2] {
		if m := dotNode.FindStringSubmatch(l); m != nil {
			label := regexp.MustCompile(`\\(.)`).ReplaceAllString(m[2], "$1")
			nodes = append(nodes, Node{ID: m[1], Label: label})
			continue
		}
		if m := dotEdge.FindStringSubmatch(l); m != nil {
			edges = append(edges, Edge{From: m[1], To: m[2], Kind: m[3]})
			continue
		}
		t.Fatalf("DOT line outside the grammar: %q", l)
	}
	compare(t, "DOT", g, nodes, edges)
}

func checkMermaid(t *testing.T, g *Graph) {
	t.Helper()
	lines := strings.Split(g.Mermaid(), "\n")
	if lines[0] != "flowchart LR" || lines[len(lines)-1] != "" {
		t.Fatalf("Mermaid frame wrong:\n%s", g.Mermaid())
	}
	var nodes []Node
	var edges []Edge
	for _, l := range lines[1 : len(lines)-1] {
		if m := mmNode.FindStringSubmatch(l); m != nil {
			label := mmCode.ReplaceAllStringFunc(m[3], func(c string) string {
				n, _ := strconv.Atoi(c[1 : len(c)-1])
				return string(rune(n))
			})
			nodes = append(nodes, Node{ID: m[1], Label: label})
			continue
		}
		if m := mmEdge.FindStringSubmatch(l); m != nil {
			edges = append(edges, Edge{From: m[1], To: m[4], Kind: m[3]})
			continue
		}
		t.Fatalf("Mermaid line outside the grammar: %q", l)
	}
	compare(t, "Mermaid", g, nodes, edges)
}

func compare(t *testing.T, format string, g *Graph, nodes []Node, edges []Edge) {
	t.Helper()
	if len(nodes) != len(g.Nodes) || len(edges) != len(g.Edges) {
		t.Fatalf("%s: %d nodes %d edges, graph has %d and %d", format, len(nodes), len(edges), len(g.Nodes), len(g.Edges))
	}
	for i, n := range g.Nodes {
		if nodes[i].ID != n.ID || nodes[i].Label != n.Label {
			t.Errorf("%s node %d: %q %q, want %q %q", format, i, nodes[i].ID, nodes[i].Label, n.ID, n.Label)
		}
	}
	for i, e := range g.Edges {
		if edges[i] != e {
			t.Errorf("%s edge %d: %+v, want %+v", format, i, edges[i], e)
		}
	}
}

// FuzzGraphLabels: whatever an agent writes, the outputs stay in the grammar.
func FuzzGraphLabels(f *testing.F) {
	for _, n := range nasty {
		f.Add(n, n)
	}
	f.Fuzz(func(t *testing.T, run, label string) {
		if run == "" || len(run) > riskstore.MaxIDLen {
			return
		}
		s := riskstore.NewMemory(time.Now)
		step(s, "a", run, audit.Step{Tool: label, Provenance: []audit.Provenance{{SourceType: label, SourceName: label, TrustLevel: "x"}}})
		g, err := BuildGraph(context.Background(), s, riskstore.RunRef{Agent: "a", ID: run}, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkDOT(t, g)
		checkMermaid(t, g)
	})
}

// FuzzCursor: no input panics the decoder, and only a cursor this listing
// encoded decodes.
func FuzzCursor(f *testing.F) {
	q := riskstore.RunQuery{Agent: "a"}
	f.Add(encodeCursor(42, q))
	f.Add("c1.")
	f.Add("c1.AAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		pos, err := decodeCursor(s, q)
		if err == nil && encodeCursor(pos, q) != s {
			t.Fatalf("%q decodes to %d, which encodes as %q", s, pos, encodeCursor(pos, q))
		}
	})
}

// TestTimelineIsInDecisionOrder: replicas' writers append a run's steps in the
// order they reach the store; the timeline orders them by time, then by the
// run's tool calls after each step, a commit before a denial decided on its
// state.
func TestTimelineIsInDecisionOrder(t *testing.T) {
	t.Parallel()
	s := riskstore.NewMemory(time.Now)
	ts := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	for _, st := range []audit.Step{
		{TS: ts, DecisionID: "c3", Decision: "allow", Committed: true, RunCalls: 3},
		{TS: ts, DecisionID: "d1", Decision: "deny", RunCalls: 1},
		{TS: ts, DecisionID: "c1", Decision: "allow", Committed: true, RunCalls: 1},
		{TS: ts, DecisionID: "c2", Decision: "allow", Committed: true, RunCalls: 2},
		{TS: ts.Add(-time.Second), DecisionID: "early", Decision: "deny"},
	} {
		step(s, "a", "r", st)
	}
	tl, err := ReadTimeline(context.Background(), s, riskstore.RunRef{Agent: "a", ID: "r"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, st := range tl.Steps {
		got = append(got, st.DecisionID)
		if st.Seq != int64(i+1) {
			t.Errorf("step %s has seq %d", st.DecisionID, st.Seq)
		}
	}
	if want := []string{"early", "c1", "d1", "c2", "c3"}; !slices.Equal(got, want) {
		t.Fatalf("timeline %v, want %v", got, want)
	}
}
