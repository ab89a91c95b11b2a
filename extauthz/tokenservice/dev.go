package tokenservice

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
)

// Development workload credentials: `aisecops token --workload --agent A`
// mints one with the development key so the whole flow (workload credential →
// POST /v1/tokens → capability token → Check) runs on one machine. Their
// issuer and audience differ from capability tokens', so neither kind is ever
// accepted in place of the other even though one key signs both.
const (
	DevWorkloadIssuer   = "aisecops-dev-workload"
	DevWorkloadAudience = "aisecops-token-service"
	// DevWorkloadNamespace is the namespace of the Kubernetes-style subject.
	DevWorkloadNamespace = "default"
	// DefaultDevWorkloadTTL is a development credential's lifetime when none is given.
	DefaultDevWorkloadTTL = time.Hour
)

// MintDevWorkload signs a development workload credential for agent:
// iss DevWorkloadIssuer, aud DevWorkloadAudience,
// sub system:serviceaccount:default:<agent>, iat = nbf = now, exp = now + ttl
// (DefaultDevWorkloadTTL when 0, at most capability.DefaultWorkloadMaxLifetime).
func MintDevWorkload(signer capability.Signer, agent string, ttl time.Duration, now time.Time) (string, error) {
	switch {
	case signer == nil:
		return "", errors.New("tokenservice: dev workload: signer is required")
	case agent == "" || len(agent) > maxIDLen || !validID(agent, idChars):
		return "", errors.New("tokenservice: dev workload: agent must be 1-128 letters, digits or ._:@-")
	case ttl < 0 || ttl > capability.DefaultWorkloadMaxLifetime:
		return "", fmt.Errorf("tokenservice: dev workload: ttl must be between 0 and %s", capability.DefaultWorkloadMaxLifetime)
	}
	if ttl == 0 {
		ttl = DefaultDevWorkloadTTL
	}
	ttl = ttl.Truncate(time.Second)
	if ttl < time.Second {
		return "", errors.New("tokenservice: dev workload: ttl under one second")
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	iat := now.Truncate(time.Second).UTC()
	return signer.Sign(&capability.Claims{
		Issuer:    DevWorkloadIssuer,
		Subject:   k8sSubjectPrefix + DevWorkloadNamespace + ":" + agent,
		Audience:  []string{DevWorkloadAudience},
		IssuedAt:  iat,
		NotBefore: iat,
		ExpiresAt: iat.Add(ttl),
		ID:        base64.RawURLEncoding.EncodeToString(id[:]),
	})
}

// DevWorkloadVerifier verifies the credentials MintDevWorkload makes with
// signer's key: the Workload verifier for a development token service.
func DevWorkloadVerifier(signer capability.Signer) (*capability.WorkloadVerifier, error) {
	if signer == nil {
		return nil, errors.New("tokenservice: dev workload verifier: signer is required")
	}
	keys, err := capability.NewStaticKeys(map[string]crypto.PublicKey{signer.KeyID(): signer.Public()})
	if err != nil {
		return nil, err
	}
	return capability.NewWorkloadVerifier(capability.WorkloadConfig{
		Issuer: DevWorkloadIssuer, Audience: DevWorkloadAudience, Keys: keys,
	})
}
