package server

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// NodeSPIFFEPath is the path under a trust domain that names an xDS node:
// a client certificate with the URI SAN spiffe://<trust domain>/envoy/<node id>
// may open streams as that node id and no other.
//
// A SPIFFE URI rather than a DNS SAN or the CN: a DNS name says where a server
// can be reached, not who a client is, and the same CA often issues both; the
// CN is not an identity any verifier agrees on. A URI in our own path says
// exactly "this is xDS node X" and cannot be mistaken for anything else.
const NodeSPIFFEPath = "/envoy/"

// nodeIDRE is what a node id in a certificate may look like: one SPIFFE path
// segment (no percent-encoding, no dots alone).
var nodeIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,256}$`)

// NodeSPIFFEID is the URI SAN a client certificate carries to act as nodeID.
func NodeSPIFFEID(trustDomain, nodeID string) string {
	return "spiffe://" + trustDomain + NodeSPIFFEPath + nodeID
}

// certNodeIDs returns the node ids the verified client certificate of ctx's
// stream names in trustDomain; an error when there is no verified certificate
// or it names none.
func certNodeIDs(ctx context.Context, trustDomain string) ([]string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no peer on the stream")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, errors.New("node identity needs mTLS; this connection is not TLS")
	}
	st := ti.State
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return nil, errors.New("no verified client certificate")
	}
	var ids []string
	for _, u := range st.PeerCertificates[0].URIs {
		if u.Scheme != "spiffe" || !strings.EqualFold(u.Host, trustDomain) || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.RawPath != "" {
			continue
		}
		id, ok := strings.CutPrefix(u.Path, NodeSPIFFEPath)
		if !ok || !nodeIDRE.MatchString(id) || id == "." || id == ".." {
			continue
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("the client certificate names no xDS node (want a URI SAN %s)", NodeSPIFFEID(trustDomain, "<node-id>"))
	}
	return ids, nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
