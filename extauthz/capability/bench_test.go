package capability

import (
	"context"
	"crypto/ed25519"
	"strings"
	"testing"
)

func benchVerify(b *testing.B, kp testKeyPair, cacheSize int) {
	v := newTestVerifier(b, staticKeys(b), func(c *VerifierConfig) { c.CacheSize = cacheSize })
	tok := signWith(b, kp, baseClaims())
	ctx := context.Background()
	if _, err := v.Verify(ctx, tok, t0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCold is a full verification (cache disabled): target <= 80 µs.
func BenchmarkVerifyCold(b *testing.B) { benchVerify(b, testKeys().ed, -1) }

// BenchmarkVerifyWarm is a cache hit: target <= 2 µs.
func BenchmarkVerifyWarm(b *testing.B) { benchVerify(b, testKeys().ed, DefaultCacheSize) }

func BenchmarkVerifyES256Cold(b *testing.B) { benchVerify(b, testKeys().ec, -1) }

func BenchmarkVerifyRS256Cold(b *testing.B) { benchVerify(b, testKeys().rsa, -1) }

// BenchmarkVerifyTooLarge is the cost of refusing a 1 MB bearer string.
func BenchmarkVerifyTooLarge(b *testing.B) {
	v := newTestVerifier(b, staticKeys(b), nil)
	huge := strings.Repeat("a", 1<<20)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = v.Verify(ctx, huge, t0)
	}
}

func BenchmarkMint(b *testing.B) {
	s := mustSigner(b, testKeys().ed)
	req := MintRequest{Issuer: testIssuer, Audience: testAudience, Agent: "demo-agent", Tool: "db.read", PolicyVersion: "v1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Mint(s, req, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineEd25519Verify is the bare signature check, so the figures
// above can be read against what the machine's crypto costs (shared CI cores vary).
func BenchmarkBaselineEd25519Verify(b *testing.B) {
	tok := signWith(b, testKeys().ed, baseClaims())
	dot := strings.LastIndexByte(tok, '.')
	sig, err := b64.DecodeString(tok[dot+1:])
	if err != nil {
		b.Fatal(err)
	}
	msg := []byte(tok[:dot])
	pub := testKeys().ed.pub().(ed25519.PublicKey)
	b.ReportAllocs()
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("bad signature")
		}
	}
}
