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
	"fmt"
	"math/big"
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

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

func jwksOf(t testing.TB, keys ...testKeyPair) []byte {
	t.Helper()
	signers := make([]Signer, len(keys))
	for i, k := range keys {
		signers[i] = mustSigner(t, k)
	}
	b, err := PublicJWKS(signers...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	// Write then rename, as a config management tool would, so a Reload never
	// sees a half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestPublicJWKSRoundTrip(t *testing.T) {
	t.Parallel()
	k := testKeys()
	data := jwksOf(t, k.ed, k.ec, k.rsa)
	got, err := ParseJWKS(data)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]crypto.PublicKey{k.ed.kid: k.ed.pub(), k.ec.kid: k.ec.pub(), k.rsa.kid: k.rsa.pub()}
	if len(got) != len(want) {
		t.Fatalf("got %d keys, want %d", len(got), len(want))
	}
	for kid, w := range want {
		g, ok := got[kid]
		if !ok || !w.(interface{ Equal(crypto.PublicKey) bool }).Equal(g) {
			t.Errorf("kid %s: key differs after the round trip", kid)
		}
	}
	if _, err := PublicJWKS(mustSigner(t, k.ed), mustSigner(t, k.ed)); err == nil {
		t.Error("PublicJWKS accepted a repeated kid")
	}
}

