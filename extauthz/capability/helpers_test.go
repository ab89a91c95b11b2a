package capability

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

const (
	testIssuer   = "https://aisecops.test"
	testAudience = "aisecops-authz"
)

// t0 is the tests' clock: every token and every Verify uses it or an offset of it.
var t0 = time.Date(2026, 3, 2, 16, 0, 0, 0, time.UTC)

// testKeyPair is one private key and the kid it is published under.
type testKeyPair struct {
	kid  string
	alg  string
	priv crypto.Signer
}

func (k testKeyPair) pub() crypto.PublicKey { return k.priv.Public() }

type testKeySet struct {
	ed, ed2, ec, rsa testKeyPair
}

// testKeys are generated once per test binary: RSA generation is slow.
var testKeys = sync.OnceValue(func() testKeySet {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	must(err)
	_, ed2, err := ed25519.GenerateKey(rand.Reader)
	must(err)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	return testKeySet{
		ed:  testKeyPair{kid: "ed-1", alg: AlgEdDSA, priv: ed},
		ed2: testKeyPair{kid: "ed-2", alg: AlgEdDSA, priv: ed2},
		ec:  testKeyPair{kid: "ec-1", alg: AlgES256, priv: ec},
		rsa: testKeyPair{kid: "rsa-1", alg: AlgRS256, priv: rk},
	}
})

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// staticKeys configures the ed, ec and rsa test keys (not ed2).
func staticKeys(t testing.TB) *StaticKeys {
	t.Helper()
	k := testKeys()
	s, err := NewStaticKeys(map[string]crypto.PublicKey{
		k.ed.kid:  k.ed.pub(),
		k.ec.kid:  k.ec.pub(),
		k.rsa.kid: k.rsa.pub(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newTestVerifier(t testing.TB, keys KeySource, mod func(*VerifierConfig)) *Verifier {
	t.Helper()
	cfg := VerifierConfig{
		Issuer:                 testIssuer,
		Audience:               testAudience,
		Keys:                   keys,
		AcceptedPolicyVersions: []string{"v1", "v2"},
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// baseClaims is a valid payload at t0 (lifetime 5m).
func baseClaims() map[string]any {
	return map[string]any{
		"iss":            testIssuer,
		"sub":            "demo-agent",
		"aud":            testAudience,
		"iat":            t0.Unix(),
		"nbf":            t0.Unix(),
		"exp":            t0.Add(5 * time.Minute).Unix(),
		"jti":            "jti-1",
		"agent_id":       "demo-agent",
		"tool":           "db.read",
		"policy_version": "v1",
	}
}

func with(m map[string]any, kv ...any) map[string]any {
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(m, k)
			continue
		}
		m[k] = kv[i+1]
	}
	return m
}

// craft signs an arbitrary header and payload with key under method, so tests
// can build tokens no Signer would.
func craft(t testing.TB, method jwt.SigningMethod, key any, header map[string]any, claims any) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(p)
	if method == nil {
		return input + "."
	}
	sig, err := method.Sign(input, key)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64.EncodeToString(sig)
}

// signWith signs claims with a test key under its own alg and kid, plus extra header fields.
func signWith(t testing.TB, k testKeyPair, claims any, extraHdr ...any) string {
	t.Helper()
	hdr := map[string]any{"alg": k.alg, "kid": k.kid, "typ": "JWT"}
	with(hdr, extraHdr...)
	return craft(t, methods[k.alg], k.priv, hdr, claims)
}

func codeOf(err error) reason.Code {
	if err == nil {
		return ""
	}
	var re *reason.Error
	if !errors.As(err, &re) {
		return "not-a-reason-error"
	}
	return re.Code
}

// countingKeys counts lookups, to see whether a Verify reached the key source.
type countingKeys struct {
	KeySource
	n atomic.Int64
}

func (c *countingKeys) Key(ctx context.Context, kid, alg string) (crypto.PublicKey, error) {
	c.n.Add(1)
	return c.KeySource.Key(ctx, kid, alg)
}

// fixedKey returns key for every kid and alg, as a careless key source would; the
// verifier must still refuse a key of the wrong type for the alg.
type fixedKey struct{ key crypto.PublicKey }

func (f fixedKey) Key(context.Context, string, string) (crypto.PublicKey, error) { return f.key, nil }

func mustSigner(t testing.TB, k testKeyPair) Signer {
	t.Helper()
	s, err := NewSigner(k.priv, k.kid)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustStatic(t testing.TB, keys ...testKeyPair) *StaticKeys {
	t.Helper()
	m := make(map[string]crypto.PublicKey, len(keys))
	for _, k := range keys {
		m[k.kid] = k.pub()
	}
	s, err := NewStaticKeys(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
