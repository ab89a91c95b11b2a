package capability

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

func TestLoadOrCreateDevKey(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "home", ".aisecops", "dev-signing-key.pem")
	s1, created, err := LoadOrCreateDevKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Error("created = false for a new key")
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %v, want 0600", perm)
	}
	if dst, err := os.Stat(filepath.Dir(path)); err != nil || dst.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %v (%v), want 0700", dst.Mode().Perm(), err)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("key file is not a PKCS#8 PEM: %.30q", data)
	}
	if s1.Alg() != AlgEdDSA || len(s1.KeyID()) != kidLen {
		t.Errorf("alg %s kid %q", s1.Alg(), s1.KeyID())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".devkey-*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}

	// The second call loads the same key: `aisecops token` and `aisecops all`
	// agree without flags.
	s2, created, err := LoadOrCreateDevKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("created = true for an existing key")
	}
	if s1.KeyID() != s2.KeyID() || !s1.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(s2.Public()) {
		t.Error("reloaded key differs")
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateDevKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key: err = %v", err)
	}
}

func TestLoadSignerFile(t *testing.T) {
	t.Parallel()
	k := testKeys()
	dir := t.TempDir()
	pemOf := func(typ string, der []byte) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	}
	ecPriv := k.ec.priv.(*ecdsa.PrivateKey)
	rsaPriv := k.rsa.priv.(*rsa.PrivateKey)
	pkcs8 := func(key any) ([]byte, error) { return x509.MarshalPKCS8PrivateKey(key) }
	tests := map[string]struct {
		data    []byte
		wantAlg string
		wantPub crypto.PublicKey
	}{
		"Ed25519 PKCS#8": {pemOf("PRIVATE KEY", mustDER(pkcs8(k.ed.priv))), AlgEdDSA, k.ed.pub()},
		"P-256 PKCS#8":   {pemOf("PRIVATE KEY", mustDER(pkcs8(ecPriv))), AlgES256, k.ec.pub()},
		"P-256 SEC 1":    {pemOf("EC PRIVATE KEY", mustDER(x509.MarshalECPrivateKey(ecPriv))), AlgES256, k.ec.pub()},
		"RSA PKCS#1":     {pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaPriv)), AlgRS256, k.rsa.pub()},
		"RSA PKCS#8":     {pemOf("PRIVATE KEY", mustDER(pkcs8(rsaPriv))), AlgRS256, k.rsa.pub()},
		"not PEM":        {data: []byte("hello")},
		"public key PEM": {data: pemOf("PUBLIC KEY", mustDER(x509.MarshalPKIXPublicKey(k.ed.pub())))},
		"garbage DER":    {data: pemOf("PRIVATE KEY", []byte{1, 2, 3})},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".pem")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := LoadSignerFile(path)
			if tc.wantAlg == "" {
				if err == nil {
					t.Fatal("loaded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Alg() != tc.wantAlg || !tc.wantPub.(interface{ Equal(crypto.PublicKey) bool }).Equal(s.Public()) {
				t.Errorf("alg %s, key mismatch", s.Alg())
			}
		})
	}
	if _, err := LoadSignerFile(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("missing file loaded")
	}
}

func mustDER(der []byte, err error) []byte {
	must(err)
	return der
}

func TestMintVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	k := testKeys()
	ctx := context.Background()
	keys := staticKeys(t)
	v := newTestVerifier(t, keys, nil)
	rows := int64(100)
	now := t0.Add(1234 * time.Millisecond) // not on a second: Mint truncates
	for _, kp := range []testKeyPair{k.ed, k.ec, k.rsa} {
		t.Run(kp.alg, func(t *testing.T) {
			s := mustSigner(t, kp)
			tok, claims, err := Mint(s, MintRequest{
				Issuer: testIssuer, Audience: testAudience, Agent: "demo-agent", Tool: "db.write",
				Scope: "project.alpha.orders", Constraints: Constraints{MaxRows: &rows}, RiskScore: 0.42,
				RunID: "run-1", TTL: 20 * time.Minute, PolicyVersion: "v2", SingleUse: true,
			}, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := claims.ExpiresAt.Sub(claims.IssuedAt); got != DefaultMaxLifetime {
				t.Errorf("lifetime %v: TTL over MaxTTL must be capped to %v", got, DefaultMaxLifetime)
			}
			if len(claims.ID) != 22 {
				t.Errorf("jti %q is not 128 bits of base64url", claims.ID)
			}
			got, err := v.Verify(ctx, tok, now)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(claims, got); d != "" {
				t.Errorf("verified claims differ from minted (-minted +verified):\n%s", d)
			}
			if err := v.CheckRoute(got, "db.write"); err != nil {
				t.Error(err)
			}
		})
	}

	// Two mints never share a jti.
	s := mustSigner(t, k.ed)
	_, c1, _ := Mint(s, MintRequest{Issuer: "i", Audience: "a", Agent: "x", Tool: "t"}, now)
	_, c2, _ := Mint(s, MintRequest{Issuer: "i", Audience: "a", Agent: "x", Tool: "t"}, now)
	if c1.ID == c2.ID {
		t.Error("repeated jti")
	}
	if got := c1.ExpiresAt.Sub(c1.IssuedAt); got != DefaultTTL {
		t.Errorf("default TTL %v, want %v", got, DefaultTTL)
	}
}

