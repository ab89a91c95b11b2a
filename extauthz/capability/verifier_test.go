package capability

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// hs256WithKey signs input with HMAC-SHA256 keyed by secret, the classic
// alg-confusion forgery that uses a verifier's public key as the shared secret.
func hs256WithKey(t *testing.T, secret []byte, header map[string]any, claims any) string {
	t.Helper()
	return craft(t, jwt.SigningMethodHS256, secret, header, claims)
}

func TestVerify(t *testing.T) {
	t.Parallel()
	k := testKeys()
	edPubPEM := func() []byte {
		der, err := x509.MarshalPKIXPublicKey(k.ed.pub())
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}()
	rsaPubDER, err := x509.MarshalPKIXPublicKey(k.rsa.pub())
	if err != nil {
		t.Fatal(err)
	}
	expiredBadSig := func() string {
		c := with(baseClaims(), "iat", t0.Add(-time.Hour).Unix(), "nbf", nil, "exp", t0.Add(-55*time.Minute).Unix())
		tok := signWith(t, k.ed2, c, "kid", k.ed.kid) // signed by ed2 under ed's kid
		return tok
	}()

	tests := []struct {
		name  string
		token string
		now   time.Time
		want  reason.Code // "" = valid
	}{
		{name: "EdDSA valid", token: signWith(t, k.ed, baseClaims())},
		{name: "ES256 valid", token: signWith(t, k.ec, baseClaims())},
		{name: "RS256 valid", token: signWith(t, k.rsa, baseClaims())},
		{name: "typ absent is fine", token: signWith(t, k.ed, baseClaims(), "typ", nil)},

		{name: "empty", token: "", want: reason.TokenMissing},
		{name: "one byte over the size limit", token: strings.Repeat("a", DefaultMaxTokenBytes+1), want: reason.TokenTooLarge},
		{name: "no dots", token: "abc", want: reason.TokenMalformed},
		{name: "two segments", token: "abc.def", want: reason.TokenMalformed},
		{name: "four segments", token: signWith(t, k.ed, baseClaims()) + ".x", want: reason.TokenMalformed},
		{name: "header not base64url", token: "e30=.e30.AA", want: reason.TokenMalformed},
		{name: "header not JSON", token: b64.EncodeToString([]byte("nope")) + ".e30.AA", want: reason.TokenMalformed},
		{name: "header JSON null", token: b64.EncodeToString([]byte("null")) + ".e30.AA", want: reason.TokenMalformed},
		{name: "signature not base64url", token: signWith(t, k.ed, baseClaims()) + "!", want: reason.TokenMalformed},

		{name: "alg none", token: craft(t, nil, nil, map[string]any{"alg": "none", "kid": k.ed.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "alg None", token: craft(t, nil, nil, map[string]any{"alg": "None", "kid": k.ed.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "alg missing", token: craft(t, nil, nil, map[string]any{"kid": k.ed.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "alg not a string", token: craft(t, nil, nil, map[string]any{"alg": 1, "kid": k.ed.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "HS256 keyed with our Ed25519 public key bytes", token: hs256WithKey(t, []byte(k.ed.pub().(ed25519.PublicKey)), map[string]any{"alg": "HS256", "kid": k.ed.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "HS256 keyed with our public key PEM", token: hs256WithKey(t, edPubPEM, map[string]any{"alg": "HS256", "kid": k.ed.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "HS256 keyed with our RSA public key DER", token: hs256WithKey(t, rsaPubDER, map[string]any{"alg": "HS256", "kid": k.rsa.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "RS384 (not in the list)", token: craft(t, jwt.SigningMethodRS384, k.rsa.priv, map[string]any{"alg": "RS384", "kid": k.rsa.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "ES256 header with the RSA key's kid", token: craft(t, jwt.SigningMethodES256, k.ec.priv, map[string]any{"alg": "ES256", "kid": k.rsa.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "RS256 header with the EC key's kid", token: craft(t, jwt.SigningMethodRS256, k.rsa.priv, map[string]any{"alg": "RS256", "kid": k.ec.kid}, baseClaims()), want: reason.TokenAlgorithm},
		{name: "EdDSA header with the EC key's kid", token: craft(t, jwt.SigningMethodEdDSA, k.ed.priv, map[string]any{"alg": "EdDSA", "kid": k.ec.kid}, baseClaims()), want: reason.TokenAlgorithm},

		{name: "unknown kid", token: signWith(t, k.ed2, baseClaims()), want: reason.TokenUnknownKey},
		{name: "kid missing", token: signWith(t, k.ed, baseClaims(), "kid", nil), want: reason.TokenUnknownKey},
		{name: "kid not a string", token: signWith(t, k.ed, baseClaims(), "kid", 7), want: reason.TokenMalformed},

		{name: "jku header", token: signWith(t, k.ed, baseClaims(), "jku", "https://attacker.example/jwks.json"), want: reason.TokenForbiddenHdr},
		{name: "x5u header", token: signWith(t, k.ed, baseClaims(), "x5u", "https://attacker.example/cert.pem"), want: reason.TokenForbiddenHdr},
		{name: "jwk header", token: signWith(t, k.ed, baseClaims(), "jwk", map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64.EncodeToString(k.ed2.pub().(ed25519.PublicKey))}), want: reason.TokenForbiddenHdr},
		{name: "x5c header", token: signWith(t, k.ed, baseClaims(), "x5c", []string{"MIIB"}), want: reason.TokenForbiddenHdr},
		{name: "crit header", token: signWith(t, k.ed, baseClaims(), "crit", []string{"exp"}), want: reason.TokenForbiddenHdr},

		{name: "signed by another key under our kid", token: signWith(t, k.ed2, baseClaims(), "kid", k.ed.kid), want: reason.TokenSignature},
		{name: "empty signature", token: strings.TrimRight(signWith(t, k.ed, baseClaims()), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), want: reason.TokenSignature},
		{name: "expired and badly signed reports the signature", token: expiredBadSig, want: reason.TokenSignature},
		{name: "payload swapped under a valid signature", token: swapPayload(signWith(t, k.ed, baseClaims()), with(baseClaims(), "tool", "shell.exec")), want: reason.TokenSignature},

		{name: "missing exp", token: signWith(t, k.ed, with(baseClaims(), "exp", nil)), want: reason.TokenLifetime},
		{name: "missing iat", token: signWith(t, k.ed, with(baseClaims(), "iat", nil)), want: reason.TokenLifetime},
		{name: "exp before iat", token: signWith(t, k.ed, with(baseClaims(), "exp", t0.Add(-time.Second).Unix())), want: reason.TokenLifetime},
		{name: "lifetime over the maximum", token: signWith(t, k.ed, with(baseClaims(), "exp", t0.Add(15*time.Minute+time.Second).Unix())), want: reason.TokenLifetime},
		{name: "lifetime exactly the maximum", token: signWith(t, k.ed, with(baseClaims(), "exp", t0.Add(15*time.Minute).Unix()))},
		{name: "expired", token: signWith(t, k.ed, baseClaims()), now: t0.Add(5*time.Minute + 30*time.Second), want: reason.TokenExpired},
		{name: "expired but within leeway", token: signWith(t, k.ed, baseClaims()), now: t0.Add(5*time.Minute + 29*time.Second)},
		{name: "future nbf", token: signWith(t, k.ed, with(baseClaims(), "nbf", t0.Add(time.Minute).Unix())), want: reason.TokenNotYetValid},
		{name: "future nbf within leeway", token: signWith(t, k.ed, with(baseClaims(), "nbf", t0.Add(30*time.Second).Unix()))},
		{name: "future iat", token: signWith(t, k.ed, with(baseClaims(), "iat", t0.Add(time.Minute).Unix(), "nbf", nil)), want: reason.TokenNotYetValid},
		{name: "exp as a string", token: signWith(t, k.ed, with(baseClaims(), "exp", "tomorrow")), want: reason.TokenClaims},
		{name: "negative exp", token: signWith(t, k.ed, with(baseClaims(), "exp", -1)), want: reason.TokenClaims},
		{name: "fractional dates", token: signWith(t, k.ed, with(baseClaims(), "iat", float64(t0.Unix())+0.5, "exp", float64(t0.Unix())+60.25))},

		{name: "wrong aud", token: signWith(t, k.ed, with(baseClaims(), "aud", "someone-else")), want: reason.TokenAudience},
		{name: "missing aud", token: signWith(t, k.ed, with(baseClaims(), "aud", nil)), want: reason.TokenAudience},
		{name: "array aud containing ours", token: signWith(t, k.ed, with(baseClaims(), "aud", []string{"other", testAudience}))},
		{name: "array aud not containing ours", token: signWith(t, k.ed, with(baseClaims(), "aud", []string{"other", "more"})), want: reason.TokenAudience},
		{name: "empty array aud", token: signWith(t, k.ed, with(baseClaims(), "aud", []string{})), want: reason.TokenAudience},
		{name: "aud of the wrong type", token: signWith(t, k.ed, with(baseClaims(), "aud", 42)), want: reason.TokenClaims},
		{name: "wrong iss", token: signWith(t, k.ed, with(baseClaims(), "iss", "https://evil.test")), want: reason.TokenIssuer},
		{name: "missing iss", token: signWith(t, k.ed, with(baseClaims(), "iss", nil)), want: reason.TokenIssuer},
		{name: "missing sub", token: signWith(t, k.ed, with(baseClaims(), "sub", nil)), want: reason.TokenClaims},

		{name: "stale policy_version", token: signWith(t, k.ed, with(baseClaims(), "policy_version", "v0")), want: reason.TokenPolicyVersion},
		{name: "missing policy_version", token: signWith(t, k.ed, with(baseClaims(), "policy_version", nil)), want: reason.TokenPolicyVersion},
		{name: "agent_id differs from sub", token: signWith(t, k.ed, with(baseClaims(), "agent_id", "other-agent")), want: reason.TokenClaims},
		{name: "agent_id absent defaults to sub", token: signWith(t, k.ed, with(baseClaims(), "agent_id", nil))},
		{name: "missing tool", token: signWith(t, k.ed, with(baseClaims(), "tool", nil)), want: reason.TokenClaims},
		{name: "single_use without jti", token: signWith(t, k.ed, with(baseClaims(), "single_use", true, "jti", nil)), want: reason.TokenClaims},
		{name: "constraints.expiry passed", token: signWith(t, k.ed, with(baseClaims(), "constraints", map[string]any{"expiry": t0.Add(-time.Second).Format(time.RFC3339)})), want: reason.TokenExpired},
		{name: "constraints.expiry ahead", token: signWith(t, k.ed, with(baseClaims(), "constraints", map[string]any{"expiry": t0.Add(time.Minute).Format(time.RFC3339), "max_rows": 100}))},
		{name: "constraints.expiry not RFC 3339", token: signWith(t, k.ed, with(baseClaims(), "constraints", map[string]any{"expiry": "tomorrow"})), want: reason.TokenClaims},
		{name: "negative max_rows", token: signWith(t, k.ed, with(baseClaims(), "constraints", map[string]any{"max_rows": -1})), want: reason.TokenClaims},
		{name: "payload not an object", token: signWith(t, k.ed, []int{1}), want: reason.TokenClaims},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = t0
			}
			// Cold and cached verifiers must agree on every case.
			for _, cacheSize := range []int{-1, 100} {
				v := newTestVerifier(t, staticKeys(t), func(c *VerifierConfig) { c.CacheSize = cacheSize })
				for range 2 {
					c, err := v.Verify(context.Background(), tc.token, now)
					if got := codeOf(err); got != tc.want {
						t.Fatalf("cache %d: code = %q, want %q (err: %v)", cacheSize, got, tc.want, err)
					}
					if err == nil && c == nil {
						t.Fatal("nil claims without error")
					}
					if err != nil && strings.Contains(err.Error(), tc.token) && len(tc.token) > 10 {
						t.Fatal("error text contains the token")
					}
				}
			}
		})
	}
}

// swapPayload replaces the payload of a signed token, keeping header and signature.
func swapPayload(tok string, claims map[string]any) string {
	parts := strings.Split(tok, ".")
	p, _ := json.Marshal(claims)
	return parts[0] + "." + b64.EncodeToString(p) + "." + parts[2]
}

func TestVerifyReturnsClaims(t *testing.T) {
	t.Parallel()
	k := testKeys()
	v := newTestVerifier(t, staticKeys(t), nil)
	rows, cost := int64(100), 0.5
	tok := signWith(t, k.ec, with(baseClaims(),
		"aud", []string{"other", testAudience},
		"agent_id", nil,
		"scope", "project.alpha.orders",
		"constraints", map[string]any{"max_rows": rows, "max_cost": cost, "expiry": "2026-03-02T17:00:00Z"},
		"risk_score", 0.42,
		"run_id", "run-7",
		"single_use", true,
		"extra", "ignored",
	))
	got, err := v.Verify(context.Background(), tok, t0)
	if err != nil {
		t.Fatal(err)
	}
	want := &Claims{
		Issuer:        testIssuer,
		Subject:       "demo-agent",
		Audience:      []string{"other", testAudience},
		ExpiresAt:     t0.Add(5 * time.Minute),
		IssuedAt:      t0,
		NotBefore:     t0,
		ID:            "jti-1",
		AgentID:       "demo-agent",
		Tool:          "db.read",
		Scope:         "project.alpha.orders",
		Constraints:   Constraints{MaxRows: &rows, MaxCost: &cost, Expiry: "2026-03-02T17:00:00Z"},
		RiskScore:     0.42,
		PolicyVersion: "v1",
		RunID:         "run-7",
		SingleUse:     true,
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("claims (-want +got):\n%s", d)
	}
	// A cached hit returns the same claims, in a fresh struct.
	again, err := v.Verify(context.Background(), tok, t0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, again); d != "" {
		t.Errorf("cached claims (-want +got):\n%s", d)
	}
	if again == got {
		t.Error("cache returned the same *Claims twice; callers could alter each other's view")
	}
}

func TestForbiddenHeadersCauseNoIO(t *testing.T) {
	t.Parallel()
	k := testKeys()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		jw, _ := PublicJWKS(mustSigner(t, k.ed), mustSigner(t, k.ed2))
		w.Write(jw)
	}))
	defer srv.Close()
	src, err := NewJWKSURL(JWKSURLConfig{URL: srv.URL + "/jwks.json", Client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A FIFO: opening it for reading blocks until a writer appears, so a verifier
	// that tried to read a jku/x5u file would hang here instead of returning.
	fifo := filepath.Join(t.TempDir(), "keys.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	v := newTestVerifier(t, src, nil)
	before := hits.Load()

	attackerJWK := map[string]any{"kty": "OKP", "crv": "Ed25519", "kid": "attacker", "x": b64.EncodeToString(k.ed2.pub().(ed25519.PublicKey))}
	cases := map[string][]any{
		"jku to the JWKS server": {"jku", srv.URL + "/jwks.json", "kid", "attacker"},
		"jku to a file":          {"jku", "file://" + fifo, "kid", "attacker"},
		"x5u to the server":      {"x5u", srv.URL + "/cert.pem", "kid", "attacker"},
		"x5u to a file":          {"x5u", "file://" + fifo},
		"jwk embedded":           {"jwk", attackerJWK, "kid", "attacker"},
		"x5c embedded":           {"x5c", []string{"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"}},
		"jku with a valid kid":   {"jku", srv.URL + "/jwks.json"},
	}
	for name, hdr := range cases {
		t.Run(name, func(t *testing.T) {
			tok := signWith(t, k.ed2, baseClaims(), hdr...)
			_, err := v.Verify(context.Background(), tok, t0)
			if got := codeOf(err); got != reason.TokenForbiddenHdr {
				t.Fatalf("code = %q, want %q", got, reason.TokenForbiddenHdr)
			}
		})
	}
	if got := hits.Load(); got != before {
		t.Errorf("JWKS server hit %d times by tokens with forbidden headers", got-before)
	}
	// Nobody holds the FIFO open for reading: a non-blocking open for writing fails with ENXIO.
	if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Close()
		t.Error("someone has the FIFO open for reading")
	}
}

// Not parallel: allocation counts are process-wide, so other tests would add to them.
func TestVerifyTooLargeIsBounded(t *testing.T) {
	v := newTestVerifier(t, staticKeys(t), nil)
	huge := "Bearer-" + strings.Repeat("eyJhbGciOiJFZERTQSJ9.", 1<<20/21)
	if len(huge) < 1<<20-64 {
		t.Fatalf("test token only %d bytes", len(huge))
	}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := v.Verify(ctx, huge, t0); codeOf(err) != reason.TokenTooLarge {
			t.Fatalf("code = %q, want %q", codeOf(err), reason.TokenTooLarge)
		}
	})
	if allocs > 4 {
		t.Errorf("%v allocations per 1 MB rejection, want <= 4", allocs)
	}
	const runs = 100
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		_, _ = v.Verify(ctx, huge, t0)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 64<<10 {
		t.Errorf("%d bytes allocated per 1 MB rejection, want < 64 KiB", per)
	}
}

func TestVerifyKeyTypeMustMatchAlg(t *testing.T) {
	t.Parallel()
	// A key source that hands out the same key whatever the kid and alg: the
	// verifier itself must refuse to use an RSA key for ES256 or EdDSA, and so on.
	k := testKeys()
	tests := map[string]struct {
		key   any
		token string
	}{
		"RSA key, ES256 token": {k.rsa.pub(), signWith(t, k.ec, baseClaims())},
		"RSA key, EdDSA token": {k.rsa.pub(), signWith(t, k.ed, baseClaims())},
		"EC key, RS256 token":  {k.ec.pub(), signWith(t, k.rsa, baseClaims())},
		"Ed key, ES256 token":  {k.ed.pub(), signWith(t, k.ec, baseClaims())},
		"EC key, EdDSA token":  {k.ec.pub(), signWith(t, k.ed, baseClaims())},
		"raw bytes, EdDSA":     {[]byte(k.ed.pub().(ed25519.PublicKey)), signWith(t, k.ed, baseClaims())},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := newTestVerifier(t, fixedKey{tc.key}, nil)
			_, err := v.Verify(context.Background(), tc.token, t0)
			if got := codeOf(err); got != reason.TokenAlgorithm {
				t.Fatalf("code = %q, want %q (%v)", got, reason.TokenAlgorithm, err)
			}
		})
	}
}

func TestCheckRoute(t *testing.T) {
	t.Parallel()
	v := newTestVerifier(t, staticKeys(t), nil)
	c, err := v.Verify(context.Background(), signWith(t, testKeys().ed, baseClaims()), t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.CheckRoute(c, "db.read"); err != nil {
		t.Errorf("same tool: %v", err)
	}
	for _, tool := range []string{"db.write", "", "DB.READ", "db.read "} {
		if got := codeOf(v.CheckRoute(c, tool)); got != reason.TokenToolMismatch {
			t.Errorf("route tool %q: code %q, want %q", tool, got, reason.TokenToolMismatch)
		}
	}
	if got := codeOf(v.CheckRoute(nil, "db.read")); got != reason.TokenToolMismatch {
		t.Errorf("nil claims: code %q", got)
	}
}

func TestNewVerifierConfig(t *testing.T) {
	t.Parallel()
	_, err := NewVerifier(VerifierConfig{MaxLifetime: -1, AcceptedPolicyVersions: []string{""}})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"Issuer", "Audience", "Keys", "MaxLifetime", "AcceptedPolicyVersions"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	v := newTestVerifier(t, staticKeys(t), nil)
	if v.rules.maxLifetime != DefaultMaxLifetime || v.rules.leeway != DefaultLeeway || v.core.maxBytes != DefaultMaxTokenBytes || v.cache == nil {
		t.Errorf("defaults not applied: %+v %+v", v.rules, v.core)
	}
}

func TestCache(t *testing.T) {
	t.Parallel()
	k := testKeys()
	ctx := context.Background()

	t.Run("hit skips the key source and still expires", func(t *testing.T) {
		keys := &countingKeys{KeySource: staticKeys(t)}
		v := newTestVerifier(t, keys, nil)
		tok := signWith(t, k.ed, baseClaims())
		for i := range 3 {
			if _, err := v.Verify(ctx, tok, t0.Add(time.Duration(i)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		if n := keys.n.Load(); n != 1 {
			t.Errorf("key source called %d times, want 1 (later calls should hit the cache)", n)
		}
		_, err := v.Verify(ctx, tok, t0.Add(5*time.Minute+DefaultLeeway))
		if got := codeOf(err); got != reason.TokenExpired {
			t.Errorf("cached token after exp: code %q, want %q", got, reason.TokenExpired)
		}
		_, err = v.Verify(ctx, tok, t0.Add(-time.Minute))
		if got := codeOf(err); got != reason.TokenNotYetValid {
			t.Errorf("cached token before nbf: code %q, want %q", got, reason.TokenNotYetValid)
		}
	})

	t.Run("cached token not valid for another verifier config", func(t *testing.T) {
		keys := staticKeys(t)
		a := newTestVerifier(t, keys, nil)
		tok := signWith(t, k.ed, baseClaims())
		if _, err := a.Verify(ctx, tok, t0); err != nil {
			t.Fatal(err)
		}
		others := map[string]struct {
			mod  func(*VerifierConfig)
			want reason.Code
		}{
			"other audience":         {func(c *VerifierConfig) { c.Audience = "other" }, reason.TokenAudience},
			"other issuer":           {func(c *VerifierConfig) { c.Issuer = "https://other.test" }, reason.TokenIssuer},
			"other policy versions":  {func(c *VerifierConfig) { c.AcceptedPolicyVersions = []string{"v9"} }, reason.TokenPolicyVersion},
			"shorter max lifetime":   {func(c *VerifierConfig) { c.MaxLifetime = time.Minute }, reason.TokenLifetime},
			"keys without the kid":   {func(c *VerifierConfig) { c.Keys = mustStatic(t, k.ec) }, reason.TokenUnknownKey},
			"no leeway, after exp":   {func(c *VerifierConfig) { c.Leeway = -1 }, ""},
			"smaller max token size": {func(c *VerifierConfig) { c.MaxTokenBytes = 64 }, reason.TokenTooLarge},
		}
		for name, o := range others {
			b := newTestVerifier(t, keys, o.mod)
			_, err := b.Verify(ctx, tok, t0)
			if got := codeOf(err); got != o.want {
				t.Errorf("%s: code %q, want %q", name, got, o.want)
			}
		}
		// And A still accepts it from its cache.
		if _, err := a.Verify(ctx, tok, t0); err != nil {
			t.Errorf("original verifier: %v", err)
		}
	})

	t.Run("cached and cold agree at every instant", func(t *testing.T) {
		tok := signWith(t, k.ed, with(baseClaims(),
			"iat", t0.Add(-time.Minute).Unix(),
			"nbf", t0.Unix(),
			"exp", t0.Add(10*time.Minute).Unix(),
			"constraints", map[string]any{"expiry": t0.Add(4 * time.Minute).Format(time.RFC3339)}))
		cold := newTestVerifier(t, staticKeys(t), func(c *VerifierConfig) { c.CacheSize = -1 })
		warm := newTestVerifier(t, staticKeys(t), nil)
		if _, err := warm.Verify(ctx, tok, t0); err != nil {
			t.Fatal(err)
		}
		for d := -2 * time.Minute; d <= 12*time.Minute; d += 10 * time.Second {
			now := t0.Add(d)
			_, errC := cold.Verify(ctx, tok, now)
			_, errW := warm.Verify(ctx, tok, now)
			if codeOf(errC) != codeOf(errW) {
				t.Errorf("at t0%+v: cold %q, cached %q", d, codeOf(errC), codeOf(errW))
			}
		}
	})

	t.Run("bounded", func(t *testing.T) {
		v := newTestVerifier(t, staticKeys(t), func(c *VerifierConfig) { c.CacheSize = 32 })
		for i := range 500 {
			tok := signWith(t, k.ed, with(baseClaims(), "jti", fmt.Sprint("j", i)))
			if _, err := v.Verify(ctx, tok, t0); err != nil {
				t.Fatal(err)
			}
		}
		if n := v.cache.len(); n > 32 || n < 16 {
			t.Errorf("cache holds %d entries, want between 16 and 32", n)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		v := newTestVerifier(t, staticKeys(t), func(c *VerifierConfig) { c.CacheSize = 16 })
		toks := make([]string, 40)
		for i := range toks {
			toks[i] = signWith(t, k.ed, with(baseClaims(), "jti", fmt.Sprint("c", i)))
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Go(func() {
				for i := range 200 {
					if _, err := v.Verify(ctx, toks[(g*7+i)%len(toks)], t0); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestHMACHelperSanity(t *testing.T) {
	t.Parallel()
	// The HS256 forgery cases are only meaningful if craft really produces HMAC
	// signatures: check one by hand.
	tok := hs256WithKey(t, []byte("k"), map[string]any{"alg": "HS256"}, map[string]any{})
	parts := strings.Split(tok, ".")
	m := hmac.New(sha256.New, []byte("k"))
	m.Write([]byte(parts[0] + "." + parts[1]))
	if b64.EncodeToString(m.Sum(nil)) != parts[2] {
		t.Fatal("craft does not produce HS256 signatures")
	}
}
