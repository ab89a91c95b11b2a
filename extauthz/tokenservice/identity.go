package tokenservice

import (
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// identity is who a request comes from, once its credential is verified.
type identity struct {
	agentID    string
	credential policy.TokenCredential
}

// Credential kinds (policy.TokenCredential.Kind).
const (
	KindJWT        = "jwt"
	KindClientCert = "client_certificate"
)

// k8sSubjectPrefix starts a Kubernetes service-account token's subject:
// system:serviceaccount:<namespace>:<name>.
const k8sSubjectPrefix = "system:serviceaccount:"

// authenticate verifies the request's workload credential.
//
// A request with an Authorization header is judged by it alone: it must be one
// "Bearer <JWT>" that Config.Workload verifies; a bad bearer is never rescued
// by a client certificate. Without the header, a client certificate with a
// verified chain is used when Config.ClientCert is set.
//
// Every error is a *reason.Error with an agent-safe message.
func (s *Service) authenticate(r *http.Request, now time.Time) (identity, error) {
	auth := r.Header.Values("Authorization")
	switch {
	case len(auth) > 1:
		return identity{}, reason.New(reason.DuplicateHeader, "more than one Authorization header")
	case len(auth) == 1:
		return s.authenticateBearer(r, auth[0], now)
	case s.cfg.ClientCert != nil && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.PeerCertificates) > 0:
		return clientCertIdentity(r.TLS.PeerCertificates[0], s.cfg.ClientCert.TrustDomain)
	default:
		return identity{}, reason.New(reason.TokenMissing, "no workload credential (Authorization: Bearer <workload JWT> or a client certificate)")
	}
}

func (s *Service) authenticateBearer(r *http.Request, header string, now time.Time) (identity, error) {
	scheme, raw, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return identity{}, reason.New(reason.TokenMalformed, "Authorization must be \"Bearer <workload JWT>\"")
	}
	if s.cfg.Workload == nil {
		return identity{}, reason.New(reason.TokenMissing, "bearer workload credentials are not accepted here; use a client certificate")
	}
	wi, err := s.cfg.Workload.Verify(r.Context(), raw, now)
	if err != nil {
		var re *reason.Error
		if !errors.As(err, &re) {
			return identity{}, reason.Wrap(reason.TokenMalformed, err, "workload credential invalid")
		}
		return identity{}, re
	}
	if wi == nil {
		return identity{}, reason.New(reason.Internal, "workload credential invalid")
	}
	ns, name := wi.Namespace, wi.ServiceAccount
	if name == "" {
		ns, name = splitServiceAccount(wi.Subject)
	}
	agent := wi.Subject
	if name != "" {
		// A Kubernetes service account is the pair (namespace, name): the
		// name alone says nothing about which tenant's workload this is.
		agent = ""
	}
	return identity{
		agentID: agent,
		credential: policy.TokenCredential{
			Kind: KindJWT, Issuer: wi.Issuer, Subject: wi.Subject, Namespace: ns, ServiceAccount: name,
		},
	}, nil
}

// agentFor names the agent a verified workload acts as:
//
//   - an agent that lists the credential's subject in its workloads, whatever
//     the credential;
//   - else, for a Kubernetes service account, the agent named like the
//     account when its namespace is the configured agent namespace
//     (Config.AgentNamespace; none by default, so that in production a service
//     account reaches an agent only through its workloads list);
//   - else, for any other credential, the agent its subject (or SPIFFE ID)
//     names;
//
// and never an agent that lists workloads this credential is not among.
func (s *Service) agentFor(id identity) (string, error) {
	cred := id.credential
	if a, ok := s.cfg.WorkloadLookup(cred.Subject); ok {
		return a.ID, nil
	}
	agent := id.agentID
	if cred.ServiceAccount != "" || strings.HasPrefix(cred.Subject, k8sSubjectPrefix) {
		agent = ""
		if s.cfg.AgentNamespace != "" && cred.Namespace == s.cfg.AgentNamespace {
			agent = cred.ServiceAccount
		}
	}
	if agent == "" {
		return "", reason.New(reason.AgentUnknown, "no agent is configured for this workload")
	}
	if a, ok := s.cfg.AgentLookup(agent); ok && len(a.Workloads) > 0 {
		return "", reason.New(reason.AgentUnknown, "no agent is configured for this workload")
	}
	return agent, nil
}

// splitServiceAccount parses system:serviceaccount:<ns>:<name>; it returns
// empty strings for any other subject.
func splitServiceAccount(sub string) (ns, name string) {
	rest, ok := strings.CutPrefix(sub, k8sSubjectPrefix)
	if !ok {
		return "", ""
	}
	ns, name, ok = strings.Cut(rest, ":")
	if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
		return "", ""
	}
	return ns, name
}

// clientCertIdentity names the agent of a verified client certificate.
//
// A certificate with SPIFFE URI SANs is judged by them alone: the agent is
// <id> of the first spiffe://<trust domain>/agent/<id> (the path exactly
// /agent/<id>, the trust domain Config.ClientCert.TrustDomain when set); a
// certificate whose SPIFFE IDs name no agent is refused rather than falling
// back to its CN, which a SPIFFE issuer does not vouch for. A certificate with
// no SPIFFE URI SAN names the agent by its subject CN.
func clientCertIdentity(cert *x509.Certificate, trustDomain string) (identity, error) {
	cred := policy.TokenCredential{Kind: KindClientCert, Issuer: cert.Issuer.String()}
	sawSPIFFE := false
	for _, u := range cert.URIs {
		if !strings.EqualFold(u.Scheme, "spiffe") {
			continue
		}
		sawSPIFFE = true
		if trustDomain != "" && u.Host != trustDomain {
			continue
		}
		id, ok := strings.CutPrefix(u.Path, "/agent/")
		if !ok || id == "" || strings.Contains(id, "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			continue
		}
		cred.Subject = u.String()
		return identity{agentID: id, credential: cred}, nil
	}
	if sawSPIFFE {
		return identity{}, reason.New(reason.TokenClaims, "the client certificate's SPIFFE ID names no agent of this trust domain")
	}
	if cn := cert.Subject.CommonName; cn != "" {
		cred.Subject = cn
		return identity{agentID: cn, credential: cred}, nil
	}
	return identity{}, reason.New(reason.TokenClaims, "the client certificate names no agent (no SPIFFE ID, no CN)")
}
