// Package translate owns the pure translation of the routes file into Envoy v3
// resources: the egress listener with the ext_authz and router filters, one route
// per tool carrying the per-route ext_authz context extensions, a cluster and
// endpoints per tool upstream, the authz cluster, and the directory resource
// (every tool's and agent's settings, DirectoryResourceName) the authz replicas
// subscribe to. It does no I/O, keeps no state and imports no authz
// code; the same file always yields the same resources and the same version.
//
// Two flavours share the code. FlavourEnvoy is what the egress Envoy receives.
// FlavourGRPC is the same routes shaped for gRPC-Go's own xDS client (the HTTP
// connection manager in Listener.api_listener, the listener named like the dial
// target, EDS clusters only, Envoy-only filters marked optional), so tests can
// prove the resources with an xDS client we did not write.
package translate

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	envoy_config_cluster_v3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_config_endpoint_v3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	envoy_config_listener_v3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_http_ext_authz_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	envoy_extensions_filters_http_router_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	envoy_extensions_transport_sockets_tls_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	envoy_extensions_upstreams_http_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	envoy_service_runtime_v3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	envoy_type_matcher_v3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	envoy_type_v3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Envoy resource and filter names. The shipped bootstraps and deploy files
// refer to them by these names, so they do not change.
const (
	ListenerName    = "aisecops-egress"
	RouteConfigName = "aisecops-egress-routes"
	AuthzCluster    = "aisecops-authz"
	ExtAuthzFilter  = "envoy.filters.http.ext_authz"
	RouterFilter    = "envoy.filters.http.router"
	HCMFilter       = "envoy.filters.network.http_connection_manager"
	TLSSocket       = "envoy.transport_sockets.tls"
)

// Context extension keys carried on every route. The authz server takes a
// call's tool identity from them, never from the agent, and denies a Check
// without them.
const (
	ExtTool         = "tool"
	ExtToolClass    = "tool_class"
	ExtBaseRisk     = "base_risk"
	ExtTrust        = "trust"
	ExtCost         = "cost"
	ExtRouteVersion = "route_version"
	ExtMCPTools     = "mcp_tools"
)

// Flavour selects which consumer the resources are shaped for.
type Flavour int

const (
	// FlavourEnvoy targets the egress Envoy.
	FlavourEnvoy Flavour = iota
	// FlavourGRPC targets gRPC-Go's xDS client (proxyless), used in tests.
	FlavourGRPC
)

func (f Flavour) String() string {
	if f == FlavourGRPC {
		return "grpc"
	}
	return "envoy"
}

// Options tune the translation. The zero value is the Envoy flavour.
type Options struct {
	Flavour Flavour
	// ListenerName names the listener; default ListenerName. In the gRPC flavour it
	// must equal the dial target (xds:///<name>) and only tools whose match host is
	// that name are translated, because gRPC asks only for the clusters its one
	// virtual host references and an ADS snapshot cache never answers a request that
	// does not name every resource it holds.
	ListenerName string
	// IncludePeerCertificate asks Envoy to send the downstream client certificate.
	IncludePeerCertificate bool
	// TrustedCA is the CA bundle Envoy verifies TLS upstreams against;
	// default /etc/ssl/certs/ca-certificates.crt.
	TrustedCA string
}

// Resources are one consistent set of xDS resources, sorted by name.
type Resources struct {
	// Version is a content hash of every resource below.
	Version   string
	Listeners []*envoy_config_listener_v3.Listener
	Routes    []*envoy_config_route_v3.RouteConfiguration
	Clusters  []*envoy_config_cluster_v3.Cluster
	Endpoints []*envoy_config_endpoint_v3.ClusterLoadAssignment
	// Runtimes holds the directory resource (DirectoryResourceName) for authz
	// replicas: every tool and agent, whatever the flavour's listener filter.
	Runtimes []*envoy_service_runtime_v3.Runtime
}

