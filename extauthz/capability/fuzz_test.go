package capability

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// FuzzVerify: no input panics, and no input verifies unless it carries exactly
// the claims of a token signed by a configured key. The originals are the only
// tokens those keys ever signed, so any success must return one of them.
func FuzzVerify(f *testing.F) {
	k := testKeys()
	keys := staticKeys(f)
	cold := newTestVerifier(f, keys, func(c *VerifierConfig) { c.CacheSize = -1 })
	warm := newTestVerifier(f, keys, func(c *VerifierConfig) { c.CacheSize = 64 })
	ctx := context.Background()

	originals := map[string]*Claims{} // by jti
	for i, kp := range []testKeyPair{k.ed, k.ec, k.rsa} {
		for j, claims := range []map[string]any{
			baseClaims(),
			with(baseClaims(), "aud", []string{"x", testAudience}, "constraints", map[string]any{"max_rows": 5, "expiry": t0.Add(time.Minute).Format(time.RFC3339)}),
		} {
			with(claims, "jti", kp.alg+string(rune('a'+j)))
			tok := signWith(f, kp, claims)
			c, err := cold.Verify(ctx, tok, t0)
			if err != nil {
				f.Fatalf("seed %d/%d: %v", i, j, err)
			}
			originals[c.ID] = c
			f.Add(tok)
			// Seeds for the interesting neighbours: a flipped signature, a truncated
			// token, a swapped payload, forbidden headers, alg none, HS256.
			f.Add(tok[:len(tok)-2] + "AA")
			f.Add(tok[:strings.LastIndexByte(tok, '.')+1])
			f.Add(swapPayload(tok, with(baseClaims(), "tool", "shell.exec")))
		}
	}
	f.Add(signWith(f, k.ed2, baseClaims(), "kid", k.ed.kid))
	f.Add(signWith(f, k.ed, baseClaims(), "jku", "https://attacker.test/jwks"))
	f.Add(craft(f, nil, nil, map[string]any{"alg": "none", "kid": k.ed.kid}, baseClaims()))
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.e30")

	f.Fuzz(func(t *testing.T, raw string) {
		for name, v := range map[string]*Verifier{"cold": cold, "warm": warm} {
			c, err := v.Verify(ctx, raw, t0)
			if err != nil {
				if codeOf(err) == "not-a-reason-error" {
					t.Fatalf("%s: error is not a *reason.Error: %v", name, err)
				}
				continue
			}
			want, ok := originals[c.ID]
			if !ok {
				t.Fatalf("%s: accepted a token with jti %q that no configured key signed", name, c.ID)
			}
			if d := cmp.Diff(want, c); d != "" {
				t.Fatalf("%s: accepted claims differ from the signed ones (-signed +accepted):\n%s", name, d)
			}
		}
	})
}

// FuzzParseJWKS: a JWKS from a file or URL never panics the parser, and every key
// it returns is usable with exactly the algorithm it is pinned to.
func FuzzParseJWKS(f *testing.F) {
	k := testKeys()
	f.Add(jwksOf(f, k.ed, k.ec, k.rsa))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := parseJWKS(data)
		if err != nil {
			return
		}
		for kid, pk := range keys {
			if err := checkKeyForAlg(pk.key, pk.alg); err != nil {
				t.Fatalf("kid %q: %v", kid, err)
			}
		}
	})
}
