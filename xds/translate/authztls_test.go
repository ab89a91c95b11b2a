package translate

import (
	"testing"

	envoy_config_cluster_v3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_extensions_transport_sockets_tls_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	envoy_type_matcher_v3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
)

func authzClusterOf(t *testing.T, res *Resources) *envoy_config_cluster_v3.Cluster {
	t.Helper()
	for _, c := range res.Clusters {
		if c.GetName() == AuthzCluster {
			return c
		}
	}
	t.Fatal("no authz cluster")
	return nil
}

// TestAuthzClusterTLS: with authz.tls the generated authz cluster carries
// Envoy's client certificate, the authz CA, the server name to verify and
// ALPN h2; without it, no transport socket (plaintext, loopback only).
func TestAuthzClusterTLS(t *testing.T) {
	t.Parallel()
	file := func(p string) *envoy_config_core_v3.DataSource {
		return &envoy_config_core_v3.DataSource{Specifier: &envoy_config_core_v3.DataSource_Filename{Filename: p}}
	}
	tlsFiles := &config.AuthzTLS{CAFile: "/certs/ca.crt", CertFile: "/certs/envoy.crt", KeyFile: "/certs/envoy.key"}
	want := func(sni string, sanType envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_SanType, san string) *envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext {
		return &envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext{
			Sni: sni,
			CommonTlsContext: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext{
				AlpnProtocols:   []string{"h2"},
				TlsCertificates: []*envoy_extensions_transport_sockets_tls_v3.TlsCertificate{{CertificateChain: file("/certs/envoy.crt"), PrivateKey: file("/certs/envoy.key")}},
				ValidationContextType: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext_ValidationContext{ValidationContext: &envoy_extensions_transport_sockets_tls_v3.CertificateValidationContext{
					TrustedCa: file("/certs/ca.crt"),
					MatchTypedSubjectAltNames: []*envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher{{SanType: sanType,
						Matcher: &envoy_type_matcher_v3.StringMatcher{MatchPattern: &envoy_type_matcher_v3.StringMatcher_Exact{Exact: san}}}},
				}},
			},
		}
	}
	tests := map[string]struct {
		address, sni string
		want         *envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext
	}{
		"service name":         {"authz:9191", "", want("authz", envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_DNS, "authz")},
		"IP address":           {"10.0.0.7:9191", "", want("", envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_IP_ADDRESS, "10.0.0.7")},
		"IP address with SNI":  {"10.0.0.7:9191", "authz.internal", want("authz.internal", envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_DNS, "authz.internal")},
		"headless service SNI": {"aisecops-authz-headless.aisecops.svc.cluster.local:9191", "aisecops-authz", want("aisecops-authz", envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_DNS, "aisecops-authz")},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := example(t)
			f.Authz.Address = tc.address
			tl := *tlsFiles
			tl.SNI = tc.sni
			f.Authz.TLS = &tl
			if err := f.Validate(); err != nil {
				t.Fatal(err)
			}
			res, err := Translate(f, Options{})
			if err != nil {
				t.Fatal(err)
			}
			c := authzClusterOf(t, res)
			if err := envoyconfig.Validate(c); err != nil {
				t.Fatal(err)
			}
			if err := envoyconfig.CheckMTLSCluster(c); err != nil {
				t.Fatal(err)
			}
			if c.GetTransportSocket().GetName() != TLSSocket {
				t.Fatalf("transport socket %v", c.GetTransportSocket())
			}
			got := &envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext{}
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(got); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, protocmp.Transform()); d != "" {
				t.Fatalf("(-want +got):\n%s", d)
			}
		})
	}
	res, err := Translate(example(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ts := authzClusterOf(t, res).GetTransportSocket(); ts != nil {
		t.Fatalf("no authz.tls, yet a transport socket: %v", ts)
	}
}
