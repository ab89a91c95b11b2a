// Package envoyconfig owns checking Envoy configuration against Envoy's own API
// protos (go-control-plane/envoy, pinned in go.mod): bootstrap YAML decoded
// strictly, ValidateAll() on every message, every google.protobuf.Any unpacked and
// validated too (ValidateAll does not descend into Any), and each filter checked
// to sit in the list it belongs to. It builds no configuration and does no I/O
// beyond what its caller hands it.
package envoyconfig

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	envoy_config_bootstrap_v3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	envoy_config_cluster_v3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	envoy_config_listener_v3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	envoy_extensions_transport_sockets_tls_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// The extensions our configuration uses; without them an @type does not resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
)

const (
	routerType     = "envoy.extensions.filters.http.router.v3.Router"
	httpFilterPkg  = "envoy.extensions.filters.http."
	netFilterPkg   = "envoy.extensions.filters.network."
	listenerFilter = "envoy.extensions.filters.listener."
)

type allValidator interface{ ValidateAll() error }

// Validate checks m and, recursively, every message packed in an Any inside it.
func Validate(m proto.Message) error {
	var errs []error
	walk(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().Name()), true, &errs)
	return errors.Join(errs...)
}

func validateOne(m proto.Message, path string, errs *[]error) {
	if v, ok := m.(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
		}
	}
}

// walk validates a message at the top of each Any (top=true) and descends through
// every populated field looking for further Anys.
func walk(m protoreflect.Message, path string, top bool, errs *[]error) {
	if top {
		validateOne(m.Interface(), path, errs)
	}
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		a, ok := m.Interface().(*anypb.Any)
		if !ok {
			return
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: @type %q: %w", path, a.GetTypeUrl(), err))
			return
		}
		walk(inner.ProtoReflect(), path+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">", true, errs)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i), false, errs)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walk(mv.Message(), fmt.Sprintf("%s[%s]", p, k.String()), false, errs)
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			walk(v.Message(), p, false, errs)
		}
		return true
	})
}

// ParseBootstrap decodes a bootstrap YAML strictly (unknown fields and
// unresolvable @types are errors).
func ParseBootstrap(data []byte) (*envoy_config_bootstrap_v3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	b := &envoy_config_bootstrap_v3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{Resolver: protoregistry.GlobalTypes}).Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// ValidateBootstrapYAML is ParseBootstrap followed by CheckBootstrap.
func ValidateBootstrapYAML(data []byte) error {
	b, err := ParseBootstrap(data)
	if err != nil {
		return err
	}
	return CheckBootstrap(b)
}

// CheckBootstrap validates b with every Any inside it, the filter placement of
// every listener, and that static clusters are named, unique, and that every
// cluster a static route or gRPC service names exists when CDS is not dynamic.
func CheckBootstrap(b *envoy_config_bootstrap_v3.Bootstrap) error {
	errs := []error{Validate(b)}
	clusters := map[string]bool{}
	for i, c := range b.GetStaticResources().GetClusters() {
		switch {
		case c.GetName() == "":
			errs = append(errs, fmt.Errorf("static_resources.clusters[%d]: empty name", i))
		case clusters[c.GetName()]:
			errs = append(errs, fmt.Errorf("static_resources.clusters[%d]: duplicate name %q", i, c.GetName()))
		}
		clusters[c.GetName()] = true
	}
	dynamicCDS := b.GetDynamicResources().GetCdsConfig() != nil
	refs := map[string]bool{}
	collectClusterRefs(b.ProtoReflect(), refs)
	for _, l := range b.GetStaticResources().GetListeners() {
		errs = append(errs, CheckListener(l))
	}
	// The ADS/xDS config sources must name static clusters even when CDS is dynamic.
	adsRefs := map[string]bool{}
	if b.GetDynamicResources() != nil {
		collectClusterRefs(b.GetDynamicResources().ProtoReflect(), adsRefs)
	}
	for name := range adsRefs {
		if !clusters[name] {
			errs = append(errs, fmt.Errorf("dynamic_resources: cluster %q is not a static cluster", name))
		}
	}
	if !dynamicCDS {
		for name := range refs {
			if !clusters[name] {
				errs = append(errs, fmt.Errorf("cluster %q is referenced but not defined", name))
			}
		}
	}
	return errors.Join(errs...)
}

