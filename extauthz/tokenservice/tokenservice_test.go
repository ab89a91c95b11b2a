package tokenservice

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// TestIssue drives POST /v1/tokens end to end: real keys, the real workload
// verifier, the real OPA engine with the bundled tokens.rego, a real audit log.
func TestIssue(t *testing.T) {
	t.Parallel()
	type bearerFunc func(t *testing.T, f *fixture) string
	valid := func(name string) bearerFunc {
		return func(t *testing.T, f *fixture) string { return f.workload(t, sa(name), t0.Add(-time.Minute), time.Hour) }
	}
	tests := []struct {
		name   string
		bearer bearerFunc
		body   string
		status int
		codes  []string      // refusals
		agent  string        // issued
		ttl    time.Duration // issued: exp - iat
	}{
		{
			name: "allowed tool", bearer: valid("reader"),
			body:   `{"tool":"db.read","scope":"crm","run_id":"run-1","ttl":"2m","constraints":{"max_rows":100}}`,
			status: http.StatusCreated, agent: "reader", ttl: 2 * time.Minute,
		},
		{
			name: "tool not in allowed_tools", bearer: valid("reader"),
			body: `{"tool":"shell.exec"}`, status: http.StatusForbidden, codes: []string{"tool_not_allowed"},
		},
		{
			name: "tool not configured", bearer: valid("reader"),
			body: `{"tool":"no.such.tool"}`, status: http.StatusForbidden, codes: []string{"tool_not_allowed"},
		},
		{
			name: "agent not configured", bearer: valid("mallory"),
			body: `{"tool":"db.read"}`, status: http.StatusForbidden, codes: []string{"agent_unknown"},
		},
		{
			name: "ttl defaults", bearer: valid("reader"),
			body: `{"tool":"db.read"}`, status: http.StatusCreated, agent: "reader", ttl: capability.DefaultTTL,
		},
		{
			name: "ttl capped at MaxTTL", bearer: valid("reader"),
			body: `{"tool":"db.read","ttl":"1h"}`, status: http.StatusCreated, agent: "reader", ttl: 10 * time.Minute,
		},
		{
			name: "exec capped at five minutes by policy", bearer: valid("demo-agent"),
			body: `{"tool":"shell.exec","ttl":"9m"}`, status: http.StatusCreated, agent: "demo-agent", ttl: 5 * time.Minute,
		},
		{
			name: "external send capped at five minutes by policy", bearer: valid("demo-agent"),
			body: `{"tool":"send_email","ttl":"1h","single_use":true}`, status: http.StatusCreated, agent: "demo-agent", ttl: 5 * time.Minute,
		},
		{
			name: "write not capped by policy", bearer: valid("demo-agent"),
			body: `{"tool":"db.write","ttl":"9m"}`, status: http.StatusCreated, agent: "demo-agent", ttl: 9 * time.Minute,
		},
		{
			name: "subject that is not a service account", bearer: func(t *testing.T, f *fixture) string {
				return f.workload(t, "demo-agent", t0, time.Hour)
			},
			body: `{"tool":"db.read"}`, status: http.StatusCreated, agent: "demo-agent", ttl: capability.DefaultTTL,
		},

		// Workload credentials.
		{
			name: "no credential", bearer: func(*testing.T, *fixture) string { return "" },
			body: `{"tool":"db.read"}`, status: http.StatusUnauthorized, codes: []string{"token_missing"},
		},
		{
			name: "forged: signed by an unconfigured key", bearer: func(t *testing.T, f *fixture) string {
				tok, err := newSigner(t).Sign(&capability.Claims{
					Issuer: workloadIssuer, Subject: sa("demo-agent"), Audience: []string{workloadAudience},
					IssuedAt: t0, NotBefore: t0, ExpiresAt: t0.Add(time.Hour),
				})
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			body: `{"tool":"db.read"}`, status: http.StatusUnauthorized, codes: []string{"token_unknown_key"},
		},
		{
			name: "forged: payload changed after signing", bearer: func(t *testing.T, f *fixture) string {
				tok := f.workload(t, sa("reader"), t0, time.Hour)
				parts := strings.Split(tok, ".")
				other := strings.Split(f.workload(t, sa("demo-agent"), t0, time.Hour), ".")
				return parts[0] + "." + other[1] + "." + parts[2]
			},
			body: `{"tool":"db.read"}`, status: http.StatusUnauthorized, codes: []string{"token_signature"},
		},
		{
			name: "expired", bearer: func(t *testing.T, f *fixture) string {
				return f.workload(t, sa("reader"), t0.Add(-2*time.Hour), time.Hour)
			},
			body: `{"tool":"db.read"}`, status: http.StatusUnauthorized, codes: []string{"token_expired"},
		},
		{
			name: "capability token presented as the workload credential", bearer: func(t *testing.T, f *fixture) string {
				tok, _, err := capability.Mint(f.wlSigner, capability.MintRequest{
					Issuer: testIssuer, Audience: testAudience, Agent: "reader", Tool: "db.read",
				}, t0)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			body: `{"tool":"db.read"}`, status: http.StatusUnauthorized, codes: []string{"token_issuer"},
		},
		{
			name: "workload credential for another audience", bearer: func(t *testing.T, f *fixture) string {
				tok, err := f.wlSigner.Sign(&capability.Claims{
					Issuer: workloadIssuer, Subject: sa("reader"), Audience: []string{testAudience},
					IssuedAt: t0, NotBefore: t0, ExpiresAt: t0.Add(time.Hour),
				})
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			body: `{"tool":"db.read"}`, status: http.StatusUnauthorized, codes: []string{"token_audience"},
		},
		{
			name: "garbage bearer", bearer: func(*testing.T, *fixture) string { return "not-a-jwt" },
			body: `{"tool":"db.read"}`, status: http.StatusUnauthorized, codes: []string{"token_malformed"},
		},

		// Bad input (after authentication).
		{name: "unknown field", bearer: valid("reader"), body: `{"tool":"db.read","admin":true}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "unknown constraint", bearer: valid("reader"), body: `{"tool":"db.read","constraints":{"max_rowz":1}}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "case-variant key alone", bearer: valid("reader"), body: `{"Tool":"db.read"}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "duplicate key", bearer: valid("reader"), body: `{"tool":"db.read","tool":"shell.exec"}`, status: http.StatusBadRequest, codes: []string{"duplicate_key"}},
		{name: "case-variant duplicate", bearer: valid("reader"), body: `{"tool":"db.read","TOOL":"shell.exec"}`, status: http.StatusBadRequest, codes: []string{"duplicate_key"}},
		{name: "trailing data", bearer: valid("reader"), body: `{"tool":"db.read"} {}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "not JSON", bearer: valid("reader"), body: `tool=db.read`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "array", bearer: valid("reader"), body: `[{"tool":"db.read"}]`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "no tool", bearer: valid("reader"), body: `{"scope":"x"}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "tool of the wrong type", bearer: valid("reader"), body: `{"tool":["db.read"]}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "bad ttl", bearer: valid("reader"), body: `{"tool":"db.read","ttl":"forever"}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "negative ttl", bearer: valid("reader"), body: `{"tool":"db.read","ttl":"-5m"}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "bad run id", bearer: valid("reader"), body: `{"tool":"db.read","run_id":"run 1"}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "negative max_rows", bearer: valid("reader"), body: `{"tool":"db.read","constraints":{"max_rows":-1}}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "expiry passed", bearer: valid("reader"), body: `{"tool":"db.read","constraints":{"expiry":"2020-01-01T00:00:00Z"}}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "scope with control characters", bearer: valid("reader"), body: `{"tool":"db.read","scope":"a\nb"}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
		{name: "body over 64 KiB", bearer: valid("reader"), body: `{"tool":"db.read","scope":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, status: http.StatusBadRequest, codes: []string{"bad_request"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			bearer := tc.bearer(t, f)
			w := f.do(t, bearer, tc.body)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d; body %s", w.Code, tc.status, w.Body)
			}
			recs := f.records(t)
			if len(recs) != 1 {
				t.Fatalf("%d audit lines, want exactly 1", len(recs))
			}
			rec := recs[0]
			if rec.HTTPStatus != tc.status || rec.PolicyVersion != "v1.0" {
				t.Errorf("audit status %d policy_version %q", rec.HTTPStatus, rec.PolicyVersion)
			}
			raw, err := os.ReadFile(f.auditPath)
			if err != nil {
				t.Fatal(err)
			}
			if bearer != "" && strings.Contains(string(raw), bearer) {
				t.Error("the audit line contains the workload credential")
			}

			if tc.status != http.StatusCreated {
				got := decodeRefused(t, w)
				if diff := cmp.Diff(tc.codes, codes(got.Reasons)); got.Decision != "deny" || diff != "" {
					t.Errorf("refusal %q, reasons (-want +got):\n%s", got.Decision, diff)
				}
				if rec.Event != EventRefused || rec.Decision != "deny" || rec.TokenJTI != "" {
					t.Errorf("audit event %q decision %q jti %q", rec.Event, rec.Decision, rec.TokenJTI)
				}
				if diff := cmp.Diff(tc.codes, auditCodes(rec)); diff != "" {
					t.Errorf("audit reasons (-want +got):\n%s", diff)
				}
				if tc.status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				return
			}

			got := decodeIssued(t, w)
			if w.Header().Get("Cache-Control") != "no-store" {
				t.Error("token response is cacheable")
			}
			// The token is for the Check path: the Check path's verifier accepts it.
			claims, err := f.verifier(t).Verify(context.Background(), got.Token, t0.Add(time.Second))
			if err != nil {
				t.Fatalf("minted token does not verify: %v", err)
			}
			if claims.AgentID != tc.agent || got.AgentID != tc.agent || claims.Subject != tc.agent {
				t.Errorf("agent: claims %q/%q, response %q, want %q", claims.AgentID, claims.Subject, got.AgentID, tc.agent)
			}
			if life := claims.ExpiresAt.Sub(claims.IssuedAt); life != tc.ttl {
				t.Errorf("lifetime %v, want %v", life, tc.ttl)
			}
			if claims.ID == "" || claims.ID != got.JTI || !got.ExpiresAt.Equal(claims.ExpiresAt) || got.Tool != claims.Tool {
				t.Errorf("response %+v does not match claims %+v", got, claims)
			}
			if claims.PolicyVersion != "v1.0" || claims.Issuer != testIssuer {
				t.Errorf("claims policy_version %q iss %q", claims.PolicyVersion, claims.Issuer)
			}
			if rec.Event != EventIssued || rec.Decision != "allow" || rec.TokenJTI != got.JTI || rec.AgentID != tc.agent || rec.Tool != got.Tool {
				t.Errorf("audit %+v", rec)
			}
			if strings.Contains(string(raw), got.Token) || strings.Contains(string(raw), strings.Split(got.Token, ".")[2]) {
				t.Error("the audit line contains the token")
			}
		})
	}
}

func auditCodes(r audit.Record) []string {
	out := []string{}
	for _, rs := range r.Reasons {
		out = append(out, rs.Code)
	}
	return out
}

// TestIssuedClaims: what the request asked for is what the token carries.
func TestIssuedClaims(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	w := f.do(t, f.workload(t, sa("demo-agent"), t0, time.Hour),
		`{"tool":"db.write","scope":"crm","run_id":"run-7","ttl":"3m","single_use":true,"constraints":{"max_rows":5,"max_cost":0.5,"expiry":"2026-03-02T16:02:00Z"}}`)
	if w.Code != http.StatusCreated {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	got := decodeIssued(t, w)
	claims, err := f.verifier(t).Verify(context.Background(), got.Token, t0)
	if err != nil {
		t.Fatal(err)
	}
	rows, cost := int64(5), 0.5
	want := &capability.Claims{
		Issuer: testIssuer, Subject: "demo-agent", Audience: []string{testAudience},
		ExpiresAt: t0.Add(3 * time.Minute), IssuedAt: t0, NotBefore: t0, ID: got.JTI,
		AgentID: "demo-agent", Tool: "db.write", Scope: "crm",
		Constraints:   capability.Constraints{MaxRows: &rows, MaxCost: &cost, Expiry: "2026-03-02T16:02:00Z"},
		PolicyVersion: "v1.0", RunID: "run-7", SingleUse: true,
	}
	if diff := cmp.Diff(want, claims); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
	// The token is for db.write only.
	v := f.verifier(t)
	if err := v.CheckRoute(claims, "db.write"); err != nil {
		t.Error(err)
	}
	if err := v.CheckRoute(claims, "shell.exec"); reason.CodeOf(err) != reason.TokenToolMismatch {
		t.Errorf("CheckRoute(other tool) = %v", err)
	}
}

// TestTokenOnlyOnCheckPath: a minted capability token is refused as a workload
// credential, and a workload credential is refused on the Check path, although
// in development one key signs both.
func TestTokenOnlyOnCheckPath(t *testing.T) {
	t.Parallel()
	dev := newSigner(t)
	wv, err := DevWorkloadVerifier(dev)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *Config) { c.Signer, c.Workload, c.AgentNamespace = dev, wv, DevWorkloadNamespace })
	wl, err := MintDevWorkload(dev, "reader", 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	w := f.do(t, wl, `{"tool":"db.read"}`)
	if w.Code != http.StatusCreated {
		t.Fatalf("dev workload: status %d: %s", w.Code, w.Body)
	}
	capTok := decodeIssued(t, w).Token

	w = f.do(t, capTok, `{"tool":"db.read"}`)
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("capability token as workload credential: status %d", w.Code)
	}
	if got := codes(decodeRefused(t, w).Reasons); got[0] != string(reason.TokenIssuer) {
		t.Errorf("reasons %v", got)
	}

	checkVerifier, err := capability.NewVerifier(capability.VerifierConfig{Issuer: testIssuer, Audience: testAudience, Keys: staticKeys(t, dev)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := checkVerifier.Verify(context.Background(), capTok, t0); err != nil {
		t.Errorf("capability token on the Check path: %v", err)
	}
	if _, err := checkVerifier.Verify(context.Background(), wl, t0); reason.CodeOf(err) != reason.TokenIssuer {
		t.Errorf("workload credential on the Check path: %v, want token_issuer", err)
	}
	// Same issuer configured on both sides: the audience still keeps them apart.
	sameIss, err := capability.NewWorkloadVerifier(capability.WorkloadConfig{Issuer: testIssuer, Audience: DevWorkloadAudience, Keys: staticKeys(t, dev)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sameIss.Verify(context.Background(), capTok, t0); reason.CodeOf(err) != reason.TokenAudience {
		t.Errorf("capability token at a workload verifier with the same issuer: %v, want token_audience", err)
	}
}

// TestKubernetesServiceAccountClaim: the agent is the kubernetes.io service
// account when the credential carries one, and the namespace reaches the policy.
func TestKubernetesServiceAccountClaim(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	sign := func(claims jwt.MapClaims) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
		tok.Header["kid"] = f.wlSigner.KeyID()
		s, err := tok.SignedString(f.wlPriv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	claims := func(ns, name, sub string) jwt.MapClaims {
		return jwt.MapClaims{
			"iss": workloadIssuer, "aud": []string{workloadAudience, "https://kubernetes.default.svc"},
			"sub": sub, "iat": t0.Unix(), "nbf": t0.Unix(), "exp": t0.Add(time.Hour).Unix(),
			"kubernetes.io": map[string]any{
				"namespace":      ns,
				"serviceaccount": map[string]any{"name": name, "uid": "u-1"},
				"pod":            map[string]any{"name": "agent-0", "uid": "u-2"},
			},
		}
	}
	w := f.do(t, sign(claims("agents", "reader", "system:serviceaccount:agents:reader")), `{"tool":"db.read"}`)
	if w.Code != http.StatusCreated || decodeIssued(t, w).AgentID != "reader" {
		t.Fatalf("status %d", w.Code)
	}
}

// TestNamespaceRestriction: a Kubernetes service account is the pair
// (namespace, name). One of another namespace named like an agent is not that
// agent (the attack was system:serviceaccount:tenant-b:demo-agent getting
// demo-agent's tokens); one an agent lists among its workloads is, and the
// policy's data.aisecops.token_workload_namespaces is a second line.
func TestNamespaceRestriction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	copyBundle(t, dir, map[string]string{"token_workload_namespaces": `["agents"]`})
	e, err := policy.New(context.Background(), policy.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{"system:serviceaccount:sandbox:sandboxed": "reader"}
	f := newFixture(t, func(c *Config) {
		c.Policy = e
		c.WorkloadLookup = func(sub string) (config.Agent, bool) { return c.AgentLookup(listed[sub]) }
	})
	if w := f.do(t, f.workload(t, "system:serviceaccount:agents:reader", t0, time.Hour), `{"tool":"db.read"}`); w.Code != http.StatusCreated {
		t.Errorf("agent namespace: status %d", w.Code)
	}
	for sub, code := range map[string]string{
		"system:serviceaccount:tenant-b:reader":    "agent_unknown",      // named like an agent, in another namespace
		"system:serviceaccount:sandbox:sandboxed":  "workload_namespace", // listed by the agent, refused by the policy
		"system:serviceaccount:agents:reader:evil": "agent_unknown",      // not a service account subject at all
	} {
		w := f.do(t, f.workload(t, sub, t0, time.Hour), `{"tool":"db.read"}`)
		if w.Code != http.StatusForbidden {
			t.Fatalf("%s: status %d", sub, w.Code)
		}
		if diff := cmp.Diff([]string{code}, codes(decodeRefused(t, w).Reasons)); diff != "" {
			t.Errorf("%s: %s", sub, diff)
		}
	}
}

// TestServiceFaults: policy and audit failures are 503s with no token.
func TestServiceFaults(t *testing.T) {
	t.Parallel()
	noTokensRule := t.TempDir()
	writeFile(t, noTokensRule, "authz.rego", "package aisecops.authz\n\nimport rego.v1\n\nresult := {\"decision\": \"allow\", \"reasons\": [], \"obligations\": {}}\n")
	oldBundle, err := policy.New(context.Background(), policy.Options{Dir: noTokensRule})
	if err != nil {
		t.Fatal(err)
	}
	notReady, _ := policy.New(context.Background(), policy.Options{Dir: t.TempDir()})
	tests := map[string]struct {
		mutate func(*Config)
		code   string
	}{
		"bundle without a tokens rule": {func(c *Config) { c.Policy = oldBundle }, "policy_error"},
		"policy not ready":             {func(c *Config) { c.Policy = notReady }, "policy_not_ready"},
		"audit write fails":            {func(c *Config) { c.Audit = failingSink{} }, "audit_write_failed"},
		"signer fails":                 {func(c *Config) { c.Signer = brokenSigner{c.Signer} }, "internal_error"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tc.mutate)
			w := f.do(t, f.workload(t, sa("reader"), t0, time.Hour), `{"tool":"db.read"}`)
			if w.Code != http.StatusServiceUnavailable {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if diff := cmp.Diff([]string{tc.code}, codes(decodeRefused(t, w).Reasons)); diff != "" {
				t.Error(diff)
			}
		})
	}
}

type brokenSigner struct{ capability.Signer }

func (brokenSigner) Sign(*capability.Claims) (string, error) { return "", os.ErrDeadlineExceeded }

// TestOneAuditLinePerRequest: a mixed sequence writes one line per request
// and the hash chain verifies.
func TestOneAuditLinePerRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	good := f.workload(t, sa("reader"), t0, time.Hour)
	reqs := []struct{ bearer, body string }{
		{good, `{"tool":"db.read"}`},
		{good, `{"tool":"shell.exec"}`},
		{"", `{"tool":"db.read"}`},
		{good, `{"tool":`},
		{good, `{"tool":"db.read","run_id":"r-2"}`},
	}
	for _, r := range reqs {
		f.do(t, r.bearer, r.body)
	}
	recs := f.records(t)
	if len(recs) != len(reqs) {
		t.Fatalf("%d audit lines for %d requests", len(recs), len(reqs))
	}
	var events []string
	for _, r := range recs {
		events = append(events, r.Event)
	}
	want := []string{EventIssued, EventRefused, EventRefused, EventRefused, EventIssued}
	if diff := cmp.Diff(want, events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if _, err := audit.VerifyFile(f.auditPath); err != nil {
		t.Error(err)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/tokens", nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: status %d", w.Code)
	}
}

func TestTwoAuthorizationHeaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	good := f.workload(t, sa("reader"), t0, time.Hour)
	r := httptest.NewRequest(http.MethodPost, "/v1/tokens", strings.NewReader(`{"tool":"db.read"}`))
	r.Header.Add("Authorization", "Bearer "+good)
	r.Header.Add("Authorization", "Bearer "+good)
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("status %d", w.Code)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	_, err := New(Config{MaxTTL: -1})
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, want := range []string{"Signer", "Issuer", "Audience", "AgentLookup", "ToolLookup", "Policy", "Audit", "PolicyVersion", "Workload or ClientCert", "negative"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestMintDevWorkload(t *testing.T) {
	t.Parallel()
	dev := newSigner(t)
	wv, err := DevWorkloadVerifier(dev)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := MintDevWorkload(dev, "demo-agent", 10*time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	id, err := wv.Verify(context.Background(), tok, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := &capability.WorkloadIdentity{
		Subject: "system:serviceaccount:default:demo-agent", Issuer: DevWorkloadIssuer,
		Audience: []string{DevWorkloadAudience}, ExpiresAt: t0.Add(10 * time.Minute),
	}
	if diff := cmp.Diff(want, id); diff != "" {
		t.Errorf("identity (-want +got):\n%s", diff)
	}
	if _, err := wv.Verify(context.Background(), tok, t0.Add(11*time.Minute)); reason.CodeOf(err) != reason.TokenExpired {
		t.Errorf("after ttl: %v", err)
	}
	for name, agent := range map[string]string{"empty": "", "space": "a b", "colon injection": "a:b c"} {
		if _, err := MintDevWorkload(dev, agent, 0, t0); err == nil {
			t.Errorf("%s agent accepted", name)
		}
	}
	if _, err := MintDevWorkload(dev, "a", 48*time.Hour, t0); err == nil {
		t.Error("ttl over the workload maximum accepted")
	}
}
