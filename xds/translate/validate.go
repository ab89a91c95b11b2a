package translate

import (
	"errors"
	"fmt"

	envoy_config_listener_v3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/aisecops/aisecops-envoy/xds/envoyconfig"
)

// Validate checks every resource against Envoy's API (ValidateAll on it and on
// every Any inside it, filter placement), then the references between them.
// Nothing is pushed unless this passes.
func (r *Resources) Validate() error {
	var errs []error
	for _, m := range r.All() {
		if err := envoyconfig.Validate(m); err != nil {
			errs = append(errs, err)
		}
	}
	for _, l := range r.Listeners {
		if err := envoyconfig.CheckListener(l); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, r.CheckReferences())
	return errors.Join(errs...)
}

// CheckReferences follows listener → route configuration → clusters → endpoints
// and reports every dangling or unused link. go-control-plane's
// Snapshot.Consistent does not look inside api_listener, and a route naming a
// missing cluster is ACKed and fails later, so this is checked here.
func (r *Resources) CheckReferences() error {
	var errs []error
	routes := map[string]*envoy_config_route_v3.RouteConfiguration{}
	for _, rc := range r.Routes {
		if routes[rc.GetName()] != nil {
			errs = append(errs, fmt.Errorf("route configuration %q declared twice", rc.GetName()))
		}
		routes[rc.GetName()] = rc
	}
	clusters := map[string]bool{}
	needEDS := map[string]bool{}
	for _, c := range r.Clusters {
		if c.GetName() == "" {
			errs = append(errs, errors.New("cluster with an empty name"))
		}
		if clusters[c.GetName()] {
			errs = append(errs, fmt.Errorf("cluster %q declared twice", c.GetName()))
		}
		clusters[c.GetName()] = true
		if c.GetEdsClusterConfig() != nil {
			needEDS[c.GetName()] = true
		} else if len(c.GetLoadAssignment().GetEndpoints()) == 0 {
			errs = append(errs, fmt.Errorf("cluster %q has no endpoints", c.GetName()))
		}
	}
	usedRoutes := map[string]bool{}
	usedClusters := map[string]bool{}
	for _, l := range r.Listeners {
		for _, h := range listenerHCMs(l.GetFilterChains(), l.GetApiListener().GetApiListener()) {
			name := h.GetRds().GetRouteConfigName()
			if name == "" {
				errs = append(errs, fmt.Errorf("listener %q: no RDS route configuration", l.GetName()))
				continue
			}
			usedRoutes[name] = true
			if routes[name] == nil {
				errs = append(errs, fmt.Errorf("listener %q: route configuration %q is missing", l.GetName(), name))
			}
			for _, f := range h.GetHttpFilters() {
				if f.GetName() == ExtAuthzFilter && !f.GetIsOptional() {
					usedClusters[AuthzCluster] = true
					if !clusters[AuthzCluster] {
						errs = append(errs, fmt.Errorf("listener %q: ext_authz cluster %q is missing", l.GetName(), AuthzCluster))
					}
				}
			}
		}
	}
	for name, rc := range routes {
		if !usedRoutes[name] {
			errs = append(errs, fmt.Errorf("route configuration %q is not used by any listener", name))
		}
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				c := rt.GetRoute().GetCluster()
				usedClusters[c] = true
				if !clusters[c] {
					errs = append(errs, fmt.Errorf("route %q: cluster %q is missing", rt.GetName(), c))
				}
			}
		}
	}
	endpoints := map[string]bool{}
	for _, e := range r.Endpoints {
		n := e.GetClusterName()
		if endpoints[n] {
			errs = append(errs, fmt.Errorf("endpoints for %q declared twice", n))
		}
		endpoints[n] = true
		if !needEDS[n] {
			errs = append(errs, fmt.Errorf("endpoints for %q: no EDS cluster of that name", n))
		}
		if len(e.GetEndpoints()) == 0 {
			errs = append(errs, fmt.Errorf("endpoints for %q: empty", n))
		}
	}
	for n := range needEDS {
		if !endpoints[n] {
			errs = append(errs, fmt.Errorf("cluster %q: endpoints are missing", n))
		}
	}
	for n := range clusters {
		if !usedClusters[n] {
			errs = append(errs, fmt.Errorf("cluster %q is not used by any route", n))
		}
	}
	return errors.Join(errs...)
}

func listenerHCMs(chains []*envoy_config_listener_v3.FilterChain, api *anypb.Any) []*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager {
	var out []*envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager
	unpack := func(a *anypb.Any) {
		h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
		if a != nil && a.MessageIs(h) && a.UnmarshalTo(h) == nil {
			out = append(out, h)
		}
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			unpack(f.GetTypedConfig())
		}
	}
	unpack(api)
	return out
}
