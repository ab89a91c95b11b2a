package envoy

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	envoy_config_bootstrap_v3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_config_listener_v3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

var update = flag.Bool("update", false, "rewrite bootstrap-static.yaml and bootstrap-static-tls.yaml from the bundled example")

// exampleTLS is authz.tls as bootstrap-static-tls.yaml has it: the files
// `aisecops dev-certs --out /etc/aisecops/certs` writes.
var exampleTLS = &config.AuthzTLS{CAFile: "/etc/aisecops/certs/ca.crt", CertFile: "/etc/aisecops/certs/envoy.crt", KeyFile: "/etc/aisecops/certs/envoy.key"}

// envoyYAMLs lists every Envoy bootstrap we ship: all YAML in envoy/, and the
// YAML in deploy/ that has a bootstrap's top-level keys (deploy/ also holds
// compose and routes files).
func envoyYAMLs(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{".", "../deploy"} {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
				return nil
			}
			if dir == "." {
				out = append(out, p)
				return nil
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			var top map[string]any
			if yaml.Unmarshal(data, &top) == nil {
				_, s := top["static_resources"]
				_, d := top["dynamic_resources"]
				if s || d {
					out = append(out, p)
				}
			}
			return nil
		})
	}
	return out
}

func TestShippedBootstrapsValidate(t *testing.T) {
	t.Parallel()
	files := envoyYAMLs(t)
	if len(files) < 2 {
		t.Fatalf("found %v, want at least envoy/bootstrap-ads.yaml and envoy/bootstrap-static.yaml", files)
	}
	for _, p := range files {
		t.Run(p, func(t *testing.T) {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := envoyconfig.ValidateBootstrapYAML(data); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestTLSBootstrapsUseMTLS: every -tls bootstrap reaches our gRPC servers
// (the ADS cluster aisecops-xds, the ext_authz cluster aisecops-authz) the way
// they accept: mTLS with ALPN h2 and the server's name verified.
func TestTLSBootstrapsUseMTLS(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*-tls.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("TLS bootstraps %v: %v", files, err)
	}
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := envoyconfig.ParseBootstrap(data)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range b.GetStaticResources().GetClusters() {
			if c.GetName() == "aisecops-xds" || c.GetName() == translate.AuthzCluster {
				n++
				if err := envoyconfig.CheckMTLSCluster(c); err != nil {
					t.Errorf("%s: %v", p, err)
				}
			}
		}
		if n == 0 {
			t.Errorf("%s: neither aisecops-xds nor %s", p, translate.AuthzCluster)
		}
		if b.GetDynamicResources() != nil && b.GetNode().GetId() != "egress-envoy" {
			t.Errorf("%s: node.id %q is not the node id of dev-certs' envoy.crt (egress-envoy)", p, b.GetNode().GetId())
		}
	}
}

func TestBrokenBootstrapsAreCaught(t *testing.T) {
	t.Parallel()
	static, err := os.ReadFile("bootstrap-static.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ads, err := os.ReadFile("bootstrap-ads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		in        []byte
		old, repl string
	}{
		"misspelled field":         {static, "connect_timeout:", "conect_timeout:"},
		"misspelled nested field":  {static, "pack_as_bytes:", "pack_as_byte:"},
		"unknown @type":            {static, "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "type.googleapis.com/envoy.extensions.filters.http.router.v3.Routr"},
		"access logger as filter":  {static, "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"},
		"empty cluster name":       {static, "\n    name: aisecops-authz", "\n    name: \"\""},
		"invalid inner message":    {static, "code: ServiceUnavailable", "code: Empty"},
		"invalid outer message":    {ads, "port_value: 9901", "port_value: 99999"},
		"wrong ads cluster":        {ads, "cluster_name: aisecops-xds", "cluster_name: nowhere"},
		"status_on_error bad enum": {static, "code: ServiceUnavailable", "code: NotAStatus"},
		"paths not normalised":     {static, "normalize_path: true", "normalize_path: false"},
		"slashes not merged":       {static, "merge_slashes: true", "merge_slashes: false"},
		"escaped slashes kept":     {static, "path_with_escaped_slashes_action: REJECT_REQUEST", "path_with_escaped_slashes_action: KEEP_UNCHANGED"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if !bytes.Contains(tc.in, []byte(tc.old)) {
				t.Fatalf("fixture lacks %q", tc.old)
			}
			broken := bytes.Replace(tc.in, []byte(tc.old), []byte(tc.repl), 1)
			if err := envoyconfig.ValidateBootstrapYAML(broken); err == nil {
				t.Fatal("broken bootstrap accepted")
			} else {
				t.Log(err)
			}
		})
	}
}

// staticBootstrap is the bundled example as a static bootstrap: the translated
// Envoy resources with the route configuration inlined into the listener; with
// tls, the example's authz.tls set to exampleTLS.
func staticBootstrap(t *testing.T, tls bool) *envoy_config_bootstrap_v3.Bootstrap {
	t.Helper()
	f, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	if tls {
		f.Authz.TLS = exampleTLS
	}
	res, err := translate.Translate(f, translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Endpoints) != 0 {
		t.Fatal("the example's upstreams are all DNS names; an EDS cluster would need inlining")
	}
	l := proto.Clone(res.Listeners[0]).(*envoy_config_listener_v3.Listener)
	h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
	fl := l.FilterChains[0].Filters[0]
	if err := fl.GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	h.RouteSpecifier = &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_RouteConfig{
		RouteConfig: proto.Clone(res.Routes[0]).(*envoy_config_route_v3.RouteConfiguration)}
	a, err := anypb.New(h)
	if err != nil {
		t.Fatal(err)
	}
	fl.ConfigType = &envoy_config_listener_v3.Filter_TypedConfig{TypedConfig: a}
	return &envoy_config_bootstrap_v3.Bootstrap{
		Node: &envoy_config_core_v3.Node{Id: "egress-envoy", Cluster: "aisecops-egress"},
		Admin: &envoy_config_bootstrap_v3.Admin{Address: &envoy_config_core_v3.Address{Address: &envoy_config_core_v3.Address_SocketAddress{
			SocketAddress: &envoy_config_core_v3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &envoy_config_core_v3.SocketAddress_PortValue{PortValue: 9901}}}}},
		StaticResources: &envoy_config_bootstrap_v3.Bootstrap_StaticResources{
			Listeners: []*envoy_config_listener_v3.Listener{l},
			Clusters:  res.Clusters,
		},
	}
}

// TestStaticBootstrapIsTheExample keeps bootstrap-static.yaml equal to what the
// control plane would push for the bundled example (context extensions and
// route versions included), and bootstrap-static-tls.yaml to the same with
// authz.tls. Regenerate with `go test ./envoy -run Static -update`.
//
// Not parallel: with -update it rewrites the files, which the parallel tests
// read; sequential tests finish before parallel ones resume.
func TestStaticBootstrapIsTheExample(t *testing.T) {
	for file, tls := range map[string]bool{"bootstrap-static.yaml": false, "bootstrap-static-tls.yaml": true} {
		checkStaticBootstrap(t, file, tls)
	}
}

func checkStaticBootstrap(t *testing.T, file string, tls bool) {
	t.Helper()
	want := staticBootstrap(t, tls)
	if *update {
		js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			t.Fatal(err)
		}
		head := "# Static egress Envoy bootstrap: the bundled example routes without a control plane.\n" +
			"# Generated from xds/config/example.yaml by `go test ./envoy -run Static -update`;\n" +
			"# envoy/envoy_test.go fails when it drifts from what `aisecops xds` would push.\n"
		if tls {
			head += "# With authz.tls: Envoy calls ext_authz over mTLS with the files of\n" +
				"# `aisecops dev-certs --out /etc/aisecops/certs` (serve --authz-tls-cert …).\n"
		} else {
			head += "# Plaintext to ext_authz: for `aisecops serve` on its loopback defaults.\n"
		}
		if err := os.WriteFile(file, append([]byte(head), y...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	got, err := envoyconfig.ParseBootstrap(data)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Fatalf("%s drifted from the example (-want +got):\n%s", file, d)
	}
}

// TestGeneratedSnapshotsValidate runs every flavour of the example through the
// same checks as the shipped YAML, plus the static-bootstrap form of it.
func TestGeneratedSnapshotsValidate(t *testing.T) {
	t.Parallel()
	f, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []translate.Options{{}, {Flavour: translate.FlavourGRPC, ListenerName: "mcp.internal"}} {
		res, err := translate.Translate(f, o)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range res.All() {
			if err := envoyconfig.Validate(m); err != nil {
				t.Errorf("%s: %v", o.Flavour, err)
			}
		}
		if err := res.Validate(); err != nil {
			t.Errorf("%s: %v", o.Flavour, err)
		}
	}
	for _, tls := range []bool{false, true} {
		if err := envoyconfig.CheckBootstrap(staticBootstrap(t, tls)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEveryHCMCanonicalisesPaths: every HTTP connection manager in a bootstrap
// we ship or a snapshot we generate, found by unpacking every typed_config,
// normalises dot segments, merges slashes and rejects escaped slashes. Without
// them /read/../admin matches a /read prefix route and reaches /admin upstream.
func TestEveryHCMCanonicalisesPaths(t *testing.T) {
	t.Parallel()
	found := 0
	check := func(where string, m proto.Message) {
		t.Helper()
		for i, h := range envoyconfig.HTTPConnectionManagers(m) {
			found++
			if err := envoyconfig.CheckPathHandling(h); err != nil {
				t.Errorf("%s: HTTP connection manager %d: %v", where, i, err)
			}
		}
	}
	for _, p := range envoyYAMLs(t) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := envoyconfig.ParseBootstrap(data)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		check(p, b)
	}
	if found == 0 {
		t.Fatal("no HTTP connection manager in the shipped bootstraps; bootstrap-static.yaml has one")
	}
	f, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []translate.Options{{}, {Flavour: translate.FlavourGRPC, ListenerName: "mcp.internal"}} {
		res, err := translate.Translate(f, o)
		if err != nil {
			t.Fatal(err)
		}
		before := found
		for _, m := range res.All() {
			check("generated "+o.Flavour.String(), m)
		}
		if found == before {
			t.Errorf("generated %s: no HTTP connection manager found", o.Flavour)
		}
	}
}