// Translate turns a validated routes file into xDS resources.
func Translate(f *config.File, opts Options) (*Resources, error) {
	if f == nil {
		return nil, errors.New("translate: nil file")
	}
	if opts.ListenerName == "" {
		opts.ListenerName = ListenerName
	}
	if opts.TrustedCA == "" {
		opts.TrustedCA = "/etc/ssl/certs/ca-certificates.crt"
	}
	tools := slices.Clone(f.Tools)
	if opts.Flavour == FlavourGRPC {
		tools = slices.DeleteFunc(tools, func(t config.Tool) bool {
			return !strings.EqualFold(t.Match.Host, opts.ListenerName)
		})
	}
	res := &Resources{}
	var errs []error

	routeCfg, err := routeConfiguration(tools, opts)
	if err != nil {
		errs = append(errs, err)
	}
	res.Routes = []*envoy_config_route_v3.RouteConfiguration{routeCfg}

	lis, err := listener(f, opts)
	if err != nil {
		errs = append(errs, err)
	}
	res.Listeners = []*envoy_config_listener_v3.Listener{lis}

	seen := map[string]bool{}
	for _, t := range tools {
		name := ClusterName(t.Upstream)
		if seen[name] {
			continue
		}
		seen[name] = true
		c, cla := upstreamCluster(name, t.Upstream, opts)
		res.Clusters = append(res.Clusters, c)
		if cla != nil {
			res.Endpoints = append(res.Endpoints, cla)
		}
	}
	if opts.Flavour == FlavourEnvoy {
		c, err := authzCluster(f.Authz)
		if err != nil {
			errs = append(errs, err)
		} else {
			res.Clusters = append(res.Clusters, c)
		}
	}
	rt, err := DirectoryResource(f)
	if err != nil {
		errs = append(errs, err)
	}
	res.Runtimes = []*envoy_service_runtime_v3.Runtime{rt}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("translate: %w", err)
	}

	slices.SortFunc(res.Clusters, func(a, b *envoy_config_cluster_v3.Cluster) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(res.Endpoints, func(a, b *envoy_config_endpoint_v3.ClusterLoadAssignment) int {
		return cmp.Compare(a.ClusterName, b.ClusterName)
	})
	res.Version, err = res.hash()
	if err != nil {
		return nil, fmt.Errorf("translate: %w", err)
	}
	return res, nil
}

// All returns every resource, in a fixed order (listeners, routes, clusters,
// endpoints, runtimes).
func (r *Resources) All() []proto.Message {
	var out []proto.Message
	for _, m := range r.Listeners {
		out = append(out, m)
	}
	for _, m := range r.Routes {
		out = append(out, m)
	}
	for _, m := range r.Clusters {
		out = append(out, m)
	}
	for _, m := range r.Endpoints {
		out = append(out, m)
	}
	for _, m := range r.Runtimes {
		out = append(out, m)
	}
	return out
}