func TestParseJWKS(t *testing.T) {
	t.Parallel()
	k := testKeys()
	edX := b64.EncodeToString(k.ed.pub().(ed25519.PublicKey))
	ecPt, _ := k.ec.pub().(*ecdsa.PublicKey).Bytes()
	ecX, ecY := b64.EncodeToString(ecPt[1:33]), b64.EncodeToString(ecPt[33:])
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384Pt, _ := p384.PublicKey.Bytes()
	offCurveY := []byte(ecPt[33:])
	offCurveY = append([]byte(nil), offCurveY...)
	offCurveY[31] ^= 1

	tests := []struct {
		name     string
		json     string
		wantKids []string // nil with wantErr
		wantErr  string
	}{
		{name: "Ed25519", json: fmt.Sprintf(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":%q}]}`, edX), wantKids: []string{"a"}},
		{name: "P-256 with alg and use", json: fmt.Sprintf(`{"keys":[{"kty":"EC","crv":"P-256","kid":"e","alg":"ES256","use":"sig","x":%q,"y":%q}]}`, ecX, ecY), wantKids: []string{"e"}},
		{name: "empty set", json: `{"keys":[]}`, wantKids: []string{}},
		{name: "skips unsupported kinds", json: fmt.Sprintf(`{"keys":[
			{"kty":"oct","kid":"h","k":"c2VjcmV0"},
			{"kty":"EC","crv":"P-384","kid":"p384","x":%q,"y":%q},
			{"kty":"OKP","crv":"X25519","kid":"x","x":%q},
			{"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":%q},
			{"kty":"OKP","crv":"Ed25519","x":%q},
			{"kty":"RSA","kid":"rs384","alg":"RS384","n":%q,"e":"AQAB"},
			{"kty":"OKP","crv":"Ed25519","kid":"ok","x":%q}]}`,
			b64.EncodeToString(p384Pt[1:49]), b64.EncodeToString(p384Pt[49:]), edX, edX, edX,
			b64.EncodeToString(k.rsa.pub().(*rsa.PublicKey).N.Bytes()), edX), wantKids: []string{"ok"}},

		{name: "not JSON", json: `{`, wantErr: "jwks"},
		{name: "no keys member", json: `{}`, wantErr: "no \"keys\""},
		{name: "trailing data", json: `{"keys":[]} {}`, wantErr: "trailing"},
		{name: "repeated kid", json: fmt.Sprintf(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":%q},{"kty":"OKP","crv":"Ed25519","kid":"a","x":%q}]}`, edX, edX), wantErr: "twice"},
		{name: "private key published", json: fmt.Sprintf(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":%q,"d":%q}]}`, edX, edX), wantErr: "private"},
		{name: "short Ed25519 key", json: `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"AAAA"}]}`, wantErr: "Ed25519"},
		{name: "P-256 point off the curve", json: fmt.Sprintf(`{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":%q,"y":%q}]}`, ecX, b64.EncodeToString(offCurveY)), wantErr: "P-256"},
		{name: "RSA 1024", json: fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"r","n":%q,"e":"AQAB"}]}`, b64.EncodeToString(weak.N.Bytes())), wantErr: "1024 bits"},
		{name: "RSA even exponent", json: fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"r","n":%q,"e":"Ag"}]}`, b64.EncodeToString(k.rsa.pub().(*rsa.PublicKey).N.Bytes())), wantErr: "exponent"},
		{name: "padded base64", json: fmt.Sprintf(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":%q}]}`, edX+"="), wantErr: "Ed25519"},
		{name: "member of the wrong type", json: `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":5,"x":"a"}]}`, wantErr: "key 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseJWKS([]byte(tc.json))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			kids := []string{}
			for kid := range got {
				kids = append(kids, kid)
			}
			if d := cmp.Diff(tc.wantKids, kids); d != "" {
				t.Errorf("kids (-want +got):\n%s", d)
			}
		})
	}
}

func TestNewStaticKeysRejectsWeakAndOddKeys(t *testing.T) {
	t.Parallel()
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.PublicKey{
		"RSA 1024":     &weak.PublicKey,
		"P-384":        &p384.PublicKey,
		"HMAC secret":  []byte("secret"),
		"short ed key": ed25519.PublicKey{1, 2, 3},
		"RSA no N":     &rsa.PublicKey{E: 65537},
		"big RSA":      &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 9000), E: 65537},
	} {
		if _, err := NewStaticKeys(map[string]crypto.PublicKey{"k": key}); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, err := NewStaticKeys(map[string]crypto.PublicKey{"": testKeys().ed.pub()}); err == nil {
		t.Error("empty kid accepted")
	}
}

func TestJWKSFileRotation(t *testing.T) {
	t.Parallel()
	k := testKeys()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFile(t, path, jwksOf(t, k.ed))
	src, err := NewJWKSFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, src, nil)
	oldTok := signWith(t, k.ed, baseClaims())
	newTok := signWith(t, k.ed2, baseClaims())
	if _, err := v.Verify(ctx, oldTok, t0); err != nil {
		t.Fatalf("old key before rotation: %v", err)
	}
	if _, err := v.Verify(ctx, newTok, t0); codeOf(err) != reason.TokenUnknownKey {
		t.Fatalf("new key before it is published: %v", err)
	}

	// Rotation, step 1: publish old + new; both verify.
	writeFile(t, path, jwksOf(t, k.ed, k.ed2))
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"old": oldTok, "new": newTok} {
		if _, err := v.Verify(ctx, tok, t0); err != nil {
			t.Errorf("%s key during rotation: %v", name, err)
		}
	}

	// A reload of unchanged keys keeps the cache (generation unchanged).
	gen := src.Generation()
	writeFile(t, path, jwksOf(t, k.ed, k.ed2))
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	if src.Generation() != gen {
		t.Error("generation changed on a reload of the same keys")
	}

	// Step 2: the old key is withdrawn. Its token was cached; it must still fail.
	writeFile(t, path, jwksOf(t, k.ed2))
	if err := src.ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, oldTok, t0); codeOf(err) != reason.TokenUnknownKey {
		t.Errorf("old key after removal: code %q, want %q", codeOf(err), reason.TokenUnknownKey)
	}
	if _, err := v.Verify(ctx, newTok, t0); err != nil {
		t.Errorf("new key after rotation: %v", err)
	}

	// A broken file keeps the last good keys.
	writeFile(t, path, []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"x","x":"broken"}]}`))
	if err := src.Reload(); err == nil {
		t.Error("broken JWKS reloaded without error")
	}
	if _, err := v.Verify(ctx, newTok, t0); err != nil {
		t.Errorf("last good keys lost after a failed reload: %v", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := src.Reload(); err == nil {
		t.Error("missing file reloaded without error")
	}
	if _, err := NewJWKSFile(path); err == nil {
		t.Error("NewJWKSFile of a missing file succeeded")
	}
}

// jwksServer serves a JWKS that the test can swap, counting requests.
type jwksServer struct {
	*httptest.Server
	hits   atomic.Int64
	mu     sync.Mutex
	body   []byte
	status int
}

func newJWKSServer(t *testing.T, body []byte) *jwksServer {
	s := &jwksServer{body: body, status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		body, status := s.body, s.status
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(body []byte, status int) {
	s.mu.Lock()
	s.body, s.status = body, status
	s.mu.Unlock()
}

// fakeClock is a settable clock for rate limiting.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestJWKSURL(t *testing.T) {
	t.Parallel()
	k := testKeys()
	ctx := context.Background()
	srv := newJWKSServer(t, jwksOf(t, k.ed))
	clock := &fakeClock{now: t0}
	src, err := NewJWKSURL(JWKSURLConfig{
		URL: srv.URL, Client: srv.Client(), MinRefreshInterval: time.Minute, MaxBytes: 64 << 10, Now: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, src, nil)
	oldTok := signWith(t, k.ed, baseClaims())
	newTok := signWith(t, k.ed2, baseClaims())

	// No keys yet: the first token triggers one fetch.
	if _, err := v.Verify(ctx, oldTok, t0); err != nil {
		t.Fatalf("first verify: %v", err)
	}
	if got := srv.hits.Load(); got != 1 {
		t.Fatalf("hits = %d after the first verify, want 1", got)
	}

	// Unknown kids are rate limited: many random kids in the interval cost nothing more.
	for i := range 20 {
		tok := signWith(t, k.ed2, baseClaims(), "kid", fmt.Sprint("random-", i))
		if _, err := v.Verify(ctx, tok, t0); codeOf(err) != reason.TokenUnknownKey {
			t.Fatalf("random kid: code %q", codeOf(err))
		}
	}
	clock.Add(time.Minute)
	if _, err := v.Verify(ctx, signWith(t, k.ed2, baseClaims(), "kid", "random-x"), t0); codeOf(err) != reason.TokenUnknownKey {
		t.Fatalf("random kid: code %q", codeOf(err))
	}
	if got := srv.hits.Load(); got != 2 {
		t.Fatalf("hits = %d after 21 unknown kids over two intervals, want 2", got)
	}

	// Rotation by unknown kid: the issuer publishes the new key; the first token
	// that uses it (after the interval) brings it in, and the old one still works.
	srv.set(jwksOf(t, k.ed, k.ed2), http.StatusOK)
	clock.Add(time.Minute)
	if _, err := v.Verify(ctx, newTok, t0); err != nil {
		t.Fatalf("new key after it was published: %v", err)
	}
	if _, err := v.Verify(ctx, oldTok, t0); err != nil {
		t.Fatalf("old key during rotation: %v", err)
	}

	// Failures keep the last good set.
	for name, resp := range map[string]struct {
		body   []byte
		status int
	}{
		"500":       {[]byte(`oops`), http.StatusInternalServerError},
		"not JSON":  {[]byte(`<html>`), http.StatusOK},
		"too large": {[]byte(`{"keys":[],"pad":"` + strings.Repeat("x", 64<<10) + `"}`), http.StatusOK},
	} {
		srv.set(resp.body, resp.status)
		if err := src.Refresh(ctx); err == nil {
			t.Errorf("%s: refresh succeeded", name)
		}
		if _, err := v.Verify(ctx, newTok, t0); err != nil {
			t.Errorf("%s: last good keys lost: %v", name, err)
		}
	}

	// The old key is withdrawn: after the refresh its (cached) token fails.
	srv.set(jwksOf(t, k.ed2), http.StatusOK)
	if err := src.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, oldTok, t0); codeOf(err) != reason.TokenUnknownKey {
		t.Errorf("old key after removal: code %q, want %q", codeOf(err), reason.TokenUnknownKey)
	}
	if _, err := v.Verify(ctx, newTok, t0); err != nil {
		t.Errorf("new key after removal of the old: %v", err)
	}
}

func TestJWKSURLConcurrentUnknownKids(t *testing.T) {
	t.Parallel()
	// Many concurrent tokens with unknown kids cause one fetch, not one each.
	k := testKeys()
	srv := newJWKSServer(t, jwksOf(t, k.ed))
	clock := &fakeClock{now: t0}
	src, err := NewJWKSURL(JWKSURLConfig{URL: srv.URL, Client: srv.Client(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			_, _ = src.Key(context.Background(), fmt.Sprint("nope-", i), AlgEdDSA)
		})
	}
	wg.Wait()
	if got := srv.hits.Load(); got != 1 {
		t.Errorf("hits = %d, want 1", got)
	}
}

func TestNewJWKSURLConfig(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "file:///etc/jwks.json", "/jwks.json", "https://"} {
		if _, err := NewJWKSURL(JWKSURLConfig{URL: u}); err == nil {
			t.Errorf("URL %q accepted", u)
		}
	}
	u, err := NewJWKSURL(JWKSURLConfig{URL: "https://issuer.test/jwks"})
	if err != nil {
		t.Fatal(err)
	}
	if u.cfg.Client == nil || u.cfg.MaxBytes != maxJWKSBytes || u.cfg.MinRefreshInterval != 30*time.Second {
		t.Errorf("defaults not applied: %+v", u.cfg)
	}
}

func TestKeySources(t *testing.T) {
	t.Parallel()
	k := testKeys()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFile(t, path, jwksOf(t, k.ed2, k.ed))
	file, err := NewJWKSFile(path)
	if err != nil {
		t.Fatal(err)
	}
	own := mustStatic(t, k.ec)
	v := newTestVerifier(t, KeySources{own, file}, nil)
	for _, kp := range []testKeyPair{k.ec, k.ed, k.ed2} {
		if _, err := v.Verify(ctx, signWith(t, kp, baseClaims()), t0); err != nil {
			t.Errorf("%s: %v", kp.kid, err)
		}
	}
	if _, err := v.Verify(ctx, signWith(t, k.rsa, baseClaims()), t0); codeOf(err) != reason.TokenUnknownKey {
		t.Errorf("unknown kid: code %q", codeOf(err))
	}
	// The EC kid exists (in the first source) but the token claims EdDSA.
	if _, err := v.Verify(ctx, signWith(t, k.ed, baseClaims(), "kid", k.ec.kid), t0); codeOf(err) != reason.TokenAlgorithm {
		t.Errorf("alg mismatch: code %q", codeOf(err))
	}
	// Rotation through the combined source still empties the cache.
	oldTok := signWith(t, k.ed, baseClaims())
	writeFile(t, path, jwksOf(t, k.ed2))
	if err := file.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, oldTok, t0); codeOf(err) != reason.TokenUnknownKey {
		t.Errorf("withdrawn key through KeySources: code %q", codeOf(err))
	}
	if _, err := (KeySources{}).Key(ctx, "x", AlgEdDSA); codeOf(err) != reason.TokenUnknownKey {
		t.Errorf("empty KeySources: code %q", codeOf(err))
	}
}

// The JWKS this package writes is plain RFC 7517 JSON another verifier can read.
func TestPublicJWKSShape(t *testing.T) {
	t.Parallel()
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(jwksOf(t, testKeys().ed), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("%d keys", len(set.Keys))
	}
	got := set.Keys[0]
	delete(got, "x")
	want := map[string]string{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA", "use": "sig"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}