func TestMintRejects(t *testing.T) {
	t.Parallel()
	s := mustSigner(t, testKeys().ed)
	ok := MintRequest{Issuer: "i", Audience: "a", Agent: "x", Tool: "t"}
	tests := map[string]func(*MintRequest){
		"no issuer":      func(r *MintRequest) { r.Issuer = "" },
		"no audience":    func(r *MintRequest) { r.Audience = "" },
		"no agent":       func(r *MintRequest) { r.Agent = "" },
		"no tool":        func(r *MintRequest) { r.Tool = "" },
		"negative TTL":   func(r *MintRequest) { r.TTL = -time.Second },
		"sub-second TTL": func(r *MintRequest) { r.TTL = time.Millisecond },
		"bad expiry":     func(r *MintRequest) { r.Constraints.Expiry = "soon" },
	}
	for name, mod := range tests {
		r := ok
		mod(&r)
		if _, _, err := Mint(s, r, t0); err == nil {
			t.Errorf("%s: minted", name)
		}
	}
	if _, _, err := Mint(nil, ok, t0); err == nil {
		t.Error("nil signer: minted")
	}
}

func TestDevKeyTokenVerifiesThroughPublishedJWKS(t *testing.T) {
	t.Parallel()
	// The flow `aisecops all` + `aisecops token` rely on: the dev key's public
	// JWKS, read back as a JWKS file, verifies tokens minted with the dev key.
	dir := t.TempDir()
	s, _, err := LoadOrCreateDevKey(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	jw, err := PublicJWKS(s)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "jwks.json"), jw)
	src, err := NewJWKSFile(filepath.Join(dir, "jwks.json"))
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, src, func(c *VerifierConfig) { c.AcceptedPolicyVersions = nil })
	tok, _, err := Mint(s, MintRequest{Issuer: testIssuer, Audience: testAudience, Agent: "demo-agent", Tool: "db.read"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), tok, t0); err != nil {
		t.Fatal(err)
	}
}

func TestWorkloadVerifier(t *testing.T) {
	t.Parallel()
	k := testKeys()
	ctx := context.Background()
	const issuer, aud = "https://kubernetes.default.svc.cluster.local", "aisecops-token-service"
	keys := mustStatic(t, k.rsa, k.ec)
	wv, err := NewWorkloadVerifier(WorkloadConfig{Issuer: issuer, Audience: aud, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	sa := func() map[string]any {
		return map[string]any{
			"iss": issuer, "aud": []string{aud}, "sub": "system:serviceaccount:agents:demo-agent",
			"iat": t0.Unix(), "nbf": t0.Unix(), "exp": t0.Add(time.Hour).Unix(),
			"kubernetes.io": map[string]any{
				"namespace":      "agents",
				"serviceaccount": map[string]any{"name": "demo-agent", "uid": "u1"},
				"pod":            map[string]any{"name": "demo-agent-7d9", "uid": "u2"},
			},
		}
	}
	got, err := wv.Verify(ctx, signWith(t, k.rsa, sa()), t0)
	if err != nil {
		t.Fatal(err)
	}
	want := &WorkloadIdentity{
		Subject: "system:serviceaccount:agents:demo-agent", Issuer: issuer, Audience: []string{aud},
		ExpiresAt: t0.Add(time.Hour), Namespace: "agents", ServiceAccount: "demo-agent", Pod: "demo-agent-7d9",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("identity (-want +got):\n%s", d)
	}

	tests := map[string]struct {
		token string
		want  reason.Code
	}{
		"wrong audience":        {signWith(t, k.ec, with(sa(), "aud", testAudience)), reason.TokenAudience},
		"wrong issuer":          {signWith(t, k.ec, with(sa(), "iss", testIssuer)), reason.TokenIssuer},
		"expired":               {signWith(t, k.ec, with(sa(), "iat", t0.Add(-2*time.Hour).Unix(), "nbf", nil, "exp", t0.Add(-time.Hour).Unix())), reason.TokenExpired},
		"two days":              {signWith(t, k.ec, with(sa(), "exp", t0.Add(48*time.Hour).Unix())), reason.TokenLifetime},
		"no exp (legacy token)": {signWith(t, k.ec, with(sa(), "exp", nil)), reason.TokenLifetime},
		"jku header":            {signWith(t, k.ec, sa(), "jku", "https://x.test/jwks"), reason.TokenForbiddenHdr},
		"unknown key":           {signWith(t, k.ed, sa()), reason.TokenUnknownKey},
		"alg none":              {craft(t, nil, nil, map[string]any{"alg": "none"}, sa()), reason.TokenAlgorithm},
		"no subject":            {signWith(t, k.ec, with(sa(), "sub", nil)), reason.TokenClaims},
	}
	for name, tc := range tests {
		if _, err := wv.Verify(ctx, tc.token, t0); codeOf(err) != tc.want {
			t.Errorf("%s: code %q, want %q (%v)", name, codeOf(err), tc.want, err)
		}
	}

	// A workload credential is not a capability token, even under shared keys.
	v := newTestVerifier(t, keys, func(c *VerifierConfig) { c.Issuer, c.Audience = issuer, aud })
	if _, err := v.Verify(ctx, signWith(t, k.rsa, sa()), t0); codeOf(err) != reason.TokenLifetime {
		t.Errorf("workload credential as capability token: code %q (%v)", codeOf(err), err)
	}
	if _, err := NewWorkloadVerifier(WorkloadConfig{}); err == nil {
		t.Error("empty workload config accepted")
	}
}
