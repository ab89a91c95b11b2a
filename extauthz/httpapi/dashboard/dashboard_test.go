package dashboard

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

var t0 = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// world is the API with the dashboard mounted, as serve.go assembles it:
// static credentials "ops-token" (operator), "approver-token" (operator and
// approver) and "lone-approver" (approver only), a memory store, an index of
// auditPath, and stand-ins for the run endpoints another branch builds
// (DESIGN §7 shapes).
type world struct {
	h        http.Handler
	dash     *Dashboard
	store    *riskstore.Memory
	index    *Index
	sessions *Sessions
	clock    *clock
	audit    string
	key      *DeclarationKey
}

func newWorld(t testing.TB, opts SessionOptions) *world {
	t.Helper()
	w := &world{clock: &clock{now: t0}}
	st, err := httpapi.NewStaticTokens([]httpapi.Credential{
		{Name: "ops", TokenSHA256: httpapi.TokenSHA256("ops-token"), Roles: []string{httpapi.RoleOperator}},
		{Name: "alice", TokenSHA256: httpapi.TokenSHA256("approver-token"), Roles: []string{httpapi.RoleOperator, httpapi.RoleApprover}},
		{Name: "bob", TokenSHA256: httpapi.TokenSHA256("lone-approver"), Roles: []string{httpapi.RoleApprover}},
	})
	if err != nil {
		t.Fatal(err)
	}
	w.sessions = NewSessions(opts)
	auth := &httpapi.Auth{Authenticators: []httpapi.Authenticator{st}, Clock: w.clock.Now, Sessions: w.sessions}
	w.store = riskstore.NewMemory(w.clock.Now)
	w.audit = filepath.Join(t.TempDir(), "audit.jsonl")
	w.index = NewIndex(w.audit, IndexOptions{Clock: w.clock.Now})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	w.key = NewDeclarationKey(priv)
	w.dash, err = New(Config{Auth: auth, Sessions: w.sessions, Index: w.index, Approvals: w.store, DeclarationKey: w.key, Clock: w.clock.Now,
		Versions:   func() (string, string) { return "v1.0", "abc123" },
		Thresholds: func(a string) (float64, float64, bool) { return 1.2, 2.0, a == "crm-agent" },
		Evidence: Evidence{
			VerifyAudit: func() (int, error) { return 3, nil },
			ThreatSuite: func(context.Context) (SuiteFacts, error) {
				return SuiteFacts{Passed: 15, ClassesStopped: 6, Classes: 6, PolicyVersion: "v1.0"}, nil
			},
			Agents:          func() []AgentFacts { return []AgentFacts{{ID: "crm-agent", AllowedTools: 3, Approval: 1.2, Halt: 2}} },
			MaxTokenTTL:     15 * time.Minute,
			ContextFirewall: true,
		}})
	if err != nil {
		t.Fatal(err)
	}
	routes := append(w.dash.Routes(), standIns(w)...)
	api := httpapi.Handler(httpapi.Config{Approvals: w.store, Auth: auth, Clock: w.clock.Now, Routes: routes})
	w.dash.SetAPI(api)
	w.h = Secure(api)
	return w
}

// standIns answer the run and evidence endpoints (DESIGN §7) from the
// index, until the branch that builds them lands.
func standIns(w *world) []httpapi.Route {
	op := httpapi.RoleOperator
	return []httpapi.Route{
		{Pattern: "GET /v1/runs", Role: op, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			httpapi.WriteJSON(rw, 200, map[string]any{"runs": w.index.Runs(RunFilter{Agent: r.URL.Query().Get("agent")}), "next_cursor": ""})
		})},
		{Pattern: "GET /v1/runs/{id}/timeline", Role: op, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			httpapi.WriteJSON(rw, 200, timelineOf(w, r.PathValue("id")))
		})},
		{Pattern: "GET /v1/runs/{id}/graph", Role: op, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			tl := timelineOf(w, r.PathValue("id"))
			nodes := []map[string]string{{"id": "run", "kind": "run", "label": r.PathValue("id")}}
			edges := []map[string]string{}
			prev := "run"
			for _, s := range tl["steps"].([]map[string]any) {
				id := fmt.Sprint("step-", s["seq"])
				nodes = append(nodes, map[string]string{"id": id, "kind": "step", "label": fmt.Sprint(s["seq"], ". ", s["tool"])},
					map[string]string{"id": "tool-" + s["tool"].(string), "kind": "tool", "label": s["tool"].(string)})
				edges = append(edges, map[string]string{"from": prev, "to": id, "kind": "sequence"}, map[string]string{"from": id, "to": "tool-" + s["tool"].(string), "kind": "calls"})
				prev = id
			}
			nodes = append(nodes, map[string]string{"id": "src", "kind": "source", "label": `<img src=x onerror="document.title='pwned-graph'">`})
			edges = append(edges, map[string]string{"from": "src", "to": "step-1", "kind": "provenance"})
			httpapi.WriteJSON(rw, 200, map[string]any{"nodes": nodes, "edges": edges})
		})},
		{Pattern: "GET /v1/evidence", Role: op, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			httpapi.WriteJSON(rw, 200, map[string]any{"from": r.URL.Query().Get("from"), "to": r.URL.Query().Get("to"), "records": []any{}})
		})},
	}
}

