package revocation

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

var t0 = time.Date(2026, 3, 2, 16, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock    { c := &clock{}; c.set(t); return c }
func (c *clock) set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }

func claims(jti, agent string, iat time.Time) *capability.Claims {
	return &capability.Claims{ID: jti, AgentID: agent, Subject: agent, IssuedAt: iat, ExpiresAt: iat.Add(5 * time.Minute)}
}

func wantRevoked(t *testing.T, s *Set, c *capability.Claims, revoked bool) {
	t.Helper()
	err := s.Check(c)
	switch {
	case revoked && reason.CodeOf(err) != reason.TokenRevoked:
		t.Errorf("Check(%s, %s, iat %s) = %v, want token_revoked", c.ID, c.AgentID, c.IssuedAt.Format(time.TimeOnly), err)
	case !revoked && err != nil:
		t.Errorf("Check(%s, %s, iat %s) = %v, want nil", c.ID, c.AgentID, c.IssuedAt.Format(time.TimeOnly), err)
	}
}

func newSet(t *testing.T, clk *clock, path string) *Set {
	t.Helper()
	s, err := New(Options{Path: path, Clock: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRevokeJTI(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	s := newSet(t, clk, "")
	wantRevoked(t, s, claims("j1", "a", t0), false)
	if _, err := s.RevokeJTI("j1", time.Time{}); err != nil {
		t.Fatal(err)
	}
	wantRevoked(t, s, claims("j1", "a", t0), true)
	wantRevoked(t, s, claims("j2", "a", t0), false)
	wantRevoked(t, s, claims("", "a", t0), false) // no jti: only agent revocation can match

	// An expiry given too early does not shorten the entry below the longest
	// token lifetime: the token must not come back to life.
	if _, err := s.RevokeJTI("j3", t0.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	clk.add(10 * time.Minute)
	if _, err := s.RevokeJTI("j4", time.Time{}); err != nil { // triggers pruning
		t.Fatal(err)
	}
	wantRevoked(t, s, claims("j3", "a", t0), true)
	// Once every token it could match has expired, the entry goes.
	clk.add(capability.DefaultMaxLifetime)
	if _, err := s.RevokeJTI("j5", time.Time{}); err != nil {
		t.Fatal(err)
	}
	wantRevoked(t, s, claims("j1", "a", t0), false)
	wantRevoked(t, s, claims("j5", "a", t0), true)
}

func TestRevokeAgent(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	s := newSet(t, clk, "")
	if _, err := s.RevokeAgent("agent-a", time.Time{}); err != nil { // before = now = t0
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		c       *capability.Claims
		revoked bool
	}{
		{"issued before", claims("j", "agent-a", t0.Add(-time.Second)), true},
		{"issued at the cut-off", claims("j", "agent-a", t0), false},
		{"issued after", claims("j", "agent-a", t0.Add(time.Second)), false},
		{"other agent", claims("j", "agent-b", t0.Add(-time.Second)), false},
		{"subject differs from agent_id", &capability.Claims{ID: "j", AgentID: "x", Subject: "agent-a", IssuedAt: t0.Add(-time.Minute)}, true},
		{"no iat", &capability.Claims{ID: "j", AgentID: "agent-a", Subject: "agent-a"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantRevoked(t, s, tc.c, tc.revoked) })
	}
	// A later cut-off widens the revocation; an earlier one does not narrow it.
	if _, err := s.RevokeAgent("agent-a", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeAgent("agent-a", t0.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantRevoked(t, s, claims("j", "agent-a", t0.Add(30*time.Second)), true)

	if _, err := s.RevokeAgent("", time.Time{}); err == nil {
		t.Error("empty agent accepted")
	}
	if _, err := s.RevokeAgent("x", t0.Add(48*time.Hour)); err == nil {
		t.Error("cut-off two days ahead accepted")
	}
	if err := s.Check(nil); reason.CodeOf(err) != reason.TokenClaims {
		t.Errorf("Check(nil) = %v", err)
	}
}

func TestMaxEntries(t *testing.T) {
	t.Parallel()
	s, err := New(Options{MaxEntries: 2, Clock: newClock(t0).now})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range []string{"a", "b"} {
		if _, err := s.RevokeJTI(j, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RevokeJTI("a", time.Time{}); err != nil {
		t.Errorf("re-revoking an existing jti: %v", err)
	}
	if _, err := s.RevokeAgent("c", time.Time{}); err != ErrFull {
		t.Errorf("third entry: %v, want ErrFull", err)
	}
}

func writeList(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "revocations.json")
	writeList(t, path, `{"jtis":[{"jti":"file-jti"}],"agents":[{"agent_id":"file-agent","revoked_before":"2026-03-02T16:00:00Z"}]}`)
	clk := newClock(t0)
	s := newSet(t, clk, path)
	wantRevoked(t, s, claims("file-jti", "x", t0), true)
	wantRevoked(t, s, claims("j", "file-agent", t0.Add(-time.Second)), true)
	wantRevoked(t, s, claims("j", "file-agent", t0), false)

	// Unchanged: nothing happens.
	if err := s.ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	// Changed: the new file replaces the old file entries, API entries stay.
	if _, err := s.RevokeJTI("api-jti", time.Time{}); err != nil {
		t.Fatal(err)
	}
	writeList(t, path, `{"jtis":[{"jti":"file-jti-2","expires_at":"2026-03-02T17:00:00Z"}],"agents":[]}`)
	if err := s.ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	wantRevoked(t, s, claims("file-jti", "x", t0), false)
	wantRevoked(t, s, claims("file-jti-2", "x", t0), true)
	wantRevoked(t, s, claims("api-jti", "x", t0), true)
	wantRevoked(t, s, claims("j", "file-agent", t0.Add(-time.Second)), false)

	// A bad file keeps the last good one, and is reported once.
	bad := map[string]string{
		"not JSON":          `{"jtis": [`,
		"unknown field":     `{"jtis":[{"jti":"x","why":"y"}],"agents":[]}`,
		"empty jti":         `{"jtis":[{"jti":""}],"agents":[]}`,
		"no cut-off":        `{"jtis":[],"agents":[{"agent_id":"a"}]}`,
		"source in file":    `{"jtis":[{"jti":"x","source":"api"}],"agents":[]}`,
		"trailing data":     `{"jtis":[],"agents":[]} {}`,
		"overlong agent id": `{"jtis":[],"agents":[{"agent_id":"` + strings.Repeat("a", 300) + `","revoked_before":"2026-03-02T16:00:00Z"}]}`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			writeList(t, path, body)
			if err := s.ReloadIfChanged(); err == nil {
				t.Fatal("bad file accepted")
			}
			if err := s.ReloadIfChanged(); err != nil {
				t.Errorf("the same bad file reported twice: %v", err)
			}
			wantRevoked(t, s, claims("file-jti-2", "x", t0), true)
		})
	}
	// The file disappears: the last good entries stay.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadIfChanged(); err == nil {
		t.Error("missing file not reported")
	}
	wantRevoked(t, s, claims("file-jti-2", "x", t0), true)

	if _, err := New(Options{Path: path}); err == nil {
		t.Error("New with a missing file succeeded")
	}
}

func TestList(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "revocations.json")
	writeList(t, path, `{"jtis":[{"jti":"f2"},{"jti":"f1","expires_at":"2026-03-02T17:00:00Z"}],"agents":[{"agent_id":"fa","revoked_before":"2026-03-02T15:00:00Z"}]}`)
	s := newSet(t, newClock(t0), path)
	if _, err := s.RevokeJTI("a1", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeAgent("aa", t0); err != nil {
		t.Fatal(err)
	}
	want := List{
		JTIs: []JTI{
			{JTI: "f1", ExpiresAt: t0.Add(time.Hour), Source: SourceFile},
			{JTI: "f2", Source: SourceFile},
			{JTI: "a1", ExpiresAt: t0.Add(time.Hour), Source: SourceAPI},
		},
		Agents: []Agent{
			{AgentID: "fa", RevokedBefore: t0.Add(-time.Hour), Source: SourceFile},
			{AgentID: "aa", RevokedBefore: t0, Source: SourceAPI},
		},
	}
	if diff := cmp.Diff(want, s.List()); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

// TestConcurrent: Check runs while writers and reloads swap snapshots (run
// with -race).
func TestConcurrent(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "revocations.json")
	writeList(t, path, `{"jtis":[],"agents":[]}`)
	s := newSet(t, newClock(t0), path)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			c := claims("j", "agent", t0)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = s.Check(c)
			}
		})
	}
	for i := range 200 {
		if _, err := s.RevokeJTI("j"+string(rune('a'+i%26)), time.Time{}); err != nil {
			t.Error(err)
		}
		if i%20 == 0 {
			writeList(t, path, `{"jtis":[{"jti":"x`+string(rune('a'+i%26))+`"}],"agents":[]}`)
			_ = s.ReloadIfChanged()
		}
	}
	close(stop)
	wg.Wait()
	wantRevoked(t, s, claims("ja", "agent", t0), true)
}

