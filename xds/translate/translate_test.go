package translate

import (
	"strings"
	"testing"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_http_ext_authz_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	envoy_service_runtime_v3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	envoy_type_v3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
)

func example(t testing.TB) *config.File {
	t.Helper()
	f, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := marshalAny(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestExampleTranslatesAndValidates(t *testing.T) {
	t.Parallel()
	for _, fl := range []Options{{}, {Flavour: FlavourGRPC, ListenerName: "db.internal"}, {IncludePeerCertificate: true}} {
		t.Run(fl.Flavour.String(), func(t *testing.T) {
			res, err := Translate(example(t), fl)
			if err != nil {
				t.Fatal(err)
			}
			if err := res.Validate(); err != nil {
				t.Fatal(err)
			}
			again, err := Translate(example(t), fl)
			if err != nil {
				t.Fatal(err)
			}
			if again.Version != res.Version {
				t.Fatalf("version not deterministic: %s vs %s", res.Version, again.Version)
			}
			if d := cmp.Diff(res, again, protocmp.Transform()); d != "" {
				t.Fatalf("not deterministic (-a +b):\n%s", d)
			}
		})
	}
}

func TestExtAuthzFilterSettings(t *testing.T) {
	t.Parallel()
	res, err := Translate(example(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Listeners[0]
	if l.GetName() != ListenerName {
		t.Fatalf("listener name %q", l.GetName())
	}
	h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	if got := h.GetRds().GetRouteConfigName(); got != RouteConfigName {
		t.Fatalf("rds %q", got)
	}
	if n := len(h.GetHttpFilters()); n != 2 || h.GetHttpFilters()[0].GetName() != ExtAuthzFilter || h.GetHttpFilters()[1].GetName() != RouterFilter {
		t.Fatalf("filters %v", h.GetHttpFilters())
	}
	got := &envoy_extensions_filters_http_ext_authz_v3.ExtAuthz{}
	if err := h.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(got); err != nil {
		t.Fatal(err)
	}
	want := &envoy_extensions_filters_http_ext_authz_v3.ExtAuthz{
		Services: &envoy_extensions_filters_http_ext_authz_v3.ExtAuthz_GrpcService{GrpcService: &envoy_config_core_v3.GrpcService{
			TargetSpecifier: &envoy_config_core_v3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &envoy_config_core_v3.GrpcService_EnvoyGrpc{ClusterName: AuthzCluster}},
			Timeout:         durationpb.New(250 * time.Millisecond),
		}},
		TransportApiVersion: envoy_config_core_v3.ApiVersion_V3,
		WithRequestBody:     &envoy_extensions_filters_http_ext_authz_v3.BufferSettings{MaxRequestBytes: 1 << 20, PackAsBytes: true},
		StatusOnError:       &envoy_type_v3.HttpStatus{Code: envoy_type_v3.StatusCode_ServiceUnavailable},
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Fatalf("ext_authz (-want +got):\n%s", d)
	}
}

func TestRoutesTable(t *testing.T) {
	t.Parallel()
	tool := func(name, host, prefix string, port uint32) config.Tool {
		return config.Tool{Name: name, Class: config.ClassRead, BaseRisk: 0.2, Trust: config.TrustInternal, Cost: 0.01,
			Match: config.Match{Host: host, PathPrefix: prefix}, Upstream: config.Upstream{Address: "10.0.0.1", Port: port}}
	}
	route := func(t *testing.T, tl config.Tool) *envoy_config_route_v3.Route {
		return &envoy_config_route_v3.Route{
			Name:  tl.Name,
			Match: &envoy_config_route_v3.RouteMatch{PathSpecifier: &envoy_config_route_v3.RouteMatch_Prefix{Prefix: tl.Match.PathPrefix}},
			Action: &envoy_config_route_v3.Route_Route{Route: &envoy_config_route_v3.RouteAction{
				ClusterSpecifier: &envoy_config_route_v3.RouteAction_Cluster{Cluster: ClusterName(tl.Upstream)},
			}},
			TypedPerFilterConfig: map[string]*anypb.Any{ExtAuthzFilter: mustAny(t, &envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute{
				Override: &envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute_CheckSettings{CheckSettings: &envoy_extensions_filters_http_ext_authz_v3.CheckSettings{
					ContextExtensions: ContextExtensions(tl),
				}},
			})},
		}
	}
	a := tool("a", "api.test", "/", 1)
	b := tool("b", "api.test", "/v1/admin", 2)
	c := tool("c", "api.test", "/v1/", 3)
	d := tool("d", "Other.test", "/", 1)
	tests := []struct {
		name  string
		tools []config.Tool
		want  []*envoy_config_route_v3.VirtualHost
	}{
		{"one", []config.Tool{a}, []*envoy_config_route_v3.VirtualHost{{Name: "api.test", Domains: []string{"api.test", "api.test:*"}, Routes: []*envoy_config_route_v3.Route{route(t, a)}}}},
		{"most specific first", []config.Tool{a, c, b}, []*envoy_config_route_v3.VirtualHost{{Name: "api.test", Domains: []string{"api.test", "api.test:*"}, Routes: []*envoy_config_route_v3.Route{route(t, b), route(t, c), route(t, a)}}}},
		{"hosts sorted, lowercased", []config.Tool{d, a}, []*envoy_config_route_v3.VirtualHost{
			{Name: "api.test", Domains: []string{"api.test", "api.test:*"}, Routes: []*envoy_config_route_v3.Route{route(t, a)}},
			{Name: "other.test", Domains: []string{"other.test", "other.test:*"}, Routes: []*envoy_config_route_v3.Route{route(t, d)}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := example(t)
			f.Tools = tc.tools
			f.Agents = nil
			res, err := Translate(f, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := res.Validate(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, res.Routes[0].GetVirtualHosts(), protocmp.Transform()); diff != "" {
				t.Fatalf("virtual hosts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestContextExtensions(t *testing.T) {
	t.Parallel()
	f := example(t)
	mcp, _ := f.Tool("docs.search")
	got := ContextExtensions(mcp)
	want := map[string]string{"tool": "docs.search", "tool_class": "read", "base_risk": "0.2", "trust": "neutral",
		"cost": "0.01", "route_version": RouteVersion(mcp), "mcp_tools": "search,fetch_page"}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}
	changed := mcp
	changed.BaseRisk = 0.3
	if RouteVersion(changed) == RouteVersion(mcp) {
		t.Fatal("route_version did not change with the tool")
	}
}

func TestVersionChangesWithContent(t *testing.T) {
	t.Parallel()
	f := example(t)
	r1, err := Translate(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.Agents[0].Budgets.MaxToolCalls++
	r2, err := Translate(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Version == r2.Version {
		t.Fatal("version unchanged after a budget change")
	}
}

func TestTranslateErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]func(f *config.File){
		"duplicate match": func(f *config.File) { f.Tools[1].Match = f.Tools[0].Match },
		"bad authz addr":  func(f *config.File) { f.Authz.Address = "nohostport" },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			f := example(t)
			mutate(f)
			if _, err := Translate(f, Options{}); err == nil {
				t.Fatal("want error")
			}
		})
	}
	if _, err := Translate(nil, Options{}); err == nil {
		t.Fatal("nil file: want error")
	}
}

func TestReferenceCheckCatches(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		mutate func(r *Resources)
		want   string
	}{
		"route to missing cluster": {func(r *Resources) {
			r.Routes[0].VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &envoy_config_route_v3.RouteAction_Cluster{Cluster: "nope"}
		}, `cluster "nope" is missing`},
		"missing endpoints":    {func(r *Resources) { r.Endpoints = r.Endpoints[1:] }, "endpoints are missing"},
		"missing route config": {func(r *Resources) { r.Routes[0].Name = "other" }, "is missing"},
		"empty cluster name":   {func(r *Resources) { r.Clusters[0].Name = "" }, "empty name"},
		"missing authz cluster": {func(r *Resources) {
			for i, c := range r.Clusters {
				if c.Name == AuthzCluster {
					r.Clusters = append(r.Clusters[:i], r.Clusters[i+1:]...)
					break
				}
			}
		}, "ext_authz cluster"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := example(t)
			f.Tools[0].Upstream.Address = "10.1.1.1" // an EDS cluster
			res, err := Translate(f, Options{})
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(res)
			err = res.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestDirectoryRoundTrip: the tools and agents of the file come back from the
// resource exactly (every tool field included, so a narrowed destination
// allowlist reaches replicas), and decoding refuses what the routes file would.
func TestDirectoryRoundTrip(t *testing.T) {
	t.Parallel()
	f := example(t)
	rt, err := DirectoryResource(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeDirectory(rt)
	if err != nil {
		t.Fatal(err)
	}
	want := &config.File{Tools: f.Tools, Agents: f.Agents}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}

	// Defaults apply on decode as they do to the file.
	sparse := proto.Clone(rt).(*envoy_service_runtime_v3.Runtime)
	delete(sparse.Layer.Fields["agents"].GetListValue().Values[0].GetStructValue().Fields, "thresholds")
	if got, err := DecodeDirectory(sparse); err != nil || got.Agents[0].Thresholds.Halt != config.DefaultHalt {
		t.Fatalf("thresholds not defaulted: %+v, %v", got, err)
	}

	tool := func(r *envoy_service_runtime_v3.Runtime, i int) map[string]*structpb.Value {
		return r.Layer.Fields["tools"].GetListValue().Values[i].GetStructValue().Fields
	}
	tests := map[string]struct {
		mutate func(r *envoy_service_runtime_v3.Runtime)
		want   []string // every one must be reported, at once
	}{
		"unknown agent field": {func(r *envoy_service_runtime_v3.Runtime) {
			r.Layer.Fields["agents"].GetListValue().Values[0].GetStructValue().Fields["bogus"] = structpb.NewBoolValue(true)
		}, []string{"bogus"}},
		"unknown tool field": {func(r *envoy_service_runtime_v3.Runtime) {
			tool(r, 0)["destination"] = structpb.NewStringValue("x")
		}, []string{"destination"}},
		"unknown top-level field": {func(r *envoy_service_runtime_v3.Runtime) {
			r.Layer.Fields["listener"] = structpb.NewStructValue(&structpb.Struct{})
		}, []string{"listener"}},
		"wrong schema": {func(r *envoy_service_runtime_v3.Runtime) {
			r.Layer.Fields["schema"] = structpb.NewStringValue("aisecops.agents/v1")
		}, []string{"schema"}},
		"negative budget": {func(r *envoy_service_runtime_v3.Runtime) {
			r.Layer.Fields["agents"].GetListValue().Values[0].GetStructValue().Fields["budgets"].GetStructValue().Fields["max_tool_calls"] = structpbNumber(-1)
		}, []string{"agents[0].budgets"}},
		"invalid tools, all reported": {func(r *envoy_service_runtime_v3.Runtime) {
			tool(r, 0)["class"] = structpb.NewStringValue("admin")
			tool(r, 2)["destinations"] = structpb.NewListValue(&structpb.ListValue{})
		}, []string{"tools[0].class", "tools[2].destinations"}},
		"agent names a tool not sent": {func(r *envoy_service_runtime_v3.Runtime) {
			tl := r.Layer.Fields["tools"].GetListValue()
			tl.Values = tl.Values[1:]
		}, []string{`unknown tool "db.read"`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			bad := proto.Clone(rt).(*envoy_service_runtime_v3.Runtime)
			tc.mutate(bad)
			_, err := DecodeDirectory(bad)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// TestDirectoryCarriesEveryTool: the gRPC flavour translates only the tools on
// its listener, but replicas decide for every tool, so the directory resource
// holds them all in both flavours; and a change to a setting only authz reads
// (a destination allowlist) changes the version.
func TestDirectoryCarriesEveryTool(t *testing.T) {
	t.Parallel()
	f := example(t)
	for _, o := range []Options{{}, {Flavour: FlavourGRPC, ListenerName: "db.internal"}} {
		res, err := Translate(f, o)
		if err != nil {
			t.Fatal(err)
		}
		dir, err := DecodeDirectory(res.Runtimes[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(dir.Tools) != len(f.Tools) {
			t.Errorf("%s: %d tools in the directory, want %d", o.Flavour, len(dir.Tools), len(f.Tools))
		}
	}
	r1, err := Translate(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.Tools {
		if f.Tools[i].Name == "send_email" {
			f.Tools[i].Destinations = []string{"internal.example.com"}
		}
	}
	r2, err := Translate(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Version == r2.Version {
		t.Fatal("version unchanged after narrowing a destination allowlist")
	}
}

func structpbNumber(v float64) *structpb.Value { return structpb.NewNumberValue(v) }

// TestEveryHCMCanonicalisesPaths: every HTTP connection manager we generate, in
// either flavour and wherever it is packed, normalises dot segments, merges
// slashes and rejects escaped slashes, and Validate refuses a listener whose HCM
// does not (so the control plane never pushes one).
func TestEveryHCMCanonicalisesPaths(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{{}, {Flavour: FlavourGRPC, ListenerName: "db.internal"}} {
		t.Run(o.Flavour.String(), func(t *testing.T) {
			res, err := Translate(example(t), o)
			if err != nil {
				t.Fatal(err)
			}
			var hcms []*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager
			for _, m := range res.All() {
				hcms = append(hcms, envoyconfig.HTTPConnectionManagers(m)...)
			}
			if len(hcms) != len(res.Listeners) || len(hcms) == 0 {
				t.Fatalf("found %d HTTP connection managers for %d listeners", len(hcms), len(res.Listeners))
			}
			for _, h := range hcms {
				if !h.GetNormalizePath().GetValue() || !h.GetMergeSlashes() ||
					h.GetPathWithEscapedSlashesAction() != envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_REJECT_REQUEST {
					t.Errorf("normalize_path %v merge_slashes %v path_with_escaped_slashes_action %v",
						h.GetNormalizePath(), h.GetMergeSlashes(), h.GetPathWithEscapedSlashesAction())
				}
			}

			weaken := map[string]func(h *envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager){
				"normalize_path unset": func(h *envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager) {
					h.NormalizePath = nil
				},
				"merge_slashes false": func(h *envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager) {
					h.MergeSlashes = false
				},
				"escaped slashes redirect": func(h *envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager) {
					h.PathWithEscapedSlashesAction = envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_UNESCAPE_AND_REDIRECT
				},
			}
			for name, mutate := range weaken {
				t.Run(name, func(t *testing.T) {
					res, err := Translate(example(t), o)
					if err != nil {
						t.Fatal(err)
					}
					l := res.Listeners[0]
					a := l.GetApiListener().GetApiListener()
					if a == nil {
						a = l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig()
					}
					h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
					if err := a.UnmarshalTo(h); err != nil {
						t.Fatal(err)
					}
					mutate(h)
					packed := mustAny(t, h)
					a.TypeUrl, a.Value = packed.TypeUrl, packed.Value
					if err := res.Validate(); err == nil || !strings.Contains(err.Error(), "must be") {
						t.Fatalf("Validate = %v, want the weakened path handling refused", err)
					}
				})
			}
		})
	}
}

// TestMCPRoutesHaveNoOverallTimeout: an MCP server route keeps its event
// stream open, so it has an idle timeout and no overall one; other routes keep
// Envoy's default.
func TestMCPRoutesHaveNoOverallTimeout(t *testing.T) {
	t.Parallel()
	f, err := config.Parse("example", config.Example())
	if err != nil {
		t.Fatal(err)
	}
	res, err := Translate(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, vh := range res.Routes[0].GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			ra := r.GetRoute()
			tool, _ := f.Tool(r.GetName())
			switch mcp := len(tool.MCPTools) > 0; {
			case mcp && (ra.GetTimeout() == nil || ra.GetTimeout().AsDuration() != 0 || ra.GetIdleTimeout().AsDuration() != MCPIdleTimeout):
				t.Errorf("MCP route %s: timeout %v idle %v", r.GetName(), ra.GetTimeout(), ra.GetIdleTimeout())
			case !mcp && ra.GetTimeout() != nil:
				t.Errorf("route %s: timeout %v", r.GetName(), ra.GetTimeout())
			case mcp:
				seen++
			}
		}
	}
	if seen == 0 {
		t.Fatal("the example has no MCP route")
	}
}
