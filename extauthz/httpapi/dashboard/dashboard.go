// Package dashboard owns the governance dashboard served on the HTTP API's
// listener (AISecOps v1.0 section 19, DESIGN §7a): the browser pages and
// their assets (embedded, no CDN), browser sessions and their CSRF tokens,
// the overview figures and the maturity evaluation computed from the audit
// log, and the signed section 21.3 declaration.
//
// It reads; it decides nothing. Runs, timelines, graphs, approvals, replay
// diffs and evidence files are the API's own endpoints, which the pages call
// with the session (httpapi.Auth accepts a session cookie, and demands the
// session's CSRF token on every state change). Everything an agent chose
// (run ids, tool names, reasons, argument values) reaches the page as JSON
// and is put into the document as text, never as markup; pages carry no
// credential, and the session cookie is HttpOnly and SameSite=Strict.
package dashboard

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

//go:embed assets
var assets embed.FS

// ApprovalLister is the approval store as the dashboard reads it.
type ApprovalLister interface {
	ListApprovals(ctx context.Context, status string) ([]riskstore.Approval, error)
}

// Config wires the dashboard.
type Config struct {
	Auth      *httpapi.Auth // its Sessions must be Sessions
	Sessions  *Sessions
	Index     *Index
	Approvals ApprovalLister // nil: no approval figures
	Evidence  Evidence
	// DeclarationKey signs declarations (nil: none are issued).
	DeclarationKey *DeclarationKey
	// Versions are the active policy bundle and routes versions.
	Versions func() (policy, routes string)
	// PolicyFiles are the active policy bundle's source files (name →
	// content; nil: not offered), which the replay form edits into a candidate.
	PolicyFiles func() (map[string]string, error)
	// Thresholds are an agent's approval and halt thresholds.
	Thresholds func(agent string) (approval, halt float64, ok bool)
	Logger     *slog.Logger
	Clock      func() time.Time
}

// Dashboard serves the pages and the dashboard's data endpoints.
type Dashboard struct {
	cfg   Config
	pages *template.Template
	api   http.Handler // the whole API, for exports that call its endpoints

	mu     sync.Mutex
	cached *Maturity
	key    string
}