func TestHandler(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	s := newSet(t, clk, "")
	static, err := httpapi.NewStaticTokens([]httpapi.Credential{
		{Name: "admin", TokenSHA256: httpapi.TokenSHA256("admin-secret"), Roles: []string{httpapi.RoleAdmin}},
		{Name: "ops", TokenSHA256: httpapi.TokenSHA256("ops-secret"), Roles: []string{httpapi.RoleOperator}},
	})
	if err != nil {
		t.Fatal(err)
	}
	list, revoke := s.Handlers(nil)
	h := httpapi.Handler(httpapi.Config{Auth: &httpapi.Auth{Authenticators: []httpapi.Authenticator{static}}, Routes: []httpapi.Route{
		{Pattern: "GET /v1/revocations", Role: httpapi.RoleOperator, Handler: list},
		{Pattern: "POST /v1/revocations", Role: httpapi.RoleAdmin, Handler: revoke},
	}})
	do := func(method, auth, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "/v1/revocations", strings.NewReader(body))
		if auth != "" {
			r.Header.Set("Authorization", "Bearer "+auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	tests := []struct {
		name, method, auth, body string
		status                   int
	}{
		{"revoke jti", http.MethodPost, "admin-secret", `{"jti":"j1"}`, http.StatusCreated},
		{"revoke jti with expiry", http.MethodPost, "admin-secret", `{"jti":"j2","expires_at":"2026-03-02T16:30:00Z"}`, http.StatusCreated},
		{"revoke agent", http.MethodPost, "admin-secret", `{"agent_id":"agent-a"}`, http.StatusCreated},
		{"revoke agent with cut-off", http.MethodPost, "admin-secret", `{"agent_id":"agent-b","before":"2026-03-02T15:59:00Z"}`, http.StatusCreated},
		{"list", http.MethodGet, "admin-secret", ``, http.StatusOK},
		{"no admin token", http.MethodPost, "", `{"jti":"j9"}`, http.StatusUnauthorized},
		{"wrong admin token", http.MethodPost, "admin-secreT", `{"jti":"j9"}`, http.StatusUnauthorized},
		{"list without a credential", http.MethodGet, "", ``, http.StatusUnauthorized},
		{"list as an operator", http.MethodGet, "ops-secret", ``, http.StatusOK},
		{"revoke as an operator", http.MethodPost, "ops-secret", `{"jti":"j9"}`, http.StatusForbidden},
		{"both", http.MethodPost, "admin-secret", `{"jti":"j9","agent_id":"a"}`, http.StatusBadRequest},
		{"neither", http.MethodPost, "admin-secret", `{}`, http.StatusBadRequest},
		{"unknown field", http.MethodPost, "admin-secret", `{"jti":"j9","reason":"x"}`, http.StatusBadRequest},
		{"why too long", http.MethodPost, "admin-secret", `{"jti":"j9","why":"` + strings.Repeat("w", 1025) + `"}`, http.StatusBadRequest},
		{"case variant", http.MethodPost, "admin-secret", `{"JTI":"j9"}`, http.StatusBadRequest},
		{"duplicate key", http.MethodPost, "admin-secret", `{"jti":"j9","jti":"j8"}`, http.StatusBadRequest},
		{"before with jti", http.MethodPost, "admin-secret", `{"jti":"j9","before":"2026-03-02T16:00:00Z"}`, http.StatusBadRequest},
		{"bad time", http.MethodPost, "admin-secret", `{"agent_id":"a","before":"yesterday"}`, http.StatusBadRequest},
		{"not JSON", http.MethodPost, "admin-secret", `jti=j9`, http.StatusBadRequest},
		{"too large", http.MethodPost, "admin-secret", `{"jti":"` + strings.Repeat("a", maxRequestBytes) + `"}`, http.StatusBadRequest},
		{"overlong jti", http.MethodPost, "admin-secret", `{"jti":"` + strings.Repeat("a", 300) + `"}`, http.StatusBadRequest},
		{"delete", http.MethodDelete, "admin-secret", ``, http.StatusMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if w := do(tc.method, tc.auth, tc.body); w.Code != tc.status {
				t.Errorf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
		})
	}
	wantRevoked(t, s, claims("j1", "x", t0), true)
	wantRevoked(t, s, claims("j2", "x", t0), true)
	wantRevoked(t, s, claims("j9", "x", t0), false)
	wantRevoked(t, s, claims("j", "agent-a", t0.Add(-time.Second)), true)
	wantRevoked(t, s, claims("j", "agent-b", t0.Add(-30*time.Second)), false)
	wantRevoked(t, s, claims("j", "agent-b", t0.Add(-90*time.Second)), true)
}

func BenchmarkCheck(b *testing.B) {
	s, err := New(Options{Clock: newClock(t0).now})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 10000 {
		if _, err := s.RevokeJTI("jti-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String(), time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.RevokeAgent("other-agent", t0); err != nil {
		b.Fatal(err)
	}
	c := claims("not-revoked", "agent", t0)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Check(c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRevocationIsRecorded: a revocation through the API is handed to
// OnRevoke with who made it (the caller, never the body) and why; when it
// cannot be recorded the answer says so (503) and the revocation stays in
// effect, since refusing it would leave the token working.
func TestRevocationIsRecorded(t *testing.T) {
	t.Parallel()
	s := newSet(t, newClock(t0), "")
	static, err := httpapi.NewStaticTokens([]httpapi.Credential{{Name: "root", TokenSHA256: httpapi.TokenSHA256("admin-secret"), Roles: []string{httpapi.RoleAdmin}}})
	if err != nil {
		t.Fatal(err)
	}
	var got []Revoked
	fail := false
	_, revoke := s.Handlers(func(_ context.Context, r Revoked) error {
		got = append(got, r)
		if fail {
			return errors.New("disk full")
		}
		return nil
	})
	h := httpapi.Handler(httpapi.Config{Auth: &httpapi.Auth{Authenticators: []httpapi.Authenticator{static}}, Routes: []httpapi.Route{
		{Pattern: "POST /v1/revocations", Role: httpapi.RoleAdmin, Handler: revoke}}})
	post := func(body string) int {
		r := httptest.NewRequest(http.MethodPost, "/v1/revocations", strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer admin-secret")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	if c := post(`{"jti":"j1","why":"leaked in a log"}`); c != http.StatusCreated {
		t.Fatalf("revoke: %d", c)
	}
	fail = true
	if c := post(`{"agent_id":"agent-a"}`); c != http.StatusServiceUnavailable {
		t.Fatalf("unrecorded revocation: %d, want 503", c)
	}
	wantRevoked(t, s, claims("jx", "agent-a", t0.Add(-time.Minute)), true)
	if len(got) != 2 || got[0].JTI == nil || got[0].JTI.JTI != "j1" || got[0].By != "root" || got[0].Why != "leaked in a log" ||
		got[1].Agent == nil || got[1].Agent.AgentID != "agent-a" {
		t.Fatalf("recorded %+v", got)
	}
}
