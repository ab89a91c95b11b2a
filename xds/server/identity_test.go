package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

const trustDomain = "test.aisecops"

// testCA issues the server and client certificates of the mTLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xds test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t testing.TB, server bool, uris ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "xds test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// startTLSPlane is startPlane behind mTLS, binding node ids to certificates.
func startTLSPlane(t testing.TB, ca *testCA, opts Options) *plane {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	opts.Logger = testLogger(t)
	opts.TrustDomain = trustDomain
	s, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, example(t)); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, true)},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: ca.pool, MinVersion: tls.VersionTLS12,
	})
	g := grpc.NewServer(grpc.Creds(creds))
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return &plane{Server: s, addr: lis.Addr().String()}
}

// adsStream opens a raw ADS stream with the given client certificate.
func adsStream(t testing.TB, ctx context.Context, addr string, ca *testCA, cert *tls.Certificate) envoy_service_discovery_v3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	st, err := envoy_service_discovery_v3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// listenerRequest asks for listeners; node "" sends no node (as Envoy does
// after the first message with set_node_on_first_message_only).
func listenerRequest(node, version, nonce string) *envoy_service_discovery_v3.DiscoveryRequest {
	r := &envoy_service_discovery_v3.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: version, ResponseNonce: nonce}
	if node != "" {
		r.Node = &envoy_config_core_v3.Node{Id: node}
	}
	return r
}

func nodeIDs(p *plane) []string {
	var ids []string
	for _, n := range p.Status().Nodes {
		ids = append(ids, n.ID)
	}
	return ids
}

// TestNodeIdentityBoundToCertificate: with a trust domain, a stream may only
// speak as the node its certificate names. Naming another node, at the first
// request or later in the stream, ends the stream with PermissionDenied and
// never creates or changes that node's state: an ACK or NACK cannot be forged
// for a node in a rollout.
func TestNodeIdentityBoundToCertificate(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	p := startTLSPlane(t, ca, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	certA := ca.issue(t, false, NodeSPIFFEID(trustDomain, "node-a"))
	certB := ca.issue(t, false, NodeSPIFFEID(trustDomain, "node-b"))

	// node-b, legitimately: one listener response, ACKed.
	b := adsStream(t, ctx, p.addr, ca, &certB)
	if err := b.Send(listenerRequest("node-b", "", "")); err != nil {
		t.Fatal(err)
	}
	resp, err := b.Recv()
	if err != nil {
		t.Fatalf("node-b with its own certificate: %v", err)
	}
	if err := b.Send(listenerRequest("", resp.GetVersionInfo(), resp.GetNonce())); err != nil { // node only on the first message
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		if n := p.Status().Nodes; len(n) != 1 || n[0].Acked[resource.ListenerType] != resp.GetVersionInfo() {
			return fmt.Errorf("node-b ACK not recorded: %+v", n)
		}
		return nil
	})
	before := p.Status().Nodes[0]

	refused := func(t *testing.T, st envoy_service_discovery_v3.AggregatedDiscoveryService_StreamAggregatedResourcesClient) {
		t.Helper()
		for {
			_, err := st.Recv()
			if err == nil {
				continue
			}
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("stream ended with %v, want PermissionDenied", err)
			}
			return
		}
	}
	t.Run("first request names another node", func(t *testing.T) {
		st := adsStream(t, ctx, p.addr, ca, &certA)
		if err := st.Send(listenerRequest("node-b", "", "")); err != nil {
			t.Fatal(err)
		}
		refused(t, st)
	})
	t.Run("node switched mid-stream to forge a NACK", func(t *testing.T) {
		st := adsStream(t, ctx, p.addr, ca, &certA)
		if err := st.Send(listenerRequest("node-a", "", "")); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		forged := listenerRequest("node-b", "", r.GetNonce())
		forged.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "forged"}
		if err := st.Send(forged); err != nil {
			t.Fatal(err)
		}
		refused(t, st)
	})
	t.Run("certificate naming no node", func(t *testing.T) {
		none := ca.issue(t, false, "spiffe://"+trustDomain+"/workload/node-b")
		st := adsStream(t, ctx, p.addr, ca, &none)
		_ = st.Send(listenerRequest("node-b", "", ""))
		refused(t, st)
	})
	t.Run("certificate of another trust domain", func(t *testing.T) {
		other := ca.issue(t, false, NodeSPIFFEID("elsewhere.example", "node-b"))
		st := adsStream(t, ctx, p.addr, ca, &other)
		_ = st.Send(listenerRequest("node-b", "", ""))
		refused(t, st)
	})

	nodes := p.Status().Nodes
	if ids := strings.Join(nodeIDs(p), ","); ids != "node-a,node-b" {
		t.Fatalf("nodes kept %v, want node-a (its own stream) and node-b", ids)
	}
	for _, n := range nodes {
		if n.ID != "node-b" {
			continue
		}
		if len(n.Nacks) != 0 || n.Acked[resource.ListenerType] != before.Acked[resource.ListenerType] {
			t.Fatalf("node-b's state changed by another client: %+v (was %+v)", n, before)
		}
	}
	if n := value(p.metrics.refused.WithLabelValues("node_identity")); n != 2 {
		t.Errorf("refused{node_identity} = %v, want 2", n)
	}
	if n := value(p.metrics.refused.WithLabelValues("certificate")); n != 2 {
		t.Errorf("refused{certificate} = %v, want 2", n)
	}
}

