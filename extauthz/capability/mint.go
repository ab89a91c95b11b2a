package capability

import (
	"crypto/rand"
	"errors"
	"fmt"
	"time"
)

// DefaultTTL is a minted token's lifetime when MintRequest.TTL is not set.
const DefaultTTL = 5 * time.Minute

// MintRequest is what a token grants. The caller (the token service after its
// policy said yes, or `aisecops token` in development) has decided it may.
type MintRequest struct {
	Issuer        string
	Audience      string
	Agent         string // becomes sub and agent_id
	Tool          string
	Scope         string
	Constraints   Constraints
	RiskScore     float64
	RunID         string
	TTL           time.Duration // default DefaultTTL
	MaxTTL        time.Duration // cap on TTL; default DefaultMaxLifetime (the verifier's default)
	PolicyVersion string
	SingleUse     bool
}

// Mint signs a token for req at now: iat = nbf = now, exp = now + min(TTL, MaxTTL),
// and a random 128-bit jti. Times are whole seconds, so the returned claims are
// exactly what a verifier will return for the token.
func Mint(s Signer, req MintRequest, now time.Time) (token string, claims *Claims, err error) {
	var errs []error
	if s == nil {
		errs = append(errs, errors.New("signer is required"))
	}
	if req.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	if req.Audience == "" {
		errs = append(errs, errors.New("audience is required"))
	}
	if req.Agent == "" {
		errs = append(errs, errors.New("agent is required"))
	}
	if req.Tool == "" {
		errs = append(errs, errors.New("tool is required"))
	}
	if req.TTL < 0 || req.MaxTTL < 0 {
		errs = append(errs, errors.New("TTL and MaxTTL must not be negative"))
	}
	if req.Constraints.Expiry != "" {
		if _, perr := time.Parse(time.RFC3339, req.Constraints.Expiry); perr != nil {
			errs = append(errs, fmt.Errorf("constraints.expiry: %w", perr))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return "", nil, fmt.Errorf("capability: mint: %w", err)
	}
	ttl, maxTTL := req.TTL, req.MaxTTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if maxTTL == 0 {
		maxTTL = DefaultMaxLifetime
	}
	ttl = min(ttl, maxTTL).Truncate(time.Second)
	if ttl < time.Second {
		return "", nil, errors.New("capability: mint: TTL under one second")
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", nil, fmt.Errorf("capability: mint: %w", err)
	}
	iat := now.Truncate(time.Second).UTC()
	c := &Claims{
		Issuer:        req.Issuer,
		Subject:       req.Agent,
		Audience:      []string{req.Audience},
		ExpiresAt:     iat.Add(ttl),
		IssuedAt:      iat,
		NotBefore:     iat,
		ID:            b64.EncodeToString(id[:]),
		AgentID:       req.Agent,
		Tool:          req.Tool,
		Scope:         req.Scope,
		Constraints:   req.Constraints,
		RiskScore:     req.RiskScore,
		PolicyVersion: req.PolicyVersion,
		RunID:         req.RunID,
		SingleUse:     req.SingleUse,
	}
	tok, err := s.Sign(c)
	if err != nil {
		return "", nil, err
	}
	return tok, c, nil
}
