package capability

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sort"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// The only algorithms a token may use. Each is bound to one key type, so a key
// can never be used with an algorithm of another family (RS256 vs ES256, and no
// HMAC at all: a public key is never a shared secret).
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
	AlgRS256 = "RS256"
)

// Bounds on RSA keys: below 2048 bits is too weak; above 8192 bits only serves to
// make verification expensive.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// KeySource returns the public key configured under kid for alg. It must never
// fetch anything named by the token: kid only selects among configured keys. An
// unknown kid is a *reason.Error with code TokenUnknownKey; a key pinned to another
// algorithm is TokenAlgorithm.
//
// A KeySource that also has a method Generation() uint64, whose value changes
// whenever its set of keys changes, lets a Verifier's cache forget tokens verified
// under a key that has since been removed.
type KeySource interface {
	Key(ctx context.Context, kid, alg string) (crypto.PublicKey, error)
}

// generationer is the optional half of KeySource described there.
type generationer interface {
	Generation() uint64
}

// checkKeyForAlg reports whether key is of the one type alg may be verified with.
func checkKeyForAlg(key crypto.PublicKey, alg string) error {
	switch alg {
	case AlgEdDSA:
		if k, ok := key.(ed25519.PublicKey); ok && len(k) == ed25519.PublicKeySize {
			return nil
		}
	case AlgES256:
		if k, ok := key.(*ecdsa.PublicKey); ok && k.Curve == elliptic.P256() {
			return nil
		}
	case AlgRS256:
		if k, ok := key.(*rsa.PublicKey); ok && k.N != nil && k.N.BitLen() >= minRSABits && k.N.BitLen() <= maxRSABits {
			return nil
		}
	default:
		return fmt.Errorf("capability: algorithm %q not supported", alg)
	}
	return fmt.Errorf("capability: key of type %T cannot verify %s", key, alg)
}

// algForKey is the algorithm a supported public key is used with.
func algForKey(key crypto.PublicKey) (string, error) {
	for _, alg := range []string{AlgEdDSA, AlgES256, AlgRS256} {
		if checkKeyForAlg(key, alg) == nil {
			return alg, nil
		}
	}
	return "", fmt.Errorf("capability: unsupported public key type %T (want Ed25519, ECDSA P-256 or RSA %d-%d bits)", key, minRSABits, maxRSABits)
}

// publicKey is one configured key and the algorithm it is pinned to.
type publicKey struct {
	key crypto.PublicKey
	alg string
}

// keySet is an immutable set of keys by kid. Sources swap whole sets atomically,
// so a lookup never sees a half-loaded JWKS.
type keySet struct {
	keys map[string]publicKey
	gen  uint64
	hash [32]byte // of the canonical key material, to tell a real change from a rewrite
}

func (s *keySet) lookup(kid, alg string) (crypto.PublicKey, error) {
	if s == nil {
		return nil, reason.New(reason.TokenUnknownKey, "token signed by an unknown key")
	}
	k, ok := s.keys[kid]
	if !ok {
		return nil, reason.New(reason.TokenUnknownKey, "token signed by an unknown key")
	}
	if k.alg != alg {
		return nil, reason.New(reason.TokenAlgorithm, "token algorithm does not match its key")
	}
	return k.key, nil
}