// New checks cfg and parses the page templates.
func New(cfg Config) (*Dashboard, error) {
	if cfg.Auth == nil || cfg.Sessions == nil || cfg.Index == nil {
		return nil, errors.New("dashboard: Auth, Sessions and Index are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Versions == nil {
		cfg.Versions = func() (string, string) { return "", "" }
	}
	t, err := template.ParseFS(assets, "assets/*.html")
	if err != nil {
		return nil, err
	}
	return &Dashboard{cfg: cfg, pages: t}, nil
}

// SetAPI gives the dashboard the assembled API handler (its exports call
// the API's own endpoints through it, with the caller's session).
func (d *Dashboard) SetAPI(h http.Handler) { d.api = h }

// Routes are the dashboard's routes on the API's mux. Pages authenticate
// their callers themselves (anonymous → the sign-in page); data endpoints
// need the operator role.
func (d *Dashboard) Routes() []httpapi.Route {
	op := httpapi.RoleOperator
	sub, _ := fs.Sub(assets, "assets")
	static := http.StripPrefix("/ui/assets/", http.FileServerFS(sub))
	return []httpapi.Route{
		{Pattern: "GET /{$}", SelfAuth: true, Handler: d.page("overview")},
		{Pattern: "GET /runs", SelfAuth: true, Handler: d.page("runs")},
		{Pattern: "GET /run", SelfAuth: true, Handler: d.page("run")},
		{Pattern: "GET /approvals", SelfAuth: true, Handler: d.page("approvals")},
		{Pattern: "GET /policy", SelfAuth: true, Handler: d.page("policy")},
		{Pattern: "GET /evidence", SelfAuth: true, Handler: d.page("evidence")},
		{Pattern: "GET /signin", SelfAuth: true, Handler: http.HandlerFunc(d.signinPage)},
		{Pattern: "POST /signin", SelfAuth: true, Handler: http.HandlerFunc(d.signin)},
		{Pattern: "POST /signout", SelfAuth: true, Handler: http.HandlerFunc(d.signout)},
		{Pattern: "GET /ui/assets/", SelfAuth: true, Handler: assetHeaders(static)},

		{Pattern: "GET /v1/overview", Role: op, Handler: http.HandlerFunc(d.overview)},
		{Pattern: "GET /v1/overview/runs", Role: op, Handler: http.HandlerFunc(d.runs)},
		{Pattern: "GET /v1/overview/agents/{id}", Role: op, Handler: http.HandlerFunc(d.agent)},
		{Pattern: "GET /v1/overview/held/{decision}", Role: op, Handler: http.HandlerFunc(d.held)},
		{Pattern: "GET /v1/policy/status", Role: op, Handler: http.HandlerFunc(d.policyStatus)},
		{Pattern: "GET /v1/policy/files", Role: op, Handler: http.HandlerFunc(d.policyFiles)},
		{Pattern: "GET /v1/maturity", Role: op, Handler: http.HandlerFunc(d.maturity)},
		{Pattern: "GET /v1/declaration", Role: op, Handler: d.declaration(false)},
		{Pattern: "GET /v1/declaration/key", Role: op, Handler: http.HandlerFunc(d.declarationKey)},
		{Pattern: "POST /ui/export/declaration", Role: op, Handler: d.declaration(true)},
		{Pattern: "POST /ui/export/evidence", Role: op, Handler: http.HandlerFunc(d.exportEvidence)},
	}
}

// ContentSecurityPolicy allows the dashboard's own scripts, styles and
// requests only: no inline script, no framing, no other origin.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Secure sets the browser security headers on every answer of h (the whole
// API: pages, data and errors alike).
func Secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", ContentSecurityPolicy)
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/ui/assets/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

func assetHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

// view is what a page template sees. Nothing in it is a credential: the
// CSRF token only proves a request came from a page of the session.
type view struct {
	Page     string
	Title    string
	User     string
	Roles    string
	Approver bool
	CSRF     string
	Error    string
}

var titles = map[string]string{"overview": "Overview", "runs": "Runs", "run": "Run", "approvals": "Approvals", "policy": "Policy", "evidence": "Evidence and maturity"}

// page serves a page to a caller with the operator role; anyone else is
// sent to sign in (never shown data).
func (d *Dashboard) page(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := d.cfg.Auth.Identify(r)
		if err != nil {
			http.Redirect(w, r, "/signin", http.StatusSeeOther)
			return
		}
		if !c.Has(httpapi.RoleOperator) {
			httpapi.WriteError(w, http.StatusForbidden, "forbidden", "the dashboard needs the operator role")
			return
		}
		v := view{Page: name, Title: titles[name], User: c.Name, Roles: strings.Join(c.Roles, ", "), Approver: c.Has(httpapi.RoleApprover),
			CSRF: d.cfg.Sessions.csrfOf(r, d.cfg.Clock())}
		d.render(w, http.StatusOK, "page.html", v)
	})
}

func (d *Dashboard) render(w http.ResponseWriter, status int, name string, v view) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := d.pages.ExecuteTemplate(w, name, v); err != nil {
		d.cfg.Logger.Error("dashboard page", "page", v.Page, "err", err)
	}
}

// signinPage is the sign-in form. Its CSRF token is a double submit: the
// same random value in a cookie and in the form.
func (d *Dashboard) signinPage(w http.ResponseWriter, r *http.Request) {
	tok := randomToken()
	http.SetCookie(w, cookie(r, loginCookie, tok, 10*time.Minute))
	d.render(w, http.StatusOK, "signin.html", view{Page: "signin", Title: "Sign in", CSRF: tok})
}