// collectClusterRefs finds cluster names referenced from routes and Envoy gRPC
// services anywhere in m, looking inside Anys.
func collectClusterRefs(m protoreflect.Message, out map[string]bool) {
	switch x := m.Interface().(type) {
	case *anypb.Any:
		if inner, err := x.UnmarshalNew(); err == nil {
			collectClusterRefs(inner.ProtoReflect(), out)
		}
		return
	case *envoy_config_route_v3.RouteAction:
		if c := x.GetCluster(); c != "" {
			out[c] = true
		}
		for _, w := range x.GetWeightedClusters().GetClusters() {
			out[w.GetName()] = true
		}
	}
	if m.Descriptor().FullName() == "envoy.config.core.v3.GrpcService.EnvoyGrpc" {
		if n := m.Get(m.Descriptor().Fields().ByName("cluster_name")).String(); n != "" {
			out[n] = true
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				collectClusterRefs(v.List().Get(i).Message(), out)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				collectClusterRefs(mv.Message(), out)
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			collectClusterRefs(v.Message(), out)
		}
		return true
	})
}

// CheckListener checks that every network filter is a network filter, listener
// filters are listener filters, every HTTP connection manager's filter list
// holds only HTTP filters with exactly one router, last (protojson accepts an
// access logger in an HTTP filter list; Envoy does not), and every HTTP
// connection manager canonicalises paths (CheckPathHandling).
func CheckListener(l *envoy_config_listener_v3.Listener) error {
	var errs []error
	name := l.GetName()
	for i, f := range l.GetListenerFilters() {
		if t := typeName(f.GetTypedConfig()); t != "" && !strings.HasPrefix(t, listenerFilter) {
			errs = append(errs, fmt.Errorf("listener %q listener_filters[%d] %q: %s is not a listener filter", name, i, f.GetName(), t))
		}
	}
	chains := append([]*envoy_config_listener_v3.FilterChain{}, l.GetFilterChains()...)
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains, l.GetDefaultFilterChain())
	}
	for ci, fc := range chains {
		for fi, f := range fc.GetFilters() {
			t := typeName(f.GetTypedConfig())
			if !strings.HasPrefix(t, netFilterPkg) {
				errs = append(errs, fmt.Errorf("listener %q filter_chains[%d].filters[%d] %q: %s is not a network filter", name, ci, fi, f.GetName(), t))
				continue
			}
			if h, ok := unpackHCM(f.GetTypedConfig()); ok {
				if err := errors.Join(CheckHTTPFilters(h), CheckPathHandling(h)); err != nil {
					errs = append(errs, fmt.Errorf("listener %q filter_chains[%d]: %w", name, ci, err))
				}
			}
		}
	}
	if a := l.GetApiListener().GetApiListener(); a != nil {
		h, ok := unpackHCM(a)
		if !ok {
			errs = append(errs, fmt.Errorf("listener %q api_listener: not an HTTP connection manager", name))
		} else if err := errors.Join(CheckHTTPFilters(h), CheckPathHandling(h)); err != nil {
			errs = append(errs, fmt.Errorf("listener %q api_listener: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// CheckHTTPFilters checks one HTTP connection manager's filter list.
func CheckHTTPFilters(h *envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager) error {
	fs := h.GetHttpFilters()
	if len(fs) == 0 {
		return errors.New("http_filters is empty")
	}
	var errs []error
	seen := map[string]bool{}
	for i, f := range fs {
		if seen[f.GetName()] {
			errs = append(errs, fmt.Errorf("http_filters[%d]: duplicate name %q", i, f.GetName()))
		}
		seen[f.GetName()] = true
		t := typeName(f.GetTypedConfig())
		switch {
		case !strings.HasPrefix(t, httpFilterPkg):
			errs = append(errs, fmt.Errorf("http_filters[%d] %q: %s is not an HTTP filter", i, f.GetName(), t))
		case t == routerType && i != len(fs)-1:
			errs = append(errs, fmt.Errorf("http_filters[%d] %q: the router must be the last filter", i, f.GetName()))
		case t != routerType && i == len(fs)-1:
			errs = append(errs, fmt.Errorf("http_filters[%d] %q: the last filter must be the router", i, f.GetName()))
		}
	}
	return errors.Join(errs...)
}

// CheckPathHandling checks that h canonicalises request paths before routing
// and ext_authz see them. Envoy's defaults leave /read/../admin, //admin and
// /read%2F..%2Fadmin as sent, so a prefix route for /read matches a request the
// upstream resolves elsewhere and the authz decision is made on the wrong tool.
func CheckPathHandling(h *envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager) error {
	var errs []error
	if !h.GetNormalizePath().GetValue() {
		errs = append(errs, errors.New("normalize_path must be true (RFC 3986 dot segments)"))
	}
	if !h.GetMergeSlashes() {
		errs = append(errs, errors.New("merge_slashes must be true"))
	}
	if a := h.GetPathWithEscapedSlashesAction(); a != envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_REJECT_REQUEST {
		errs = append(errs, fmt.Errorf("path_with_escaped_slashes_action is %s, must be REJECT_REQUEST", a))
	}
	// Envoy ignores the three fields above when a header validator is configured.
	if h.GetTypedHeaderValidationConfig() != nil {
		errs = append(errs, errors.New("typed_header_validation_config is set: Envoy would ignore normalize_path, merge_slashes and path_with_escaped_slashes_action"))
	}
	return errors.Join(errs...)
}

// HTTPConnectionManagers returns every HTTP connection manager packed in a
// typed_config anywhere inside m, at any depth, so a test can hold each one to
// CheckPathHandling without knowing where the configuration puts it.
func HTTPConnectionManagers(m proto.Message) []*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager {
	var out []*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		if a, ok := m.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				return
			}
			if h, ok := inner.(*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager); ok {
				out = append(out, h)
			}
			visit(inner.ProtoReflect())
			return
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					visit(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(mv.Message())
					return true
				})
			case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
				visit(v.Message())
			}
			return true
		})
	}
	if h, ok := m.(*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager); ok {
		out = append(out, h)
	}
	visit(m.ProtoReflect())
	return out
}