// hash is the content hash the version is made of: deterministic wire bytes of
// every resource with its type name, so any change to any resource changes it.
func (r *Resources) hash() (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, m := range r.All() {
		b, err := opts.Marshal(m)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s:%d:", m.ProtoReflect().Descriptor().FullName(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// RouteVersion is the content hash of one tool's declaration
// (config.RouteVersion): the authz server records it in audit events so a
// decision names the route it was made under.
func RouteVersion(t config.Tool) string { return config.RouteVersion(t) }

// ContextExtensions are the per-route ext_authz context extensions of a tool.
func ContextExtensions(t config.Tool) map[string]string {
	m := map[string]string{
		ExtTool:         t.Name,
		ExtToolClass:    t.Class,
		ExtBaseRisk:     strconv.FormatFloat(t.BaseRisk, 'f', -1, 64),
		ExtTrust:        t.Trust,
		ExtCost:         strconv.FormatFloat(t.Cost, 'f', -1, 64),
		ExtRouteVersion: RouteVersion(t),
	}
	if len(t.MCPTools) > 0 {
		m[ExtMCPTools] = strings.Join(t.MCPTools, ",")
	}
	return m
}

// ClusterName names the cluster of an upstream. It is derived from everything
// that shapes the cluster, so changing a tool's upstream yields a new cluster
// and the switch can be made before the old one is removed.
func ClusterName(u config.Upstream) string {
	name := "aisecops-up-" + u.Address + "-" + strconv.FormatUint(uint64(u.Port), 10)
	if u.TLS {
		name += "-tls"
		if u.SNI != "" && u.SNI != u.Address {
			name += "-sni-" + u.SNI
		}
	}
	return name
}

func adsSource() *envoy_config_core_v3.ConfigSource {
	return &envoy_config_core_v3.ConfigSource{
		ResourceApiVersion:    envoy_config_core_v3.ApiVersion_V3,
		ConfigSourceSpecifier: &envoy_config_core_v3.ConfigSource_Ads{Ads: &envoy_config_core_v3.AggregatedConfigSource{}},
	}
}

// marshalAny packs deterministically: context_extensions is a map, and a map's
// wire order would otherwise make the content hash unstable.
func marshalAny(m proto.Message) (*anypb.Any, error) {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, err
	}
	return a, nil
}

func extAuthzFilter(a config.Authz, opts Options) (*envoy_extensions_filters_network_http_connection_manager_v3.HttpFilter, error) {
	ea := &envoy_extensions_filters_http_ext_authz_v3.ExtAuthz{
		Services: &envoy_extensions_filters_http_ext_authz_v3.ExtAuthz_GrpcService{GrpcService: &envoy_config_core_v3.GrpcService{
			TargetSpecifier: &envoy_config_core_v3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &envoy_config_core_v3.GrpcService_EnvoyGrpc{ClusterName: AuthzCluster}},
			Timeout:         durationpb.New(time.Duration(a.Timeout)),
		}},
		TransportApiVersion: envoy_config_core_v3.ApiVersion_V3,
		FailureModeAllow:    false,
		WithRequestBody: &envoy_extensions_filters_http_ext_authz_v3.BufferSettings{
			MaxRequestBytes:     a.MaxRequestBytes,
			AllowPartialMessage: false,
			PackAsBytes:         true,
		},
		StatusOnError:          &envoy_type_v3.HttpStatus{Code: envoy_type_v3.StatusCode_ServiceUnavailable},
		ClearRouteCache:        false,
		IncludePeerCertificate: opts.IncludePeerCertificate,
	}
	any, err := marshalAny(ea)
	if err != nil {
		return nil, err
	}
	return &envoy_extensions_filters_network_http_connection_manager_v3.HttpFilter{
		Name:       ExtAuthzFilter,
		ConfigType: &envoy_extensions_filters_network_http_connection_manager_v3.HttpFilter_TypedConfig{TypedConfig: any},
		// gRPC-Go has no ext_authz client filter unless an experimental env var is
		// set; optional keeps it from NACKing the listener. Envoy must never skip it.
		IsOptional: opts.Flavour == FlavourGRPC,
	}, nil
}

func hcm(a config.Authz, opts Options) (*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager, error) {
	authz, err := extAuthzFilter(a, opts)
	if err != nil {
		return nil, err
	}
	router, err := marshalAny(&envoy_extensions_filters_http_router_v3.Router{})
	if err != nil {
		return nil, err
	}
	return &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{
		StatPrefix: "aisecops_egress",
		CodecType:  envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_AUTO,
		// Routes are prefix matches and ext_authz decides on the route's tool, so the
		// path must be canonical before either looks at it: without these,
		// /read/../admin matches the /read route and the upstream resolves it to
		// /admin. Escaped slashes are rejected (400) rather than unescaped and
		// redirected: a redirect would tell an agent which canonical path a route
		// expects and invite a second try, and no tool we front needs %2F or %5C in
		// a path. envoyconfig.CheckPathHandling refuses any HCM without these.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_REJECT_REQUEST,
		RouteSpecifier: &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager_Rds{Rds: &envoy_extensions_filters_network_http_connection_manager_v3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteConfigName,
		}},
		HttpFilters: []*envoy_extensions_filters_network_http_connection_manager_v3.HttpFilter{
			authz,
			{Name: RouterFilter, ConfigType: &envoy_extensions_filters_network_http_connection_manager_v3.HttpFilter_TypedConfig{TypedConfig: router}},
		},
	}, nil
}