// signin takes an API credential (operator or admin), and answers with a
// session cookie. The credential is read from the form body only, never a
// URL, and is not kept: the session holds the caller's name and roles.
func (d *Dashboard) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "bad_request", "sign-in form too large or malformed")
		return
	}
	ck, err := r.Cookie(loginCookie)
	if err != nil || !sameToken(ck.Value, r.PostForm.Get(csrfField)) {
		d.render(w, http.StatusForbidden, "signin.html", view{Page: "signin", Title: "Sign in", CSRF: d.freshLogin(w, r),
			Error: "The sign-in form expired. Please try again."})
		return
	}
	c, ok := d.cfg.Auth.Authenticate(r.Context(), strings.TrimSpace(r.PostForm.Get("credential")))
	if !ok || !c.Has(httpapi.RoleOperator) {
		d.cfg.Logger.Warn("dashboard sign-in refused", "known", ok)
		msg := "That credential was not accepted."
		if ok {
			msg = "That credential does not carry the operator role the dashboard needs."
		}
		d.render(w, http.StatusUnauthorized, "signin.html", view{Page: "signin", Title: "Sign in", CSRF: d.freshLogin(w, r), Error: msg})
		return
	}
	id, _ := d.cfg.Sessions.Create(c, d.cfg.Clock())
	http.SetCookie(w, cookie(r, SessionCookie, id, d.cfg.Sessions.opts.Absolute))
	http.SetCookie(w, cookie(r, loginCookie, "", -1))
	d.cfg.Logger.Info("dashboard sign-in", "who", c.Name)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (d *Dashboard) freshLogin(w http.ResponseWriter, r *http.Request) string {
	tok := randomToken()
	http.SetCookie(w, cookie(r, loginCookie, tok, 10*time.Minute))
	return tok
}

// signout ends the session; it is a state change, so it needs the CSRF token.
func (d *Dashboard) signout(w http.ResponseWriter, r *http.Request) {
	_, csrfOK, ok := d.cfg.Sessions.SessionCaller(r, d.cfg.Clock())
	if !ok {
		http.Redirect(w, r, "/signin", http.StatusSeeOther)
		return
	}
	if !csrfOK {
		httpapi.WriteError(w, http.StatusForbidden, "csrf", "sign-out needs the session's CSRF token")
		return
	}
	if ck, err := r.Cookie(SessionCookie); err == nil {
		d.cfg.Sessions.End(ck.Value)
	}
	http.SetCookie(w, cookie(r, SessionCookie, "", -1))
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

func (d *Dashboard) approvals(ctx context.Context) []riskstore.Approval {
	if d.cfg.Approvals == nil {
		return nil
	}
	list, err := d.cfg.Approvals.ListApprovals(ctx, "")
	if err != nil {
		d.cfg.Logger.Warn("dashboard: approvals unavailable", "err", err)
	}
	return list
}

// overview: GET /v1/overview?window=24h.
func (d *Dashboard) overview(w http.ResponseWriter, r *http.Request) {
	label := r.URL.Query().Get("window")
	win, err := parseWindow(label)
	if err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "bad_request", "window must be a duration between 1m and 31d (15m, 24h, 7d)")
		return
	}
	if label == "" {
		label = "24h"
	}
	if err := d.cfg.Index.Refresh(); err != nil {
		d.cfg.Logger.Warn("dashboard: audit log unreadable", "err", err)
	}
	httpapi.WriteJSON(w, http.StatusOK, d.cfg.Index.Overview(win, label, d.cfg.Clock(), d.approvals(r.Context())))
}

// runs: GET /v1/overview/runs?tool=&agent=&decision=&since=&limit=, the
// runs search by tool (/v1/runs has no tool filter).
func (d *Dashboard) runs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := RunFilter{Agent: q.Get("agent"), Tool: q.Get("tool"), Decision: q.Get("decision")}
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			httpapi.WriteError(w, http.StatusBadRequest, "bad_request", "since must be an RFC 3339 time")
			return
		}
		f.Since = t
	}
	if s := q.Get("limit"); s != "" {
		n, err := parseLimit(s)
		if err != nil {
			httpapi.WriteError(w, http.StatusBadRequest, "bad_request", "limit must be 1–500")
			return
		}
		f.Limit = n
	}
	if len(f.Agent) > 256 || len(f.Tool) > 256 || len(f.Decision) > 32 {
		httpapi.WriteError(w, http.StatusBadRequest, "bad_request", "filter too long")
		return
	}
	_ = d.cfg.Index.Refresh()
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"runs": d.cfg.Index.Runs(f), "next_cursor": ""})
}