func timelineOf(w *world, id string) map[string]any {
	steps := []map[string]any{}
	w.index.mu.RLock()
	defer w.index.mu.RUnlock()
	n := 0
	agent := ""
	for _, e := range w.index.events {
		a, run, _ := strings.Cut(w.index.strs.str(e.run), "\x00")
		if run != id {
			continue
		}
		n++
		agent = a
		var reasons []string
		for _, r := range e.reasons {
			reasons = append(reasons, w.index.strs.str(r))
		}
		steps = append(steps, map[string]any{"seq": n, "ts": time.Unix(0, e.ts).UTC(), "decision_id": fmt.Sprint("d_", n), "tool": w.index.strs.str(e.tool),
			"decision": w.index.strs.str(e.decision), "reasons": reasons, "step_risk": map[string]float64{"r_step": 0.5, "e": 1, "t": 0.5, "b": 1, "step": float64(e.step)},
			"cumulative_risk": e.cum, "budget_consumption": map[string]float64{}})
	}
	return map[string]any{"run_id": id, "agent_id": agent, "steps": steps}
}

// record is one audit line as the authz server writes it (the fields the
// index reads).
func record(ts time.Time, agent, run, tool, decision string, step, cum, e float64, reasons ...string) string {
	rs := make([]map[string]string, 0, len(reasons))
	for _, r := range reasons {
		rs = append(rs, map[string]string{"code": r, "message": r})
	}
	b, _ := json.Marshal(map[string]any{"ts": ts, "decision_id": "d", "run_id": run, "trace_id": "t-" + run, "agent_id": agent, "tool": tool,
		"decision": decision, "reasons": rs, "control_ids": []string{"AIS-EXE-01"}, "step_risk": map[string]float64{"r_step": 0.2, "e": e, "t": 0.5, "b": 1, "step": step},
		"cumulative_risk": cum, "token_jti": "j", "policy_version": "v1.0", "route_version": "r1"})
	return string(b)
}