func typeName(a *anypb.Any) string {
	if a == nil {
		return ""
	}
	u := a.GetTypeUrl()
	return u[strings.LastIndex(u, "/")+1:]
}

func unpackHCM(a *anypb.Any) (*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager, bool) {
	h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
	if a == nil || !a.MessageIs(h) {
		return nil, false
	}
	if err := a.UnmarshalTo(h); err != nil {
		return nil, false
	}
	return h, true
}

// CheckMTLSCluster checks that Envoy calls a cluster's gRPC server over mTLS
// the way a gRPC-Go server accepts: a TLS transport socket with a client
// certificate, a trusted CA, a SAN to verify the server against, and ALPN h2
// (gRPC-Go refuses TLS connections that negotiate no ALPN protocol; Envoy
// offers none unless told).
func CheckMTLSCluster(c *envoy_config_cluster_v3.Cluster) error {
	ts := c.GetTransportSocket()
	if ts == nil {
		return fmt.Errorf("cluster %q: no transport socket (plaintext)", c.GetName())
	}
	u := &envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext{}
	if ts.GetTypedConfig() == nil || ts.GetTypedConfig().UnmarshalTo(u) != nil {
		return fmt.Errorf("cluster %q: transport socket is not an UpstreamTlsContext", c.GetName())
	}
	var errs []error
	ctx := u.GetCommonTlsContext()
	if !slices.Contains(ctx.GetAlpnProtocols(), "h2") {
		errs = append(errs, fmt.Errorf("cluster %q: alpn_protocols lacks h2", c.GetName()))
	}
	if len(ctx.GetTlsCertificates()) == 0 && len(ctx.GetTlsCertificateSdsSecretConfigs()) == 0 {
		errs = append(errs, fmt.Errorf("cluster %q: no client certificate (tls_certificates)", c.GetName()))
	}
	vc := ctx.GetValidationContext()
	if vc.GetTrustedCa() == nil {
		errs = append(errs, fmt.Errorf("cluster %q: no validation_context.trusted_ca", c.GetName()))
	}
	if len(vc.GetMatchTypedSubjectAltNames()) == 0 {
		errs = append(errs, fmt.Errorf("cluster %q: validation_context verifies no SAN (any certificate from the CA would do)", c.GetName()))
	}
	return errors.Join(errs...)
}
