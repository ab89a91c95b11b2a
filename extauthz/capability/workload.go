package capability

import (
	"context"
	"errors"
	"time"
)

// DefaultWorkloadMaxLifetime bounds a workload credential's exp - iat. Kubernetes
// projected service-account tokens default to one hour; clusters running with
// --service-account-extend-token-expiration issue tokens valid up to a year, and
// need a larger MaxLifetime set explicitly.
const DefaultWorkloadMaxLifetime = 24 * time.Hour

// WorkloadConfig configures a WorkloadVerifier: the issuer whose credentials the
// token service accepts (e.g. the cluster's service-account issuer) and the
// audience those credentials must be minted for.
type WorkloadConfig struct {
	Issuer        string
	Audience      string
	Keys          KeySource     // typically a JWKSURL of the issuer's keys
	MaxLifetime   time.Duration // default DefaultWorkloadMaxLifetime
	Leeway        time.Duration // default 30s; negative means none
	MaxTokenBytes int           // default 8 KiB
}

// WorkloadIdentity is who presented a verified workload credential.
type WorkloadIdentity struct {
	Subject   string // e.g. system:serviceaccount:ns:name
	Issuer    string
	Audience  []string
	ExpiresAt time.Time
	// Kubernetes fields, empty for other issuers.
	Namespace      string
	ServiceAccount string
	Pod            string
}

// WorkloadVerifier verifies workload credentials with the same core as capability
// tokens (size first, fixed algorithms, no key-fetching headers, signature before
// claims) and the same registered-claim rules, but no capability claims and no
// cache: it sits on the token-issuing path, not the per-request one.
type WorkloadVerifier struct {
	core  core
	rules rules
}

// NewWorkloadVerifier checks cfg and fills defaults.
func NewWorkloadVerifier(cfg WorkloadConfig) (*WorkloadVerifier, error) {
	c, r, errs := newCoreRules("workload verifier", settings{cfg.Issuer, cfg.Audience, cfg.Keys, cfg.MaxLifetime, DefaultWorkloadMaxLifetime, cfg.Leeway, cfg.MaxTokenBytes})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &WorkloadVerifier{core: c, rules: r}, nil
}

// Verify returns the identity in raw if it is a valid credential at now. Errors
// are *reason.Error with the same codes as capability tokens.
func (v *WorkloadVerifier) Verify(ctx context.Context, raw string, now time.Time) (*WorkloadIdentity, error) {
	w, err := v.core.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	if _, err := v.rules.check(w, now); err != nil {
		return nil, err
	}
	id := &WorkloadIdentity{
		Subject:   *w.Sub,
		Issuer:    *w.Iss,
		Audience:  []string(w.Aud),
		ExpiresAt: w.Exp.t,
	}
	if k := w.Kubernetes; k != nil {
		id.Namespace = k.Namespace
		id.ServiceAccount = k.ServiceAccount.Name
		if k.Pod != nil {
			id.Pod = k.Pod.Name
		}
	}
	return id, nil
}