func parseLimit(s string) (int, error) {
	n := 0
	if len(s) > 3 {
		return 0, errors.New("limit")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, errors.New("limit")
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > maxRunsListed {
		return 0, errors.New("limit")
	}
	return n, nil
}

// agent: GET /v1/overview/agents/{id}: the thresholds the run page draws.
func (d *Dashboard) agent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if d.cfg.Thresholds == nil {
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "no such agent")
		return
	}
	ap, halt, ok := d.cfg.Thresholds(id)
	if !ok {
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "no such agent")
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"agent_id": id, "thresholds": map[string]float64{"approval": ap, "halt": halt}})
}

// held: GET /v1/overview/held/{decision}: the audit record of a call held
// for approval (findings, risk factors, provenance), for the approvals page.
func (d *Dashboard) held(w http.ResponseWriter, r *http.Request) {
	_ = d.cfg.Index.Refresh()
	h, ok := d.cfg.Index.Held(r.PathValue("decision"))
	if !ok {
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "no held call with that decision id in the audit log")
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, h)
}

// policyStatus: GET /v1/policy/status: the active versions and their history.
func (d *Dashboard) policyStatus(w http.ResponseWriter, _ *http.Request) {
	_ = d.cfg.Index.Refresh()
	pol, routes := d.cfg.Versions()
	hist := d.cfg.Index.Versions()
	// newest first
	for i, j := 0, len(hist)-1; i < j; i, j = i+1, j-1 {
		hist[i], hist[j] = hist[j], hist[i]
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"policy_version": pol, "routes_version": routes, "history": hist})
}

// policyFiles: GET /v1/policy/files: the active bundle's files, the
// starting point of a candidate for the replay diff.
func (d *Dashboard) policyFiles(w http.ResponseWriter, _ *http.Request) {
	if d.cfg.PolicyFiles == nil {
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "policy files not offered")
		return
	}
	files, err := d.cfg.PolicyFiles()
	if err != nil {
		d.cfg.Logger.Warn("dashboard: policy files unreadable", "err", err)
		httpapi.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the policy files could not be read")
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"files": files})
}

// ReadPolicyFiles reads a bundle's top-level *.rego files (tests left out)
// and data.json from fsys: at most 64 files and 768 KiB, so a candidate made
// from them fits a replay request.
func ReadPolicyFiles(fsys fs.FS) (map[string]string, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	out, total := map[string]string{}, 0
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || strings.HasSuffix(n, "_test.rego") || !(strings.HasSuffix(n, ".rego") || n == "data.json") {
			continue
		}
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, err
		}
		total += len(b)
		if len(out) >= 64 || total > 768<<10 {
			return nil, errors.New("policy bundle too large to offer for editing")
		}
		out[n] = string(b)
	}
	return out, nil
}

// evaluate is the maturity evaluation of the window ending now, cached for
// a minute (it verifies the whole audit chain and runs the threat suite).
func (d *Dashboard) evaluate(ctx context.Context, win time.Duration) Maturity {
	now := d.cfg.Clock()
	_ = d.cfg.Index.Refresh()
	key := win.String()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cached != nil && d.key == key && now.Sub(d.cached.EvaluatedAt) < time.Minute && !now.Before(d.cached.EvaluatedAt) {
		return *d.cached
	}
	decided := 0
	for _, a := range d.approvals(ctx) {
		if !a.DecidedAt.IsZero() && a.DecidedAt.After(now.Add(-win)) {
			decided++
		}
	}
	ev := d.cfg.Evidence
	ev.Declarations = d.cfg.DeclarationKey != nil
	m := d.cfg.Index.Evaluate(ctx, ev, now.Add(-win), now, decided)
	d.cached, d.key = &m, key
	return m
}