func listener(f *config.File, opts Options) (*envoy_config_listener_v3.Listener, error) {
	m, err := hcm(f.Authz, opts)
	if err != nil {
		return nil, fmt.Errorf("listener: %w", err)
	}
	any, err := marshalAny(m)
	if err != nil {
		return nil, fmt.Errorf("listener: %w", err)
	}
	if opts.Flavour == FlavourGRPC {
		return &envoy_config_listener_v3.Listener{
			Name:        opts.ListenerName,
			ApiListener: &envoy_config_listener_v3.ApiListener{ApiListener: any},
		}, nil
	}
	addr := f.Listener.Address
	if addr == "" {
		addr = "0.0.0.0"
	}
	return &envoy_config_listener_v3.Listener{
		Name:    opts.ListenerName,
		Address: socketAddress(addr, f.Listener.Port),
		FilterChains: []*envoy_config_listener_v3.FilterChain{{
			Filters: []*envoy_config_listener_v3.Filter{{
				Name:       HCMFilter,
				ConfigType: &envoy_config_listener_v3.Filter_TypedConfig{TypedConfig: any},
			}},
		}},
	}, nil
}

func socketAddress(host string, port uint32) *envoy_config_core_v3.Address {
	return &envoy_config_core_v3.Address{Address: &envoy_config_core_v3.Address_SocketAddress{SocketAddress: &envoy_config_core_v3.SocketAddress{
		Address:       host,
		PortSpecifier: &envoy_config_core_v3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func routeConfiguration(tools []config.Tool, opts Options) (*envoy_config_route_v3.RouteConfiguration, error) {
	byHost := map[string][]config.Tool{}
	for _, t := range tools {
		h := strings.ToLower(t.Match.Host)
		byHost[h] = append(byHost[h], t)
	}
	hosts := make([]string, 0, len(byHost))
	for h := range byHost {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	rc := &envoy_config_route_v3.RouteConfiguration{Name: RouteConfigName}
	var errs []error
	for _, h := range hosts {
		ts := byHost[h]
		// Most specific prefix first: Envoy takes the first match. The authz
		// server's route table (config.RouteTable) uses the same order.
		config.SortRoutes(ts)
		vh := &envoy_config_route_v3.VirtualHost{Name: h, Domains: []string{h, h + ":*"}}
		for i, t := range ts {
			if i > 0 && ts[i-1].Match.PathPrefix == t.Match.PathPrefix {
				errs = append(errs, fmt.Errorf("tools %q and %q both match %s%s", ts[i-1].Name, t.Name, h, t.Match.PathPrefix))
				continue
			}
			r, err := toolRoute(t, opts)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			vh.Routes = append(vh.Routes, r)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	return rc, errors.Join(errs...)
}

func toolRoute(t config.Tool, opts Options) (*envoy_config_route_v3.Route, error) {
	per := &envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute{
		Override: &envoy_extensions_filters_http_ext_authz_v3.ExtAuthzPerRoute_CheckSettings{CheckSettings: &envoy_extensions_filters_http_ext_authz_v3.CheckSettings{
			ContextExtensions: ContextExtensions(t),
		}},
	}
	any, err := marshalAny(per)
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", t.Name, err)
	}
	if opts.Flavour == FlavourGRPC {
		// gRPC NACKs an override for a filter it does not know unless optional.
		any, err = marshalAny(&envoy_config_route_v3.FilterConfig{Config: any, IsOptional: true})
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", t.Name, err)
		}
	}
	return &envoy_config_route_v3.Route{
		Name:                 t.Name,
		Match:                &envoy_config_route_v3.RouteMatch{PathSpecifier: &envoy_config_route_v3.RouteMatch_Prefix{Prefix: t.Match.PathPrefix}},
		Action:               &envoy_config_route_v3.Route_Route{Route: routeAction(t)},
		TypedPerFilterConfig: map[string]*anypb.Any{ExtAuthzFilter: any},
	}, nil
}

// MCPIdleTimeout is how long an MCP route's stream may stay silent. MCP's
// Streamable HTTP keeps an event stream open (a GET) and may answer a call as
// a stream: Envoy's default route timeout (15 s) would cut them, and an MCP
// client gives up a session after a few reconnects that bring no event.
const MCPIdleTimeout = 5 * time.Minute

// routeAction sends a tool's requests to its cluster. An MCP server route has
// no overall timeout, only an idle one (MCPIdleTimeout).
func routeAction(t config.Tool) *envoy_config_route_v3.RouteAction {
	ra := &envoy_config_route_v3.RouteAction{
		ClusterSpecifier: &envoy_config_route_v3.RouteAction_Cluster{Cluster: ClusterName(t.Upstream)},
	}
	if len(t.MCPTools) > 0 {
		ra.Timeout = durationpb.New(0)
		ra.IdleTimeout = durationpb.New(MCPIdleTimeout)
	}
	return ra
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

func loadAssignment(cluster, host string, port uint32) *envoy_config_endpoint_v3.ClusterLoadAssignment {
	return &envoy_config_endpoint_v3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints: []*envoy_config_endpoint_v3.LocalityLbEndpoints{{
			// gRPC ignores a locality without an id and a non-zero weight.
			Locality:            &envoy_config_core_v3.Locality{Region: "aisecops", Zone: "default"},
			LoadBalancingWeight: wrapperspb.UInt32(1),
			LbEndpoints: []*envoy_config_endpoint_v3.LbEndpoint{{
				HostIdentifier: &envoy_config_endpoint_v3.LbEndpoint_Endpoint{Endpoint: &envoy_config_endpoint_v3.Endpoint{
					Address: socketAddress(host, port),
				}},
			}},
		}},
	}
}

// upstreamCluster builds a tool's cluster and, when discovered over EDS, its
// endpoints. Envoy resolves no names in EDS endpoints, so in the Envoy flavour a
// host name upstream is a LOGICAL_DNS cluster with its endpoint inline (the usual
// shape for a large external API) and only IP upstreams go through EDS. gRPC is
// always given EDS.
func upstreamCluster(name string, u config.Upstream, opts Options) (*envoy_config_cluster_v3.Cluster, *envoy_config_endpoint_v3.ClusterLoadAssignment) {
	c := &envoy_config_cluster_v3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(5 * time.Second),
		LbPolicy:       envoy_config_cluster_v3.Cluster_ROUND_ROBIN,
	}
	var cla *envoy_config_endpoint_v3.ClusterLoadAssignment
	if opts.Flavour == FlavourGRPC || isIP(u.Address) {
		c.ClusterDiscoveryType = &envoy_config_cluster_v3.Cluster_Type{Type: envoy_config_cluster_v3.Cluster_EDS}
		c.EdsClusterConfig = &envoy_config_cluster_v3.Cluster_EdsClusterConfig{EdsConfig: adsSource()}
		cla = loadAssignment(name, u.Address, u.Port)
	} else {
		c.ClusterDiscoveryType = &envoy_config_cluster_v3.Cluster_Type{Type: envoy_config_cluster_v3.Cluster_LOGICAL_DNS}
		c.LoadAssignment = loadAssignment(name, u.Address, u.Port)
	}
	// gRPC accepts upstream TLS only with xDS certificate providers; the gRPC
	// flavour is a test consumer over plaintext, so it carries no transport socket.
	if u.TLS && opts.Flavour == FlavourEnvoy {
		sni := cmp.Or(u.SNI, u.Address)
		tlsCtx := &envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext{
			Sni: sni,
			CommonTlsContext: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext{
				ValidationContextType: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext_ValidationContext{ValidationContext: &envoy_extensions_transport_sockets_tls_v3.CertificateValidationContext{
					TrustedCa: &envoy_config_core_v3.DataSource{Specifier: &envoy_config_core_v3.DataSource_Filename{Filename: opts.TrustedCA}},
					MatchTypedSubjectAltNames: []*envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher{{
						SanType: envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_DNS,
						Matcher: &envoy_type_matcher_v3.StringMatcher{MatchPattern: &envoy_type_matcher_v3.StringMatcher_Exact{Exact: sni}},
					}},
				}},
			},
		}
		if any, err := marshalAny(tlsCtx); err == nil {
			c.TransportSocket = &envoy_config_core_v3.TransportSocket{
				Name:       TLSSocket,
				ConfigType: &envoy_config_core_v3.TransportSocket_TypedConfig{TypedConfig: any},
			}
		}
	}
	return c, cla
}

// authzCluster is Envoy's cluster for the ext_authz gRPC service: HTTP/2, STATIC
// for an IP address, STRICT_DNS for a name (a compose or Kubernetes service).
func authzCluster(a config.Authz) (*envoy_config_cluster_v3.Cluster, error) {
	host, portStr, err := net.SplitHostPort(a.Address)
	if err != nil {
		return nil, fmt.Errorf("authz.address %q: %w", a.Address, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("authz.address %q: bad port", a.Address)
	}
	h2, err := marshalAny(&envoy_extensions_upstreams_http_v3.HttpProtocolOptions{
		UpstreamProtocolOptions: &envoy_extensions_upstreams_http_v3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &envoy_extensions_upstreams_http_v3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &envoy_extensions_upstreams_http_v3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &envoy_config_core_v3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	typ := envoy_config_cluster_v3.Cluster_STATIC
	if !isIP(host) {
		typ = envoy_config_cluster_v3.Cluster_STRICT_DNS
	}
	c := &envoy_config_cluster_v3.Cluster{
		Name:                          AuthzCluster,
		ConnectTimeout:                durationpb.New(time.Second),
		ClusterDiscoveryType:          &envoy_config_cluster_v3.Cluster_Type{Type: typ},
		LbPolicy:                      envoy_config_cluster_v3.Cluster_ROUND_ROBIN,
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		LoadAssignment:                loadAssignment(AuthzCluster, host, uint32(port)),
	}
	if a.TLS != nil {
		ts, err := authzTransportSocket(a.TLS, host)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return c, nil
}

// authzTransportSocket is Envoy's mTLS to the authz service: its client
// certificate, the authz CA, the server name checked against the
// certificate's SANs, and ALPN h2 (gRPC-Go servers refuse TLS without it).
func authzTransportSocket(t *config.AuthzTLS, host string) (*envoy_config_core_v3.TransportSocket, error) {
	san := &envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher{SanType: envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_DNS}
	sni := t.SNI
	switch {
	case sni != "":
	case isIP(host):
		san.SanType = envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher_IP_ADDRESS
	default:
		sni = host
	}
	san.Matcher = &envoy_type_matcher_v3.StringMatcher{MatchPattern: &envoy_type_matcher_v3.StringMatcher_Exact{Exact: cmp.Or(sni, host)}}
	file := func(p string) *envoy_config_core_v3.DataSource {
		return &envoy_config_core_v3.DataSource{Specifier: &envoy_config_core_v3.DataSource_Filename{Filename: p}}
	}
	any, err := marshalAny(&envoy_extensions_transport_sockets_tls_v3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext{
			AlpnProtocols:   []string{"h2"},
			TlsCertificates: []*envoy_extensions_transport_sockets_tls_v3.TlsCertificate{{CertificateChain: file(t.CertFile), PrivateKey: file(t.KeyFile)}},
			ValidationContextType: &envoy_extensions_transport_sockets_tls_v3.CommonTlsContext_ValidationContext{ValidationContext: &envoy_extensions_transport_sockets_tls_v3.CertificateValidationContext{
				TrustedCa:                 file(t.CAFile),
				MatchTypedSubjectAltNames: []*envoy_extensions_transport_sockets_tls_v3.SubjectAltNameMatcher{san},
			}},
		},
	})
	if err != nil {
		return nil, err
	}
	return &envoy_config_core_v3.TransportSocket{Name: TLSSocket, ConfigType: &envoy_config_core_v3.TransportSocket_TypedConfig{TypedConfig: any}}, nil
}

// Rehash recomputes Version after the caller composed a set from other sets'
// resources (the intermediate steps of a make-before-break rollout).
func (r *Resources) Rehash() error {
	v, err := r.hash()
	if err != nil {
		return err
	}
	r.Version = v
	return nil
}
