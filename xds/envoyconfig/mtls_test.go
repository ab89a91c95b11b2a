package envoyconfig

import (
	"strings"
	"testing"

	envoy_config_cluster_v3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_extensions_transport_sockets_tls_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	envoy_type_matcher_v3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

type upstreamTLS = envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext

func mtlsContext() *upstreamTLS {
	file := func(p string) *envoy_config_core_v3.DataSource {
		return &envoy_config_core_v3.DataSource{Specifier: &envoy_config_core_v3.DataSource_Filename{Filename: p}}
	}
	return &upstreamTLS{
		Sni: "xds",
		CommonTlsContext: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext{
			AlpnProtocols:   []string{"h2"},
			TlsCertificates: []*envoy_extensions_transport_sockets_tls_v3.TlsCertificate{{CertificateChain: file("/c/envoy.crt"), PrivateKey: file("/c/envoy.key")}},
			ValidationContextType: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext_ValidationContext{ValidationContext: &envoy_extensions_transport_sockets_tls_v3.CertificateValidationContext{
				TrustedCa: file("/c/ca.crt"),
				MatchTypedSubjectAltNames: []*envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher{{SanType: envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_DNS,
					Matcher: &envoy_type_matcher_v3.StringMatcher{MatchPattern: &envoy_type_matcher_v3.StringMatcher_Exact{Exact: "xds"}}}},
			}},
		},
	}
}

func TestCheckMTLSCluster(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		mutate func(u *upstreamTLS)
		want   string
	}{
		"complete":          {func(*upstreamTLS) {}, ""},
		"no ALPN":           {func(u *upstreamTLS) { u.CommonTlsContext.AlpnProtocols = nil }, "alpn_protocols lacks h2"},
		"no client cert":    {func(u *upstreamTLS) { u.CommonTlsContext.TlsCertificates = nil }, "no client certificate"},
		"no CA":             {func(u *upstreamTLS) { u.CommonTlsContext.GetValidationContext().TrustedCa = nil }, "trusted_ca"},
		"no SAN":            {func(u *upstreamTLS) { u.CommonTlsContext.GetValidationContext().MatchTypedSubjectAltNames = nil }, "verifies no SAN"},
		"no transport sock": {nil, "plaintext"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := &envoy_config_cluster_v3.Cluster{Name: "aisecops-xds"}
			if tc.mutate != nil {
				u := mtlsContext()
				tc.mutate(u)
				a, err := anypb.New(u)
				if err != nil {
					t.Fatal(err)
				}
				c.TransportSocket = &envoy_config_core_v3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &envoy_config_core_v3.TransportSocket_TypedConfig{TypedConfig: a}}
			}
			err := CheckMTLSCluster(c)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
