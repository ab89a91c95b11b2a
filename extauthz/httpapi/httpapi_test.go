package httpapi

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

type fakeExplainer struct{}

func (fakeExplainer) Explain(context.Context, *envoy_service_auth_v3.CheckRequest) extauthz.Body {
	return extauthz.Body{Decision: "allow"}
}

var t0 = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)

// testAPI is the API with every endpoint mounted, the static credentials
// "ops" (operator), "approver" (approver) and "root" (admin), and operator
// JWTs signed by the returned signer.
func testAPI(t *testing.T) (http.Handler, ed25519.PrivateKey, *riskstore.Memory) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewStaticKeys(map[string]crypto.PublicKey{"k1": pub})
	if err != nil {
		t.Fatal(err)
	}
	v, err := capability.NewOperatorVerifier(capability.OperatorConfig{Issuer: "idp", Audience: "aisecops-api", Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewStaticTokens([]Credential{
		{Name: "ops", TokenSHA256: TokenSHA256("ops"), Roles: []string{RoleOperator}},
		{Name: "alice", TokenSHA256: TokenSHA256("approver"), Roles: []string{RoleApprover}},
		{Name: "root", TokenSHA256: TokenSHA256("root"), Roles: []string{RoleAdmin}},
	})
	if err != nil {
		t.Fatal(err)
	}
	store := riskstore.NewMemory(func() time.Time { return t0 })
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	h := Handler(Config{
		Explainer: fakeExplainer{}, Approvals: store, Gatherer: prometheus.NewRegistry(), Clock: func() time.Time { return t0 },
		Auth: &Auth{Authenticators: []Authenticator{st, OperatorJWTs{Verifier: v}}, Clock: func() time.Time { return t0 }},
		Routes: []Route{
			{Pattern: "POST /v1/tokens", SelfAuth: true, Handler: ok},
			{Pattern: "GET /v1/xds/status", Role: RoleOperator, Handler: ok},
			{Pattern: "POST /v1/xds/promote", Role: RoleAdmin, Handler: ok},
		},
	})
	return h, priv, store
}

func call(h http.Handler, method, path, bearer, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if bearer != "" {
		r.Header.Set("Authorization", "Bearer "+bearer)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestRoles: every endpoint but health and the token service refuses an
// anonymous caller (401) and a caller without its role (403), with a JSON
// error body.
func TestRoles(t *testing.T) {
	h, _, store := testAPI(t)
	if err := store.CreateApproval(context.Background(), riskstore.Approval{ID: "apr_1", Status: riskstore.ApprovalPending}, time.Hour); err != nil {
		t.Fatal(err)
	}
	endpoints := []struct {
		method, path, body, role string
	}{
		{"GET", "/metrics", "", RoleOperator},
		{"GET", "/v1/approvals", "", RoleOperator},
		{"GET", "/v1/approvals/apr_1", "", RoleOperator},
		{"POST", "/v1/explain", `{"attributes":{"request":{"http":{"path":"/"}}}}`, RoleOperator},
		{"GET", "/v1/xds/status", "", RoleOperator},
		{"POST", "/v1/approvals/apr_1/reject", `{"why":"no"}`, RoleApprover},
		{"POST", "/v1/xds/promote", "", RoleAdmin},
	}
	tokens := map[string]string{RoleOperator: "ops", RoleApprover: "approver", RoleAdmin: "root"}
	for _, ep := range endpoints {
		t.Run(ep.method+" "+ep.path, func(t *testing.T) {
			for name, bearer := range map[string]string{"anonymous": "", "unknown token": "guess", "not a bearer": ""} {
				r := httptest.NewRequest(ep.method, ep.path, strings.NewReader(ep.body))
				if bearer != "" {
					r.Header.Set("Authorization", "Bearer "+bearer)
				}
				if name == "not a bearer" {
					r.Header.Set("Authorization", "Basic b3BzOm9wcw==")
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				wantError(t, w, http.StatusUnauthorized, "unauthenticated")
			}
			for role, tok := range tokens {
				w := call(h, ep.method, ep.path, tok, ep.body)
				allowed := role == ep.role || role == RoleAdmin
				switch {
				case allowed && w.Code >= 400 && w.Code != http.StatusConflict:
					t.Errorf("%s: status %d: %s", role, w.Code, w.Body)
				case !allowed:
					wantError(t, w, http.StatusForbidden, "forbidden")
				}
			}
		})
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if w := call(h, "GET", path, "", ""); w.Code != http.StatusOK {
			t.Errorf("%s: %d", path, w.Code)
		}
	}
	if w := call(h, "POST", "/v1/tokens", "", ""); w.Code != http.StatusOK {
		t.Errorf("the token service is public (it authenticates agents itself): %d", w.Code)
	}
}

func wantError(t *testing.T, w *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	var body struct{ Error Error }
	if w.Code != status || json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Error.Code != code || body.Error.Message == "" {
		t.Errorf("status %d body %s, want %d {error: {code: %s}}", w.Code, w.Body, status, code)
	}
}

// TestOperatorJWTs: roles come from an operator JWT's claim; an agent's
// capability token or workload credential carrying a roles claim is refused.
func TestOperatorJWTs(t *testing.T) {
	h, key, _ := testAPI(t)
	jwt := func(claims map[string]any) string {
		seg := func(v any) string {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			return base64.RawURLEncoding.EncodeToString(b)
		}
		signing := seg(map[string]string{"alg": "EdDSA", "typ": "JWT", "kid": "k1"}) + "." + seg(claims)
		return signing + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(signing)))
	}
	claims := func(roles ...string) map[string]any {
		return map[string]any{"iss": "idp", "sub": "bob", "aud": "aisecops-api", "iat": t0.Unix(), "nbf": t0.Unix(),
			"exp": t0.Add(time.Hour).Unix(), "jti": "j", "roles": roles}
	}
	op := jwt(claims(RoleOperator))
	if w := call(h, "GET", "/v1/approvals", op, ""); w.Code != http.StatusOK {
		t.Fatalf("operator JWT: %d %s", w.Code, w.Body)
	}
	wantError(t, call(h, "POST", "/v1/xds/promote", op, ""), http.StatusForbidden, "forbidden")
	// An agent's credential never carries an operator role.
	agent := claims(RoleAdmin)
	agent["agent_id"], agent["tool"] = "bob", "db.read"
	wantError(t, call(h, "GET", "/v1/approvals", jwt(agent), ""), http.StatusUnauthorized, "unauthenticated")
	workload := claims(RoleAdmin)
	workload["kubernetes.io"] = map[string]any{"namespace": "agents", "serviceaccount": map[string]any{"name": "bob", "uid": "u"}}
	wantError(t, call(h, "GET", "/v1/approvals", jwt(workload), ""), http.StatusUnauthorized, "unauthenticated")
	capAud := claims(RoleAdmin)
	capAud["aud"] = "aisecops-egress"
	wantError(t, call(h, "GET", "/v1/approvals", jwt(capAud), ""), http.StatusUnauthorized, "unauthenticated")
	wantError(t, call(h, "GET", "/v1/approvals", jwt(claims("superuser")), ""), http.StatusForbidden, "forbidden")
}

// TestApproverIsTheCaller: who decided an approval is the authenticated
// caller, never the body.
func TestApproverIsTheCaller(t *testing.T) {
	h, _, store := testAPI(t)
	if err := store.CreateApproval(context.Background(), riskstore.Approval{ID: "apr_2", Status: riskstore.ApprovalPending}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if w := call(h, "POST", "/v1/approvals/apr_2/approve", "approver", `{"by":"mallory","why":"ok"}`); w.Code != http.StatusBadRequest {
		t.Fatalf("a body naming the approver: %d", w.Code)
	}
	if w := call(h, "POST", "/v1/approvals/apr_2/approve", "approver", `{"why":"known contact"}`); w.Code != http.StatusOK {
		t.Fatalf("approve: %d %s", w.Code, w.Body)
	}
	ap, _ := store.GetApproval(context.Background(), "apr_2")
	if ap.DecidedBy != "alice" || ap.Why != "known contact" {
		t.Fatalf("approval %+v", ap)
	}
}

// TestApprovalDecisionIsRecordedFirst: with OnDecision (the audit log) the
// decision is recorded before the store changes; a failed record refuses it
// (503, the approval stays pending: no unaudited approval); a decision the
// store then refuses (another approver was first) is recorded as not applied.
func TestApprovalDecisionIsRecordedFirst(t *testing.T) {
	store := riskstore.NewMemory(func() time.Time { return t0 })
	st, err := NewStaticTokens([]Credential{{Name: "alice", TokenSHA256: TokenSHA256("approver"), Roles: []string{RoleApprover}}})
	if err != nil {
		t.Fatal(err)
	}
	type event struct{ id, status, by, why, outcome string }
	var events []event
	fail, race := false, false
	h := Handler(Config{Approvals: store, Clock: func() time.Time { return t0 }, Auth: &Auth{Authenticators: []Authenticator{st}},
		OnDecision: func(ctx context.Context, a riskstore.Approval, by Caller, outcome string) error {
			cur, _ := store.GetApproval(ctx, a.ID)
			if outcome == OutcomeDecided && cur.Status != riskstore.ApprovalPending {
				t.Errorf("recorded after the store changed: %+v", cur)
			}
			events = append(events, event{a.ID, a.Status, by.Name, a.Why, outcome})
			if race && outcome == OutcomeDecided {
				_, _ = store.DecideApproval(ctx, a.ID, false, "bob", "first", t0)
			}
			if fail {
				return errors.New("disk full")
			}
			return nil
		}})
	for _, id := range []string{"apr_ok", "apr_fail", "apr_race"} {
		if err := store.CreateApproval(context.Background(), riskstore.Approval{ID: id, RunID: "r", AgentID: "a", Tool: "db.write", Binding: "b"}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if w := call(h, "POST", "/v1/approvals/apr_ok/approve", "approver", `{"why":"known contact"}`); w.Code != 200 {
		t.Fatalf("approve: %d %s", w.Code, w.Body)
	}
	fail = true
	w := call(h, "POST", "/v1/approvals/apr_fail/approve", "approver", `{"why":"x"}`)
	wantError(t, w, http.StatusServiceUnavailable, "audit_write_failed")
	if ap, _ := store.GetApproval(context.Background(), "apr_fail"); ap.Status != riskstore.ApprovalPending {
		t.Fatalf("an approval whose record failed took effect: %+v", ap)
	}
	fail, race = false, true
	if w := call(h, "POST", "/v1/approvals/apr_race/approve", "approver", `{"why":"late"}`); w.Code != http.StatusConflict {
		t.Fatalf("raced: %d %s", w.Code, w.Body)
	}
	if w := call(h, "POST", "/v1/approvals/apr_ok/reject", "approver", `{"why":"again"}`); w.Code != http.StatusConflict {
		t.Fatalf("decided twice: %d", w.Code)
	}
	want := []event{
		{"apr_ok", "approved", "alice", "known contact", OutcomeDecided},
		{"apr_fail", "approved", "alice", "x", OutcomeDecided},
		{"apr_race", "approved", "alice", "late", OutcomeDecided},
		{"apr_race", "approved", "alice", "late", OutcomeNotApplied},
	}
	if !slices.Equal(events, want) {
		t.Fatalf("recorded %+v\nwant %+v", events, want)
	}
}

// TestRouteWithoutRoleRefused: a mounted route with no role that does not say
// it authenticates its callers itself stops the server from starting, so no
// endpoint is public by omission; one that claims both is refused too.
func TestRouteWithoutRoleRefused(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	for name, rt := range map[string]Route{
		"neither": {Pattern: "GET /v1/forgot", Handler: ok},
		"both":    {Pattern: "GET /v1/confused", Role: RoleOperator, SelfAuth: true, Handler: ok},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("Handler accepted the route")
				}
			}()
			Handler(Config{Routes: []Route{rt}})
		})
	}
}
