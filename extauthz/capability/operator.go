package capability

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// OperatorConfig configures an OperatorVerifier: the issuer of the JWTs people
// and scripts present to the HTTP API, and the API's audience. The audience
// must differ from the capability tokens' and the workload credentials', so no
// credential of one kind is ever accepted as another.
type OperatorConfig struct {
	Issuer        string
	Audience      string
	Keys          KeySource
	MaxLifetime   time.Duration // default DefaultWorkloadMaxLifetime
	Leeway        time.Duration // default 30s; negative means none
	MaxTokenBytes int           // default 8 KiB
}

// OperatorIdentity is who presented a verified operator credential and the
// roles its issuer granted.
type OperatorIdentity struct {
	Subject string
	Roles   []string
}

// OperatorVerifier verifies operator credentials for the HTTP API with the
// same core as capability tokens (size first, fixed algorithms, no
// key-fetching headers, signature before claims).
type OperatorVerifier struct {
	core  core
	rules rules
}

// NewOperatorVerifier checks cfg and fills defaults.
func NewOperatorVerifier(cfg OperatorConfig) (*OperatorVerifier, error) {
	c, r, errs := newCoreRules("operator verifier", settings{cfg.Issuer, cfg.Audience, cfg.Keys, cfg.MaxLifetime, DefaultWorkloadMaxLifetime, cfg.Leeway, cfg.MaxTokenBytes})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &OperatorVerifier{core: c, rules: r}, nil
}

// Verify returns the identity in raw if it is a valid operator credential at
// now. A token that carries capability claims (agent_id, tool) or a
// Kubernetes workload identity is refused whatever its roles: an agent's
// credential never carries an operator role.
func (v *OperatorVerifier) Verify(ctx context.Context, raw string, now time.Time) (*OperatorIdentity, error) {
	w, err := v.core.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	if _, err := v.rules.check(w, now); err != nil {
		return nil, err
	}
	if w.AgentID != nil || w.Tool != nil || w.Kubernetes != nil {
		return nil, reason.New(reason.TokenClaims, "an agent's credential is not an operator credential")
	}
	roles := slices.Clone(w.Roles)
	return &OperatorIdentity{Subject: *w.Sub, Roles: roles}, nil
}
