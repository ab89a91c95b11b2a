package capability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// Defaults of VerifierConfig.
const (
	DefaultMaxLifetime   = 15 * time.Minute
	DefaultLeeway        = 30 * time.Second
	DefaultMaxTokenBytes = 8 << 10
	DefaultCacheSize     = 10000
)

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	Issuer   string    // required: the only accepted iss
	Audience string    // required: aud must contain it
	Keys     KeySource // required

	// MaxLifetime bounds exp - iat. Default 15m.
	MaxLifetime time.Duration
	// Leeway tolerates clock skew on exp, nbf and iat. Default 30s; negative means none.
	Leeway time.Duration
	// AcceptedPolicyVersions, when non-empty, lists the only policy_version values accepted.
	AcceptedPolicyVersions []string
	// MaxTokenBytes: a longer bearer string is refused before any decoding. Default 8 KiB.
	MaxTokenBytes int
	// CacheSize bounds the verified-token cache. Default 10000; negative disables it.
	CacheSize int
}

// Verifier verifies capability tokens. It is safe for concurrent use.
type Verifier struct {
	core     core
	rules    rules
	versions []string
	cache    *tokenCache // nil when disabled
}

// NewVerifier checks cfg (reporting every problem at once) and fills defaults.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	c, r, errs := newCoreRules("verifier", settings{cfg.Issuer, cfg.Audience, cfg.Keys, cfg.MaxLifetime, DefaultMaxLifetime, cfg.Leeway, cfg.MaxTokenBytes})
	if slices.Contains(cfg.AcceptedPolicyVersions, "") {
		errs = append(errs, errors.New("capability: verifier: AcceptedPolicyVersions must not contain an empty version"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	v := &Verifier{core: c, rules: r, versions: slices.Clone(cfg.AcceptedPolicyVersions)}
	if cfg.CacheSize > 0 {
		v.cache = newTokenCache(cfg.CacheSize)
	}
	return v, nil
}

// Verify returns the claims of raw if it is a valid capability token at now. The
// route's tool is checked separately (CheckRoute) so that one cache serves every
// route. A token already verified by this Verifier skips the signature and claim
// checks but not the time checks against now. The returned Claims are a copy; its
// slices and pointers are shared and must not be modified.
func (v *Verifier) Verify(ctx context.Context, raw string, now time.Time) (*Claims, error) {
	if err := v.core.checkSize(raw); err != nil {
		return nil, err
	}
	var key [32]byte
	if v.cache != nil {
		key = cacheKey(raw)
		if e, ok := v.cache.get(key, v.core.generation()); ok {
			if err := e.checkTime(now); err != nil {
				return nil, err
			}
			c := *e.claims
			return &c, nil
		}
	}
	// Read the key generation before looking the key up: if the keys change
	// meanwhile, the entry is stored under the old generation and simply misses.
	gen := v.core.generation()
	w, err := v.core.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	e, err := v.check(w, now)
	if err != nil {
		return nil, err
	}
	if v.cache != nil {
		e.gen = gen
		v.cache.put(key, e)
	}
	c := *e.claims
	return &c, nil
}

// CheckRoute reports whether c may be used on the route of routeTool.
func (v *Verifier) CheckRoute(c *Claims, routeTool string) error {
	if c == nil || c.Tool != routeTool {
		return reason.New(reason.TokenToolMismatch, "token is not valid for this tool")
	}
	return nil
}

// check applies the registered-claim rules, then the capability claims.
func (v *Verifier) check(w *wireClaims, now time.Time) (*cacheEntry, error) {
	e, err := v.rules.check(w, now)
	if err != nil {
		return nil, err
	}
	if w.AgentID != nil && *w.AgentID != *w.Sub {
		return nil, reason.New(reason.TokenClaims, "token agent_id differs from its subject")
	}
	if w.Tool == nil || *w.Tool == "" {
		return nil, reason.New(reason.TokenClaims, "token has no tool")
	}
	if len(v.versions) > 0 && !slices.Contains(v.versions, w.PolicyVersion) {
		return nil, reason.New(reason.TokenPolicyVersion, "token policy_version is not accepted")
	}
	// Every token has an id: without one a token could be neither spent (the
	// policy spends the tokens of state-changing calls) nor revoked by id.
	if w.Jti == "" || len(w.Jti) > maxJTILen {
		return nil, reason.New(reason.TokenClaims, "token has no valid jti")
	}
	if c := w.Constraints; c != nil {
		if (c.MaxRows != nil && *c.MaxRows < 0) || (c.MaxCost != nil && *c.MaxCost < 0) {
			return nil, reason.New(reason.TokenClaims, "token constraints must not be negative")
		}
		if c.Expiry != "" {
			t, err := time.Parse(time.RFC3339, c.Expiry)
			if err != nil {
				return nil, reason.New(reason.TokenClaims, "token constraints.expiry is not RFC 3339")
			}
			// The issuer set this deadline explicitly: no leeway.
			e.constraintExpiry = t
			if err := e.checkTime(now); err != nil {
				return nil, err
			}
		}
	}
	e.claims = fromWire(w)
	return e, nil
}

// maxJTILen bounds a token id (it is stored as a single-use key).
const maxJTILen = 256

// core is the verification shared by capability tokens and workload credentials:
// size, structure, header, key selection and signature.
type core struct {
	keys     KeySource
	maxBytes int
}

func (c *core) generation() uint64 {
	if g, ok := c.keys.(generationer); ok {
		return g.Generation()
	}
	return 0
}

// checkSize runs before anything else touches raw (CVE-2025-30204: a huge bearer
// string must cost nothing).
func (c *core) checkSize(raw string) error {
	if raw == "" {
		return reason.New(reason.TokenMissing, "capability token missing")
	}
	if len(raw) > c.maxBytes {
		return reason.New(reason.TokenTooLarge, "capability token too large")
	}
	return nil
}

var methods = map[string]jwt.SigningMethod{
	AlgEdDSA: jwt.SigningMethodEdDSA,
	AlgES256: jwt.SigningMethodES256,
	AlgRS256: jwt.SigningMethodRS256,
}

// forbiddenHeaders name keys or key locations, or demand extensions; honouring
// any of them would let the token choose its own trust anchor.
var forbiddenHeaders = []string{"jku", "x5u", "jwk", "x5c", "crit"}

// verify checks raw's structure, header and signature and decodes its payload.
// The signature is checked before any claim, so a forged token is reported as
// forged, never as expired. The JOSE parsing is ours (rather than jwt.Parser) so
// that each failure gets its own reason code and the forbidden headers are seen
// before any key lookup; the signature algorithms are golang-jwt's.
func (c *core) verify(ctx context.Context, raw string) (*wireClaims, error) {
	if err := c.checkSize(raw); err != nil {
		return nil, err
	}
	dot1 := strings.IndexByte(raw, '.')
	if dot1 < 0 {
		return nil, reason.New(reason.TokenMalformed, "capability token malformed")
	}
	dot2 := strings.IndexByte(raw[dot1+1:], '.')
	if dot2 < 0 {
		return nil, reason.New(reason.TokenMalformed, "capability token malformed")
	}
	dot2 += dot1 + 1
	if strings.IndexByte(raw[dot2+1:], '.') >= 0 {
		return nil, reason.New(reason.TokenMalformed, "capability token malformed")
	}
	hdrBytes, err := b64.DecodeString(raw[:dot1])
	if err != nil {
		return nil, reason.Wrap(reason.TokenMalformed, err, "capability token malformed")
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(hdrBytes, &hdr); err != nil || hdr == nil {
		return nil, reason.Wrap(reason.TokenMalformed, err, "capability token header malformed")
	}
	var alg string
	if a, ok := hdr["alg"]; !ok || json.Unmarshal(a, &alg) != nil {
		return nil, reason.New(reason.TokenAlgorithm, "capability token algorithm not accepted")
	}
	method, ok := methods[alg]
	if !ok {
		return nil, reason.New(reason.TokenAlgorithm, "capability token algorithm not accepted")
	}
	for _, h := range forbiddenHeaders {
		if _, ok := hdr[h]; ok {
			return nil, reason.New(reason.TokenForbiddenHdr, "capability token header %q not allowed", h)
		}
	}
	var kid string
	if k, ok := hdr["kid"]; ok {
		if json.Unmarshal(k, &kid) != nil {
			return nil, reason.New(reason.TokenMalformed, "capability token kid malformed")
		}
	}
	if kid == "" {
		return nil, reason.New(reason.TokenUnknownKey, "capability token has no kid")
	}
	key, err := c.keys.Key(ctx, kid, alg)
	if err != nil {
		var re *reason.Error
		if errors.As(err, &re) {
			return nil, re
		}
		return nil, reason.Wrap(reason.TokenUnknownKey, err, "token signed by an unknown key")
	}
	if err := checkKeyForAlg(key, alg); err != nil {
		return nil, reason.Wrap(reason.TokenAlgorithm, err, "token algorithm does not match its key")
	}
	sig, err := b64.DecodeString(raw[dot2+1:])
	if err != nil {
		return nil, reason.Wrap(reason.TokenMalformed, err, "capability token signature malformed")
	}
	if len(sig) == 0 {
		return nil, reason.New(reason.TokenSignature, "capability token signature invalid")
	}
	if err := method.Verify(raw[:dot2], sig, key); err != nil {
		return nil, reason.Wrap(reason.TokenSignature, err, "capability token signature invalid")
	}
	payload, err := b64.DecodeString(raw[dot1+1 : dot2])
	if err != nil {
		return nil, reason.Wrap(reason.TokenMalformed, err, "capability token payload malformed")
	}
	var w wireClaims
	if err := json.Unmarshal(payload, &w); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, reason.Wrap(reason.TokenMalformed, err, "capability token payload malformed")
		}
		return nil, reason.Wrap(reason.TokenClaims, err, "capability token claims malformed")
	}
	return &w, nil
}

// rules are the registered-claim checks shared by capability tokens and workload
// credentials.
// settings are the registered-claim settings both verifiers share.
type settings struct {
	issuer, audience   string
	keys               KeySource
	maxLifetime        time.Duration
	defaultMaxLifetime time.Duration
	leeway             time.Duration
	maxTokenBytes      int
}

// newCoreRules checks the shared settings (every problem at once, named for
// who) and fills their defaults: one place for what a JWT verifier requires.
func newCoreRules(who string, st settings) (core, rules, []error) {
	var errs []error
	bad := func(msg string) { errs = append(errs, fmt.Errorf("capability: %s: %s", who, msg)) }
	if st.issuer == "" {
		bad("Issuer is required")
	}
	if st.audience == "" {
		bad("Audience is required")
	}
	if st.keys == nil {
		bad("Keys is required")
	}
	if st.maxLifetime < 0 {
		bad("MaxLifetime must not be negative")
	}
	if st.maxTokenBytes < 0 {
		bad("MaxTokenBytes must not be negative")
	}
	if st.maxLifetime == 0 {
		st.maxLifetime = st.defaultMaxLifetime
	}
	switch {
	case st.leeway == 0:
		st.leeway = DefaultLeeway
	case st.leeway < 0:
		st.leeway = 0
	}
	if st.maxTokenBytes == 0 {
		st.maxTokenBytes = DefaultMaxTokenBytes
	}
	return core{keys: st.keys, maxBytes: st.maxTokenBytes},
		rules{issuer: st.issuer, audience: st.audience, maxLifetime: st.maxLifetime, leeway: st.leeway}, errs
}

type rules struct {
	issuer, audience string
	maxLifetime      time.Duration
	leeway           time.Duration
}

// check validates iss, aud, sub, exp, iat and nbf. exp and iat are both required,
// and a token missing either is reported as TokenLifetime (its lifetime cannot be
// bounded), not TokenClaims. The returned entry carries the time bounds.
func (r *rules) check(w *wireClaims, now time.Time) (*cacheEntry, error) {
	if w.Iss == nil || *w.Iss != r.issuer {
		return nil, reason.New(reason.TokenIssuer, "token issuer not accepted")
	}
	if !w.Aud.contains(r.audience) {
		return nil, reason.New(reason.TokenAudience, "token audience does not include this service")
	}
	if w.Sub == nil || *w.Sub == "" {
		return nil, reason.New(reason.TokenClaims, "token has no subject")
	}
	if w.Exp == nil || w.Iat == nil {
		return nil, reason.New(reason.TokenLifetime, "token must carry exp and iat")
	}
	exp, iat := w.Exp.t, w.Iat.t
	if life := exp.Sub(iat); life <= 0 || life > r.maxLifetime {
		return nil, reason.New(reason.TokenLifetime, "token lifetime over the maximum of %s", r.maxLifetime)
	}
	notBefore := iat
	if w.Nbf != nil && w.Nbf.t.After(notBefore) {
		notBefore = w.Nbf.t
	}
	e := &cacheEntry{
		expiresAt: exp.Add(r.leeway),
		notBefore: notBefore.Add(-r.leeway),
	}
	if err := e.checkTime(now); err != nil {
		return nil, err
	}
	return e, nil
}

// checkTime applies the time bounds of a token at now. The cold path and the
// cached path both call it, so a cached token fails exactly as a fresh one would.
func (e *cacheEntry) checkTime(now time.Time) error {
	if !now.Before(e.expiresAt) {
		return reason.New(reason.TokenExpired, "token expired")
	}
	if now.Before(e.notBefore) {
		return reason.New(reason.TokenNotYetValid, "token not yet valid")
	}
	if !e.constraintExpiry.IsZero() && !now.Before(e.constraintExpiry) {
		return reason.New(reason.TokenExpired, "token constraints.expiry has passed")
	}
	return nil
}