func (w *world) write(t testing.TB, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(w.audit, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range lines {
		if _, err := io.WriteString(f, l+"\n"); err != nil {
			t.Fatal(err)
		}
	}
}

type req struct {
	method, path, body, bearer, ctype string
	cookies                           []*http.Cookie
	header                            map[string]string
	tls                               bool
}

func (w *world) do(r req) *httptest.ResponseRecorder {
	if r.method == "" {
		r.method = http.MethodGet
	}
	hr := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
	if r.bearer != "" {
		hr.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	if r.ctype != "" {
		hr.Header.Set("Content-Type", r.ctype)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	for _, c := range r.cookies {
		hr.AddCookie(c)
	}
	if r.tls {
		hr.TLS = &tls.ConnectionState{}
	}
	rec := httptest.NewRecorder()
	w.h.ServeHTTP(rec, hr)
	return rec
}

// signIn signs in with credential and returns the session cookie and the
// CSRF token the pages carry.
func (w *world) signIn(t testing.TB, credential string, overTLS bool) (*http.Cookie, string) {
	t.Helper()
	page := w.do(req{path: "/signin", tls: overTLS})
	login := cookieNamed(page.Result().Cookies(), loginCookie)
	if login == nil {
		t.Fatal("sign-in page set no login cookie")
	}
	form := url.Values{"credential": {credential}, csrfField: {login.Value}}
	resp := w.do(req{method: "POST", path: "/signin", body: form.Encode(), ctype: "application/x-www-form-urlencoded", cookies: []*http.Cookie{login}, tls: overTLS})
	if resp.Code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d %s", resp.Code, resp.Body)
	}
	sess := cookieNamed(resp.Result().Cookies(), SessionCookie)
	if sess == nil {
		t.Fatal("no session cookie")
	}
	overview := w.do(req{path: "/", cookies: []*http.Cookie{sess}})
	return sess, metaCSRF(t, overview.Body.String())
}

func cookieNamed(cs []*http.Cookie, name string) *http.Cookie {
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func metaCSRF(t testing.TB, page string) string {
	t.Helper()
	const marker = `<meta name="csrf-token" content="`
	i := strings.Index(page, marker)
	if i < 0 {
		t.Fatalf("page has no CSRF meta tag:\n%s", page)
	}
	rest := page[i+len(marker):]
	return rest[:strings.IndexByte(rest, '"')]
}

var pages = []string{"/", "/runs", "/run?id=r1&agent=crm-agent", "/approvals", "/policy", "/evidence"}

var dataEndpoints = []struct{ method, path string }{
	{"GET", "/v1/overview"}, {"GET", "/v1/overview?window=7d"}, {"GET", "/v1/overview/runs?tool=db.read"},
	{"GET", "/v1/overview/agents/crm-agent"}, {"GET", "/v1/overview/held/d1"}, {"GET", "/v1/policy/status"}, {"GET", "/v1/policy/files"}, {"GET", "/v1/maturity"},
	{"GET", "/v1/declaration"}, {"GET", "/v1/declaration/key"}, {"POST", "/ui/export/declaration"}, {"POST", "/ui/export/evidence"},
	{"GET", "/v1/approvals"}, {"GET", "/v1/runs"}, {"GET", "/v1/runs/r1/timeline"}, {"GET", "/v1/runs/r1/graph"}, {"GET", "/v1/evidence"},
	{"POST", "/v1/approvals/apr_x/approve"},
}

// TestAnonymousRefused: every page sends an anonymous browser to sign in
// (with no data in the answer), every data endpoint answers 401 JSON, also
// with a forged or expired session cookie.
func TestAnonymousRefused(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	w.write(t, record(t0, "crm-agent", "r1", "db.read", "allow", 0.1, 0.1, 1))
	for _, cookies := range [][]*http.Cookie{nil, {{Name: SessionCookie, Value: "forged"}}} {
		for _, p := range pages {
			resp := w.do(req{path: p, cookies: cookies})
			if resp.Code != http.StatusSeeOther || resp.Header().Get("Location") != "/signin" {
				t.Errorf("anonymous GET %s: %d %q, want 303 to /signin", p, resp.Code, resp.Header().Get("Location"))
			}
			if strings.Contains(resp.Body.String(), "crm-agent") || strings.Contains(resp.Body.String(), "csrf-token") {
				t.Errorf("anonymous GET %s leaked page content: %s", p, resp.Body)
			}
		}
		for _, e := range dataEndpoints {
			resp := w.do(req{method: e.method, path: e.path, cookies: cookies})
			var body struct{ Error httpapi.Error }
			if resp.Code != http.StatusUnauthorized || json.Unmarshal(resp.Body.Bytes(), &body) != nil || body.Error.Code != "unauthenticated" {
				t.Errorf("anonymous %s %s: %d %s, want 401 JSON", e.method, e.path, resp.Code, resp.Body)
			}
		}
	}
	// Headers a browser needs on every answer, refusals included.
	resp := w.do(req{path: "/v1/overview"})
	for k, want := range map[string]string{"Content-Security-Policy": ContentSecurityPolicy, "X-Frame-Options": "DENY",
		"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"} {
		if got := resp.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(ContentSecurityPolicy, "frame-ancestors 'none'") || strings.Contains(ContentSecurityPolicy, "unsafe-inline") {
		t.Errorf("CSP %q must forbid framing and inline script", ContentSecurityPolicy)
	}
	// A caller without the operator role is refused the pages and sign-in.
	if resp := w.do(req{path: "/", bearer: "lone-approver"}); resp.Code != http.StatusForbidden {
		t.Errorf("approver-only bearer on /: %d, want 403", resp.Code)
	}
	// Bearer credentials work on pages and data, for scripts.
	for _, p := range pages {
		if resp := w.do(req{path: p, bearer: "ops-token"}); resp.Code != http.StatusOK {
			t.Errorf("GET %s with a bearer: %d", p, resp.Code)
		}
	}
}

// TestStateChangeNeedsCSRF: with a session cookie, every state change
// without the session's CSRF token (or with another session's) is refused,
// and the same request with it goes through.
func TestStateChangeNeedsCSRF(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	ctx := context.Background()
	ap := riskstore.Approval{ID: "apr_1", RunID: "r1", AgentID: "crm-agent", Tool: "db.write", Binding: "b", Status: riskstore.ApprovalPending, CreatedAt: t0}
	if err := w.store.CreateApproval(ctx, ap, time.Hour); err != nil {
		t.Fatal(err)
	}
	sess, csrf := w.signIn(t, "approver-token", false)
	_, other := w.signIn(t, "approver-token", false)
	if csrf == "" || other == "" || csrf == other {
		t.Fatalf("CSRF tokens %q %q: want distinct per session", csrf, other)
	}
	jar := []*http.Cookie{sess}
	form := func(tok string) string {
		return url.Values{csrfField: {tok}, "from": {"2026-03-01T00:00:00Z"}}.Encode()
	}
	changes := []struct {
		name string
		r    func(tok string) req
		ok   int
	}{
		{"approve", func(tok string) req {
			return req{method: "POST", path: "/v1/approvals/apr_1/approve", body: `{"why":"ok"}`, ctype: "application/json", header: map[string]string{CSRFHeader: tok}}
		}, http.StatusOK},
		{"reject", func(tok string) req {
			return req{method: "POST", path: "/v1/approvals/apr_1/reject", body: `{"why":"no"}`, ctype: "application/json", header: map[string]string{CSRFHeader: tok}}
		}, http.StatusConflict}, // already approved above: past the CSRF check
		{"replay diff", func(tok string) req {
			return req{method: "POST", path: "/v1/replay/diff", body: `{}`, ctype: "application/json", header: map[string]string{CSRFHeader: tok}}
		}, http.StatusMethodNotAllowed}, // not mounted in this test: the mux answers, after no auth (see below)
		{"evidence export", func(tok string) req {
			return req{method: "POST", path: "/ui/export/evidence", body: form(tok), ctype: "application/x-www-form-urlencoded"}
		}, http.StatusOK},
		{"declaration export", func(tok string) req {
			return req{method: "POST", path: "/ui/export/declaration", body: form(tok), ctype: "application/x-www-form-urlencoded"}
		}, http.StatusOK},
		{"sign-out", func(tok string) req {
			return req{method: "POST", path: "/signout", body: form(tok), ctype: "application/x-www-form-urlencoded"}
		}, http.StatusSeeOther},
	}
	for _, c := range changes {
		if c.name == "replay diff" {
			continue // checked on a mounted handler below
		}
		for _, bad := range []string{"", other, csrf + "x"} {
			r := c.r(bad)
			r.cookies = jar
			resp := w.do(r)
			if resp.Code != http.StatusForbidden || !strings.Contains(resp.Body.String(), "csrf") {
				t.Errorf("%s with CSRF %q: %d %s, want 403 csrf", c.name, bad, resp.Code, resp.Body)
			}
		}
		r := c.r(csrf)
		r.cookies = jar
		if resp := w.do(r); resp.Code != c.ok {
			t.Errorf("%s with the session's CSRF token: %d %s, want %d", c.name, resp.Code, resp.Body, c.ok)
		}
	}
	// After sign-out the session is gone.
	if resp := w.do(req{path: "/v1/overview", cookies: jar}); resp.Code != http.StatusUnauthorized {
		t.Errorf("after sign-out: %d, want 401", resp.Code)
	}
	// Any POST route that the API mounts gets the same check (replay diff
	// belongs to another branch; here a stand-in of it).
	auth := &httpapi.Auth{Sessions: w.sessions, Clock: w.clock.Now}
	reached := false
	h := auth.Require(httpapi.RoleOperator, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached = true }))
	sess2, csrf2 := w.signIn(t, "ops-token", false)
	for tok, want := range map[string]bool{"": false, csrf2: true} {
		reached = false
		r := httptest.NewRequest("POST", "/v1/replay/diff", strings.NewReader("{}"))
		r.AddCookie(sess2)
		if tok != "" {
			r.Header.Set(CSRFHeader, tok)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		if reached != want {
			t.Errorf("replay diff with CSRF %q reached the handler: %v, want %v", tok, reached, want)
		}
	}
}

// TestCookieAttributes: the session cookie is HttpOnly, SameSite=Strict,
// Path=/, expires with the session, and is Secure over TLS; the pages never
// carry the credential.
func TestCookieAttributes(t *testing.T) {
	w := newWorld(t, SessionOptions{Absolute: 2 * time.Hour})
	for _, overTLS := range []bool{false, true} {
		page := w.do(req{path: "/signin", tls: overTLS})
		login := cookieNamed(page.Result().Cookies(), loginCookie)
		form := url.Values{"credential": {"ops-token"}, csrfField: {login.Value}}
		resp := w.do(req{method: "POST", path: "/signin", body: form.Encode(), ctype: "application/x-www-form-urlencoded", cookies: []*http.Cookie{login}, tls: overTLS})
		raw := resp.Header().Values("Set-Cookie")
		var line string
		for _, l := range raw {
			if strings.HasPrefix(l, SessionCookie+"=") {
				line = l
			}
		}
		for _, want := range []string{"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=7200"} {
			if !strings.Contains(line, want) {
				t.Errorf("tls=%v session cookie %q lacks %s", overTLS, line, want)
			}
		}
		if strings.Contains(line, "Secure") != overTLS {
			t.Errorf("tls=%v session cookie %q: Secure must be set exactly over TLS", overTLS, line)
		}
		if strings.Contains(line, "ops-token") || strings.Contains(resp.Header().Get("Location"), "ops-token") {
			t.Error("the credential leaked into the cookie or the redirect")
		}
		sess := cookieNamed(resp.Result().Cookies(), SessionCookie)
		for _, p := range pages {
			if body := w.do(req{path: p, cookies: []*http.Cookie{sess}}).Body.String(); strings.Contains(body, "ops-token") || strings.Contains(body, sess.Value) {
				t.Errorf("page %s carries the credential or the session id", p)
			}
		}
	}
	// A refused sign-in: wrong credential, missing or wrong form token,
	// approver-only credential.
	page := w.do(req{path: "/signin"})
	login := cookieNamed(page.Result().Cookies(), loginCookie)
	cases := map[string]struct {
		form    url.Values
		cookies []*http.Cookie
		code    int
	}{
		"wrong credential":  {url.Values{"credential": {"nope"}, csrfField: {login.Value}}, []*http.Cookie{login}, 401},
		"no login cookie":   {url.Values{"credential": {"ops-token"}, csrfField: {login.Value}}, nil, 403},
		"wrong login token": {url.Values{"credential": {"ops-token"}, csrfField: {"x" + login.Value}}, []*http.Cookie{login}, 403},
		"approver only":     {url.Values{"credential": {"lone-approver"}, csrfField: {login.Value}}, []*http.Cookie{login}, 401},
	}
	for name, c := range cases {
		resp := w.do(req{method: "POST", path: "/signin", body: c.form.Encode(), ctype: "application/x-www-form-urlencoded", cookies: c.cookies})
		if resp.Code != c.code || cookieNamed(resp.Result().Cookies(), SessionCookie) != nil {
			t.Errorf("%s: %d (session cookie %v), want %d and none", name, resp.Code, cookieNamed(resp.Result().Cookies(), SessionCookie) != nil, c.code)
		}
	}
}

// TestSessionExpiry: a session ends after its idle time and after its
// absolute lifetime however busy; the store holds at most Max sessions.
func TestSessionExpiry(t *testing.T) {
	w := newWorld(t, SessionOptions{Idle: 10 * time.Minute, Absolute: time.Hour, Max: 3})
	alive := func(c *http.Cookie) bool {
		return w.do(req{path: "/v1/overview", cookies: []*http.Cookie{c}}).Code == http.StatusOK
	}

	idle, _ := w.signIn(t, "ops-token", false)
	w.clock.Add(9 * time.Minute)
	if !alive(idle) {
		t.Fatal("session ended before its idle time")
	}
	w.clock.Add(10*time.Minute + time.Second)
	if alive(idle) {
		t.Fatal("idle session still accepted")
	}

	busy, _ := w.signIn(t, "ops-token", false)
	for range 6 {
		w.clock.Add(9 * time.Minute)
		if !alive(busy) {
			t.Fatal("busy session ended before its absolute lifetime")
		}
	}
	w.clock.Add(7 * time.Minute) // 61 minutes after sign-in
	if alive(busy) {
		t.Fatal("session outlived its absolute lifetime")
	}
	if page := w.do(req{path: "/", cookies: []*http.Cookie{busy}}); page.Code != http.StatusSeeOther {
		t.Fatalf("page with an expired session: %d, want a redirect to sign in", page.Code)
	}

	var cs []*http.Cookie
	for range 5 {
		c, _ := w.signIn(t, "ops-token", false)
		cs = append(cs, c)
		w.clock.Add(time.Second)
	}
	if n := w.sessions.Len(); n > 3 {
		t.Fatalf("%d sessions held, want at most 3", n)
	}
	if alive(cs[0]) || !alive(cs[4]) {
		t.Fatal("the oldest session must make room for the newest")
	}
}

// TestOverviewFigures pins each figure's formula on a small log: the
// seed's worked example (approval on step 3, decided after 30 s), a run
// halted by its budget, an untraced run and an MCP protocol message that is
// not a step.
func TestOverviewFigures(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	at := func(s int) time.Time { return t0.Add(-time.Hour + time.Duration(s)*time.Second) }
	mcp, _ := json.Marshal(map[string]any{"ts": at(1), "run_id": "m", "agent_id": "a", "tool": "docs.search", "mcp_method": "initialize", "decision": "allow", "policy_version": "v1.0"})
	untraced, _ := json.Marshal(map[string]any{"ts": at(2), "run_id": "agent:b", "agent_id": "b", "tool": "db.read", "decision": "allow", "policy_version": "v1.0", "step_risk": map[string]float64{"step": 0.1}, "cumulative_risk": 0.1})
	w.write(t,
		record(at(0), "crm-agent", "worked", "db.read", "allow", 0.10, 0.10, 1),
		record(at(10), "crm-agent", "worked", "send_email", "allow", 0.96, 1.06, 1.2),
		record(at(40), "crm-agent", "worked", "db.write", "require_approval", 0.275, 1.335, 1, "approval_required"),
		record(at(50), "tiny", "budget", "db.read", "allow", 0.1, 0.1, 1),
		record(at(60), "tiny", "budget", "db.read", "deny", 0, 0.1, 1, "budget_exceeded"),
		record(at(70), "tiny", "faulty", "db.read", "deny", 0, 0, 1, "store_unavailable"),
		string(mcp), string(untraced),
		record(t0.Add(-48*time.Hour), "old", "old", "db.read", "allow", 0.1, 0.1, 1), // outside the window
	)
	ctx := context.Background()
	if err := w.store.CreateApproval(ctx, riskstore.Approval{ID: "apr_w", RunID: "worked", AgentID: "crm-agent", Tool: "db.write", Status: riskstore.ApprovalPending, CreatedAt: at(40)}, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.DecideApproval(ctx, "apr_w", true, "alice", "ok", at(70)); err != nil {
		t.Fatal(err)
	}
	resp := w.do(req{path: "/v1/overview?window=24h", bearer: "ops-token"})
	var o Overview
	if err := json.Unmarshal(resp.Body.Bytes(), &o); err != nil || resp.Code != 200 {
		t.Fatalf("overview: %d %s", resp.Code, resp.Body)
	}
	checks := []struct {
		name      string
		got, want float64
	}{
		{"checks (MCP protocol and old records left out)", float64(o.Checks), 7},
		{"runs", float64(o.Runs), 4},
		{"allow", float64(o.Decisions["allow"]), 4},
		{"deny", float64(o.Decisions["deny"]), 2},
		{"require_approval", float64(o.Decisions["require_approval"]), 1},
		{"avg cumulative risk (1.335+0.1+0+0.1)/4", o.AvgCumulativeRisk, round((1.335+0.1+0+0.1)/4, 4)},
		{"budget violations", float64(o.BudgetViolations), 1},
		{"budget violation rate 1/7", o.BudgetViolationRate, round(1.0/7, 4)},
		{"policy denials (budget, not the fault)", float64(o.PolicyDenials), 1},
		{"policy enforced 6/7", o.PolicyEnforcedPct, round(600.0/7, 2)},
		{"runs fully traced 3/4", o.RunsFullyTracedPct, 75},
		{"escalated runs", float64(o.EscalatedRuns), 1},
		{"risky runs (worked: E>1 at step 2; budget; faulty)", float64(o.Containment.RiskyRuns), 3},
		{"contained", float64(o.Containment.Contained), 3},
		{"MTTC: worked 30 s (escalated step 2 → held step 3), budget and faulty 0 s (their first risky step is the deny)", o.Containment.MeanSeconds, 10},
		{"approvals decided", float64(o.Approvals.Decided), 1},
		{"time to decision", o.Approvals.MeanSecondsToDecision, 30},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(o.Tools) == 0 || o.Tools[0].Tool != "db.read" || o.Tools[0].Calls != 5 {
		t.Errorf("tools = %+v, want db.read first with 5 calls", o.Tools)
	}
	sum := 0
	for _, b := range o.Series.Buckets {
		sum += b.Decisions["allow"] + b.Decisions["deny"] + b.Decisions["require_approval"]
	}
	if sum != o.Checks || len(o.Series.Buckets) != 24 {
		t.Errorf("series holds %d decisions in %d buckets, want %d in 24", sum, len(o.Series.Buckets), o.Checks)
	}
	for _, bad := range []string{"window=0s", "window=400d", "window=abc", "window=" + strings.Repeat("9", 40)} {
		if resp := w.do(req{path: "/v1/overview?" + bad, bearer: "ops-token"}); resp.Code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, resp.Code)
		}
	}
	// The tool search finds the runs that called a tool.
	resp = w.do(req{path: "/v1/overview/runs?tool=send_email", bearer: "ops-token"})
	var runs struct{ Runs []RunSummary }
	_ = json.Unmarshal(resp.Body.Bytes(), &runs)
	if len(runs.Runs) != 1 || runs.Runs[0].RunID != "worked" || runs.Runs[0].Steps != 3 || runs.Runs[0].LastDecision != "require_approval" {
		t.Errorf("runs by tool send_email = %+v, want the worked example's run", runs.Runs)
	}
}

// TestIndexTailsAndRotates: appended lines are read once, a partial last
// line waits for its end, and a replaced file is read from its start.
func TestIndexTailsAndRotates(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	line := record(t0.Add(-time.Minute), "a", "r1", "db.read", "allow", 0.1, 0.1, 1)
	w.write(t, line)
	f, _ := os.OpenFile(w.audit, os.O_APPEND|os.O_WRONLY, 0)
	_, _ = io.WriteString(f, line[:20])
	f.Close()
	count := func() int {
		if err := w.index.Refresh(); err != nil {
			t.Fatal(err)
		}
		return w.index.Overview(time.Hour, "", t0, nil).Checks
	}
	if n := count(); n != 1 {
		t.Fatalf("after one line and a partial one: %d Checks, want 1", n)
	}
	f, _ = os.OpenFile(w.audit, os.O_APPEND|os.O_WRONLY, 0)
	_, _ = io.WriteString(f, line[20:]+"\n")
	f.Close()
	if n := count(); n != 2 {
		t.Fatalf("after the partial line ended: %d Checks, want 2", n)
	}
	if n := count(); n != 2 {
		t.Fatalf("a second refresh read lines again: %d", n)
	}
	if err := os.Rename(w.audit, w.audit+".1"); err != nil {
		t.Fatal(err)
	}
	w.write(t, line)
	if n := count(); n != 3 {
		t.Fatalf("after rotation: %d Checks, want 3", n)
	}
}

// TestDeclarationSigned: the declaration verifies under the public key,
// fails when one byte of it changes, and (where openssl is installed)
// verifies with the README's openssl command.
func TestDeclarationSigned(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	w.write(t, record(t0.Add(-time.Minute), "crm-agent", "r1", "db.read", "allow", 0.1, 0.1, 1))
	resp := w.do(req{path: "/v1/declaration", bearer: "ops-token"})
	var s SignedDeclaration
	if err := json.Unmarshal(resp.Body.Bytes(), &s); err != nil {
		t.Fatalf("%d %s", resp.Code, resp.Body)
	}
	pub := w.key.priv.Public().(ed25519.PublicKey)
	d, err := VerifyDeclaration(s, pub)
	if err != nil {
		t.Fatal(err)
	}
	if d.MaturityLevel != 3 || d.CoveragePct != 100 || d.LastEvaluation.IsZero() || len(d.Controls) != 8 {
		t.Errorf("declaration = level %d coverage %v evaluated %v controls %d, want level 3, 100%%, a date, 8 controls", d.MaturityLevel, d.CoveragePct, d.LastEvaluation, len(d.Controls))
	}
	if len(d.KnownGaps) == 0 {
		t.Error("level 4's unmet criteria must be listed as known gaps")
	}
	tampered := s
	payload := []byte(s.Payload)
	payload[10] ^= 1
	tampered.Payload = string(payload)
	if _, err := VerifyDeclaration(tampered, pub); err == nil {
		t.Error("a changed declaration verified")
	}
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := VerifyDeclaration(s, other); err == nil {
		t.Error("the declaration verified under another key")
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Log("openssl not installed: the command-line verification is not exercised")
		return
	}
	dir := t.TempDir()
	raw, _ := decodeB64(s.Payload)
	sig, _ := decodeB64(s.Signature)
	for name, data := range map[string][]byte{"payload.json": raw, "payload.sig": sig, "key.pub.pem": w.key.PublicPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "key.pub.pem", "-rawin", "-in", "payload.json", "-sigfile", "payload.sig")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Signature Verified Successfully") {
		t.Errorf("openssl verify: %v %s", err, out)
	}
}

// TestMaturityLevelFollowsEvidence: a failed threat class drops the level
// to the highest whose criteria all hold, and the control's gap is named.
func TestMaturityLevelFollowsEvidence(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	w.write(t, record(t0.Add(-time.Minute), "crm-agent", "r1", "db.read", "allow", 0.1, 0.1, 1))
	if m := w.dash.evaluate(context.Background(), 30*24*time.Hour); m.Level != 3 || m.CoveragePct != 100 {
		t.Fatalf("level %d coverage %v, want 3 and 100", m.Level, m.CoveragePct)
	}
	w.dash.cfg.Evidence.ThreatSuite = func(context.Context) (SuiteFacts, error) {
		return SuiteFacts{Passed: 12, Failed: 3, ClassesStopped: 3, Classes: 6}, nil
	}
	w.clock.Add(2 * time.Minute) // past the evaluation cache
	m := w.dash.evaluate(context.Background(), 30*24*time.Hour)
	if m.Level != 2 {
		t.Errorf("with 3 of 6 threat classes stopped: level %d, want 2", m.Level)
	}
	found := false
	for _, c := range m.Controls {
		if c.ID == "AIS-GOV-01" {
			found = !c.Met
		}
	}
	if !found || m.CoveragePct != 87.5 {
		t.Errorf("AIS-GOV-01 unmet %v, coverage %v, want unmet and 87.5", found, m.CoveragePct)
	}
}

// TestApprovalDetailForApproversOnly: an approval's detail (argument
// values) reaches approvers and not operators.
func TestApprovalDetailForApproversOnly(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	ap := riskstore.Approval{ID: "apr_d", RunID: "r", AgentID: "a", Tool: "send_email", Status: riskstore.ApprovalPending, CreatedAt: t0,
		Detail: map[string]any{"arguments": map[string]any{"to": "bob@example.com"}}}
	if err := w.store.CreateApproval(context.Background(), ap, time.Hour); err != nil {
		t.Fatal(err)
	}
	for who, want := range map[string]bool{"ops-token": false, "approver-token": true} {
		for _, p := range []string{"/v1/approvals", "/v1/approvals/apr_d"} {
			body := w.do(req{path: p, bearer: who}).Body.String()
			if strings.Contains(body, "bob@example.com") != want {
				t.Errorf("%s as %s: argument shown %v, want %v", p, who, !want, want)
			}
		}
	}
}

// TestHeldCallRecord: the approvals page's view of a held call comes from
// its audit record, findings without values.
func TestHeldCallRecord(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	b, _ := json.Marshal(map[string]any{"ts": t0, "decision_id": "d_held", "run_id": "r", "agent_id": "a", "tool": "send_email",
		"decision": "require_approval", "approval_id": "apr_h", "reasons": []map[string]string{{"code": "approval_required"}},
		"egress_findings": []map[string]any{{"detector": "email", "location": "body.to", "count": 1, "hash": "h"}},
		"step_risk":       map[string]float64{"r_step": 0.4, "e": 1.2, "t": 2, "b": 1, "step": 0.96}, "cumulative_risk": 1.06})
	w.write(t, string(b))
	resp := w.do(req{path: "/v1/overview/held/d_held", bearer: "ops-token"})
	var h HeldCall
	if err := json.Unmarshal(resp.Body.Bytes(), &h); err != nil || resp.Code != 200 {
		t.Fatalf("%d %s", resp.Code, resp.Body)
	}
	if len(h.Findings) != 1 || h.Findings[0].Location != "body.to" || h.StepRisk.E != 1.2 || h.Reasons[0] != "approval_required" {
		t.Errorf("held call = %+v", h)
	}
	if resp := w.do(req{path: "/v1/overview/held/nope", bearer: "ops-token"}); resp.Code != http.StatusNotFound {
		t.Errorf("unknown decision: %d", resp.Code)
	}
}

// TestVersionHistory: the first policy seen and every change of it, and a
// tool's route changing, are history; tools with different route versions
// side by side are not.
func TestVersionHistory(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	rec := func(s int, tool, pol, route string) string {
		b, _ := json.Marshal(map[string]any{"ts": t0.Add(time.Duration(s) * time.Second), "run_id": "r", "agent_id": "a", "tool": tool,
			"decision": "allow", "policy_version": pol, "route_version": route})
		return string(b)
	}
	w.write(t, rec(1, "db.read", "v1", "r-a"), rec(2, "send_email", "v1", "r-b"), rec(3, "db.read", "v1", "r-a"),
		rec(4, "db.read", "v2", "r-a2"), rec(5, "send_email", "v2", "r-b"))
	_ = w.index.Refresh()
	var got []string
	for _, v := range w.index.Versions() {
		got = append(got, v.Kind+" "+v.From+"→"+v.Version)
	}
	want := []string{"policy →v1", "policy v1→v2", "route db.read r-a→r-a2"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("history %q, want %q", got, want)
	}
}

// TestIndexReadsLongRecords: a record with a large sealed body (longer than
// the reader's buffer) is read whole, and the lines after it too.
func TestIndexReadsLongRecords(t *testing.T) {
	w := newWorld(t, SessionOptions{})
	b, _ := json.Marshal(map[string]any{"ts": t0.Add(-time.Minute), "run_id": "big", "agent_id": "a", "tool": "db.write", "decision": "allow",
		"sealed": map[string]string{"ct": strings.Repeat("A", 1<<20)}})
	w.write(t, string(b), record(t0.Add(-time.Minute), "a", "small", "db.read", "allow", 0.1, 0.1, 1))
	if err := w.index.Refresh(); err != nil {
		t.Fatal(err)
	}
	if o := w.index.Overview(time.Hour, "", t0, nil); o.Checks != 2 || o.Runs != 2 {
		t.Fatalf("read %d Checks of %d runs, want 2 and 2", o.Checks, o.Runs)
	}
}