// TestNodeIdentityRefusedLeavesNoState: a client whose node id differs from
// its certificate leaves no node behind at all.
func TestNodeIdentityRefusedLeavesNoState(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	p := startTLSPlane(t, ca, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cert := ca.issue(t, false, NodeSPIFFEID(trustDomain, "egress-envoy"))
	st := adsStream(t, ctx, p.addr, ca, &cert)
	if err := st.Send(listenerRequest("canary-envoy", "", "")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	if ids := nodeIDs(p); len(ids) != 0 {
		t.Fatalf("nodes kept after a refused stream: %v", ids)
	}
}

// TestNodeIdentityNeedsTLS: with a trust domain, a plaintext stream is refused
// (a misconfigured server fails closed rather than trusting node ids).
func TestNodeIdentityNeedsTLS(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, Options{Logger: testLogger(t), TrustDomain: trustDomain})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, example(t)); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	for _, delta := range []bool{false, true} {
		var err error
		if delta {
			var st envoy_service_discovery_v3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
			if st, err = envoy_service_discovery_v3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(cctx); err == nil {
				_ = st.Send(&envoy_service_discovery_v3.DeltaDiscoveryRequest{Node: &envoy_config_core_v3.Node{Id: "x"}, TypeUrl: resource.ListenerType})
				_, err = st.Recv()
			}
		} else {
			var st envoy_service_discovery_v3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
			if st, err = envoy_service_discovery_v3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(cctx); err == nil {
				_ = st.Send(listenerRequest("x", "", ""))
				_, err = st.Recv()
			}
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("delta=%v: got %v, want PermissionDenied", delta, err)
		}
	}
	if len(s.Status().Nodes) != 0 {
		t.Fatal("plaintext stream left node state")
	}
}

// TestDeltaStreamsBoundToCertificate: incremental ADS follows the same rule.
func TestDeltaStreamsBoundToCertificate(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	p := startTLSPlane(t, ca, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cert := ca.issue(t, false, NodeSPIFFEID(trustDomain, "node-a"))
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{cert}})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for node, want := range map[string]codes.Code{"node-a": codes.OK, "node-b": codes.PermissionDenied} {
		st, err := envoy_service_discovery_v3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&envoy_service_discovery_v3.DeltaDiscoveryRequest{Node: &envoy_config_core_v3.Node{Id: node}, TypeUrl: resource.ListenerType}); err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		if got := status.Code(err); got != want {
			t.Errorf("delta stream as %s: %v, want %v", node, err, want)
		}
	}
}

func example(t testing.TB) *config.File {
	t.Helper()
	f, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	return f
}
