package envoyconfig

import (
	"strings"
	"testing"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_config_listener_v3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type hcm = envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager

func canonical() *hcm {
	return &hcm{
		StatPrefix:                   "t",
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_REJECT_REQUEST,
	}
}

func TestCheckPathHandling(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		mutate func(h *hcm)
		want   string // "" means accepted
	}{
		"canonical":                {func(*hcm) {}, ""},
		"normalize_path unset":     {func(h *hcm) { h.NormalizePath = nil }, "normalize_path"},
		"normalize_path false":     {func(h *hcm) { h.NormalizePath = wrapperspb.Bool(false) }, "normalize_path"},
		"merge_slashes false":      {func(h *hcm) { h.MergeSlashes = false }, "merge_slashes"},
		"escaped slashes default":  {func(h *hcm) { h.PathWithEscapedSlashesAction = 0 }, "IMPLEMENTATION_SPECIFIC_DEFAULT"},
		"escaped slashes kept":     {func(h *hcm) { h.PathWithEscapedSlashesAction = 1 }, "KEEP_UNCHANGED"},
		"escaped slashes redirect": {func(h *hcm) { h.PathWithEscapedSlashesAction = 3 }, "UNESCAPE_AND_REDIRECT"},
		"escaped slashes forward":  {func(h *hcm) { h.PathWithEscapedSlashesAction = 4 }, "UNESCAPE_AND_FORWARD"},
		"header validator overrides": {func(h *hcm) {
			h.TypedHeaderValidationConfig = &envoy_config_core_v3.TypedExtensionConfig{Name: "v"}
		}, "typed_header_validation_config"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := canonical()
			tc.mutate(h)
			err := CheckPathHandling(h)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one naming %q", err, tc.want)
			}
		})
	}
	if err := CheckPathHandling(&hcm{}); err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Fatalf("an HCM at Envoy's defaults should report all three problems at once, got %v", err)
	}
}

// TestHTTPConnectionManagersFindsEveryOne: HCMs in filter chains, the default
// filter chain and api_listener are all found, so a test walking with it cannot
// miss one a listener holds.
func TestHTTPConnectionManagersFindsEveryOne(t *testing.T) {
	t.Parallel()
	pack := func(h *hcm) *anypb.Any {
		a, err := anypb.New(h)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	chain := func(h *hcm) *envoy_config_listener_v3.FilterChain {
		return &envoy_config_listener_v3.FilterChain{Filters: []*envoy_config_listener_v3.Filter{{
			Name: "hcm", ConfigType: &envoy_config_listener_v3.Filter_TypedConfig{TypedConfig: pack(h)}}}}
	}
	a, b, c := canonical(), canonical(), canonical()
	a.StatPrefix, b.StatPrefix, c.StatPrefix = "a", "b", "c"
	l := &envoy_config_listener_v3.Listener{
		FilterChains:       []*envoy_config_listener_v3.FilterChain{chain(a)},
		DefaultFilterChain: chain(b),
		ApiListener:        &envoy_config_listener_v3.ApiListener{ApiListener: pack(c)},
	}
	var got []string
	for _, h := range HTTPConnectionManagers(l) {
		got = append(got, h.GetStatPrefix())
	}
	if strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("found %v, want a,b,c", got)
	}
	// CheckListener holds every one of them to CheckPathHandling.
	b.MergeSlashes = false
	l.DefaultFilterChain = chain(b)
	if err := CheckListener(l); err == nil || !strings.Contains(err.Error(), "merge_slashes") {
		t.Fatalf("CheckListener = %v, want the default chain's merge_slashes refused", err)
	}
}