func (d *Dashboard) window(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	label := r.URL.Query().Get("window")
	if label == "" {
		label = "30d"
	}
	win, err := parseWindow(label)
	if err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "bad_request", "window must be a duration between 1m and 31d")
		return 0, false
	}
	return win, true
}

// maturity: GET /v1/maturity?window=30d.
func (d *Dashboard) maturity(w http.ResponseWriter, r *http.Request) {
	win, ok := d.window(w, r)
	if !ok {
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, d.evaluate(r.Context(), win))
}

// declaration: the signed section 21.3 declaration; as a download for the
// dashboard's form (a POST, so it carries the CSRF token).
func (d *Dashboard) declaration(download bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if d.cfg.DeclarationKey == nil {
			httpapi.WriteError(w, http.StatusNotFound, "not_found", "no declaration signing key configured")
			return
		}
		win, ok := d.window(w, r)
		if !ok {
			return
		}
		m := d.evaluate(r.Context(), win)
		pol, routes := d.cfg.Versions()
		signed, err := d.cfg.DeclarationKey.Sign(declare(m, pol, routes))
		if err != nil {
			httpapi.WriteError(w, http.StatusInternalServerError, "internal", "declaration could not be signed")
			return
		}
		if download {
			w.Header().Set("Content-Disposition", `attachment; filename="aisecops-declaration-`+m.EvaluatedAt.Format("20060102T150405Z")+`.json"`)
		}
		httpapi.WriteJSON(w, http.StatusOK, signed)
	}
}

// declarationKey: GET /v1/declaration/key, the public key as PEM.
func (d *Dashboard) declarationKey(w http.ResponseWriter, _ *http.Request) {
	if d.cfg.DeclarationKey == nil {
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "no declaration signing key configured")
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(d.cfg.DeclarationKey.PublicPEM())
}

// exportEvidence: POST /ui/export/evidence (form: from, to, csrf_token)
// answers GET /v1/evidence?from=&to= as a download, through the API with
// the caller's own session, so the evidence endpoint's checks all apply.
func (d *Dashboard) exportEvidence(w http.ResponseWriter, r *http.Request) {
	if d.api == nil {
		httpapi.WriteError(w, http.StatusNotFound, "not_found", "evidence export unavailable")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	q := url.Values{}
	for _, k := range []string{"from", "to"} {
		v := r.PostFormValue(k)
		if len(v) > 64 {
			httpapi.WriteError(w, http.StatusBadRequest, "bad_request", k+" too long")
			return
		}
		if v != "" {
			q.Set(k, v)
		}
	}
	sub := r.Clone(r.Context())
	sub.Method, sub.Body, sub.ContentLength = http.MethodGet, http.NoBody, 0
	sub.URL = &url.URL{Path: "/v1/evidence", RawQuery: q.Encode()}
	sub.RequestURI = sub.URL.RequestURI()
	sub.Header.Del("Content-Type")
	name := "aisecops-evidence-" + d.cfg.Clock().UTC().Format("20060102T150405Z") + ".json"
	d.api.ServeHTTP(&attachment{ResponseWriter: w, name: name}, sub)
}

// attachment marks a successful answer as a download.
type attachment struct {
	http.ResponseWriter
	name  string
	wrote bool
}

func (a *attachment) WriteHeader(code int) {
	if !a.wrote && code == http.StatusOK {
		a.Header().Set("Content-Disposition", `attachment; filename="`+a.name+`"`)
	}
	a.wrote = true
	a.ResponseWriter.WriteHeader(code)
}

func (a *attachment) Write(b []byte) (int, error) {
	if !a.wrote {
		a.WriteHeader(http.StatusOK)
	}
	return a.ResponseWriter.Write(b)
}