func newKeySet(keys map[string]publicKey) (*keySet, error) {
	h := sha256.New()
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	for _, kid := range kids {
		j, err := jwkFromPublic(keys[kid].key, kid, keys[kid].alg)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(j)
		if err != nil {
			return nil, err
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	s := &keySet{keys: keys}
	h.Sum(s.hash[:0])
	return s, nil
}

// StaticKeys is a fixed set of keys, for tests and for deployments that pin keys
// in configuration.
type StaticKeys struct {
	set *keySet
}

var _ KeySource = (*StaticKeys)(nil)

// NewStaticKeys checks every key (Ed25519, ECDSA P-256, RSA of 2048 to 8192 bits)
// and pins each to the one algorithm of its type.
func NewStaticKeys(keys map[string]crypto.PublicKey) (*StaticKeys, error) {
	m := make(map[string]publicKey, len(keys))
	var errs []error
	for kid, k := range keys {
		if kid == "" {
			errs = append(errs, errors.New("capability: static key with an empty kid"))
			continue
		}
		alg, err := algForKey(k)
		if err != nil {
			errs = append(errs, fmt.Errorf("kid %q: %w", kid, err))
			continue
		}
		m[kid] = publicKey{key: k, alg: alg}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	set, err := newKeySet(m)
	if err != nil {
		return nil, err
	}
	return &StaticKeys{set: set}, nil
}

// Key implements KeySource.
func (s *StaticKeys) Key(_ context.Context, kid, alg string) (crypto.PublicKey, error) {
	return s.set.lookup(kid, alg)
}

// jwk is the subset of RFC 7517/7518/8037 members this package reads and writes.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid,omitempty"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	// Private members: present means someone published a private key.
	D string `json:"d,omitempty"`
	P string `json:"p,omitempty"`
}

type jwks struct {
	Keys []json.RawMessage `json:"keys"`
}

var b64 = base64.RawURLEncoding.Strict()

// ParseJWKS parses a JWK Set. Keys of a type this package does not use (other
// curves, symmetric keys, encryption keys) and keys without a kid are skipped, so
// a provider that adds one does not break verification; a key of a supported type
// that is malformed, a private key, or a repeated kid fails the whole set, because
// that means the publisher is broken and the last good set is safer.
func ParseJWKS(data []byte) (map[string]crypto.PublicKey, error) {
	m, err := parseJWKS(data)
	if err != nil {
		return nil, err
	}
	out := make(map[string]crypto.PublicKey, len(m))
	for kid, k := range m {
		out[kid] = k.key
	}
	return out, nil
}

func parseJWKS(data []byte) (map[string]publicKey, error) {
	var set jwks
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&set); err != nil {
		return nil, fmt.Errorf("capability: jwks: %w", err)
	}
	if dec.More() {
		return nil, errors.New("capability: jwks: trailing data")
	}
	if set.Keys == nil {
		return nil, errors.New("capability: jwks: no \"keys\" array")
	}
	out := make(map[string]publicKey, len(set.Keys))
	var errs []error
	for i, raw := range set.Keys {
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			errs = append(errs, fmt.Errorf("capability: jwks: key %d: %w", i, err))
			continue
		}
		if j.D != "" || j.P != "" {
			errs = append(errs, fmt.Errorf("capability: jwks: key %d (kid %q) contains private key material", i, j.Kid))
			continue
		}
		if j.Kid == "" || (j.Use != "" && j.Use != "sig") {
			continue
		}
		k, ok, err := j.public()
		if err != nil {
			errs = append(errs, fmt.Errorf("capability: jwks: key %d (kid %q): %w", i, j.Kid, err))
			continue
		}
		if !ok {
			continue
		}
		if _, dup := out[j.Kid]; dup {
			errs = append(errs, fmt.Errorf("capability: jwks: kid %q appears twice", j.Kid))
			continue
		}
		out[j.Kid] = k
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// public decodes a supported key. ok is false for a key of a type or algorithm
// this package does not use.
func (j *jwk) public() (k publicKey, ok bool, err error) {
	var alg string
	switch {
	case j.Kty == "OKP" && j.Crv == "Ed25519":
		alg = AlgEdDSA
		x, err := b64.DecodeString(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return k, false, errors.New("bad Ed25519 x")
		}
		k.key = ed25519.PublicKey(x)
	case j.Kty == "EC" && j.Crv == "P-256":
		alg = AlgES256
		x, errX := b64.DecodeString(j.X)
		y, errY := b64.DecodeString(j.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return k, false, errors.New("bad P-256 coordinates")
		}
		pt := make([]byte, 0, 65)
		pt = append(append(append(pt, 4), x...), y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pt)
		if err != nil {
			return k, false, fmt.Errorf("P-256 point: %w", err)
		}
		k.key = pub
	case j.Kty == "RSA":
		alg = AlgRS256
		n, errN := b64.DecodeString(j.N)
		e, errE := b64.DecodeString(j.E)
		if errN != nil || errE != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 || len(n) > maxRSABits/8 {
			return k, false, errors.New("bad RSA modulus or exponent")
		}
		N := new(big.Int).SetBytes(n)
		E := int(new(big.Int).SetBytes(e).Int64())
		if N.BitLen() < minRSABits || N.BitLen() > maxRSABits {
			return k, false, fmt.Errorf("RSA key of %d bits (want %d-%d)", N.BitLen(), minRSABits, maxRSABits)
		}
		if E < 3 || E%2 == 0 || E > 1<<31-1 {
			return k, false, errors.New("bad RSA exponent")
		}
		k.key = &rsa.PublicKey{N: N, E: E}
	default:
		return k, false, nil
	}
	if j.Alg != "" && j.Alg != alg {
		// A key published for another algorithm (e.g. RS384) is not ours to use.
		return k, false, nil
	}
	k.alg = alg
	return k, true, nil
}

// jwkFromPublic is the public JWK of key.
func jwkFromPublic(key crypto.PublicKey, kid, alg string) (jwk, error) {
	switch k := key.(type) {
	case ed25519.PublicKey:
		return jwk{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(k), Kid: kid, Alg: alg, Use: "sig"}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return jwk{}, errors.New("capability: only P-256 EC keys are supported")
		}
		pt, err := k.Bytes()
		if err != nil {
			return jwk{}, fmt.Errorf("capability: EC key: %w", err)
		}
		return jwk{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(pt[1:33]), Y: b64.EncodeToString(pt[33:65]), Kid: kid, Alg: alg, Use: "sig"}, nil
	case *rsa.PublicKey:
		return jwk{Kty: "RSA", N: b64.EncodeToString(k.N.Bytes()), E: b64.EncodeToString(big.NewInt(int64(k.E)).Bytes()), Kid: kid, Alg: alg, Use: "sig"}, nil
	default:
		return jwk{}, fmt.Errorf("capability: unsupported public key type %T", key)
	}
}

// Thumbprint is the RFC 7638 JWK thumbprint (base64url SHA-256) of key.
func Thumbprint(key crypto.PublicKey) (string, error) {
	j, err := jwkFromPublic(key, "", "")
	if err != nil {
		return "", err
	}
	// RFC 7638: the required members only, in lexicographic order, no whitespace.
	var s string
	switch j.Kty {
	case "OKP":
		s = fmt.Sprintf(`{"crv":%q,"kty":"OKP","x":%q}`, j.Crv, j.X)
	case "EC":
		s = fmt.Sprintf(`{"crv":%q,"kty":"EC","x":%q,"y":%q}`, j.Crv, j.X, j.Y)
	case "RSA":
		s = fmt.Sprintf(`{"e":%q,"kty":"RSA","n":%q}`, j.E, j.N)
	}
	sum := sha256.Sum256([]byte(s))
	return b64.EncodeToString(sum[:]), nil
}

// KeySources looks a kid up in each source in turn (say, the service's own
// signing key, then an issuer's JWKS). It keeps the Generation contract: its
// generation changes whenever any source's does, so a Verifier's cache still
// forgets tokens of a withdrawn key.
type KeySources []KeySource

var (
	_ KeySource    = KeySources(nil)
	_ generationer = KeySources(nil)
)

// Key implements KeySource. A kid found with the wrong algorithm in one source
// is reported as such rather than hidden behind another source's "unknown key".
func (m KeySources) Key(ctx context.Context, kid, alg string) (crypto.PublicKey, error) {
	var firstErr error
	for _, s := range m {
		k, err := s.Key(ctx, kid, alg)
		if err == nil {
			return k, nil
		}
		if firstErr == nil || reason.CodeOf(firstErr) == reason.TokenUnknownKey {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = reason.New(reason.TokenUnknownKey, "token signed by an unknown key")
	}
	return nil, firstErr
}

// Generation implements the optional KeySource half. Each source's generation
// only grows, so their sum changes whenever one of them does.
func (m KeySources) Generation() uint64 {
	var g uint64
	for _, s := range m {
		if gs, ok := s.(generationer); ok {
			g += gs.Generation()
		}
	}
	return g
}
