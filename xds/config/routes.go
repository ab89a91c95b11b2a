package config

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
)

// RouteTable resolves a request to the tool whose route Envoy would take for
// it, from the same file the control plane translates into Envoy's route
// configuration: the virtual host whose domain is the request's host
// (case-insensitive, port ignored), then, within it, the first route whose
// path prefix the request's normalised path starts with, in SortRoutes order
// (the order the translated routes have). It is immutable.
type RouteTable struct {
	byHost map[string][]Tool
}

// NewRouteTable indexes tools by host, each host's tools in route order.
func NewRouteTable(tools []Tool) *RouteTable {
	rt := &RouteTable{byHost: map[string][]Tool{}}
	for _, t := range tools {
		h := strings.ToLower(t.Match.Host)
		rt.byHost[h] = append(rt.byHost[h], t)
	}
	for _, ts := range rt.byHost {
		SortRoutes(ts)
	}
	return rt
}

// Resolve returns the tool a request to host (lowercase, no port) and path
// (normalised, no query) is routed to.
func (rt *RouteTable) Resolve(host, path string) (Tool, bool) {
	for _, t := range rt.byHost[host] {
		if strings.HasPrefix(path, t.Match.PathPrefix) {
			return t, true
		}
	}
	return Tool{}, false
}

// SortRoutes orders one host's tools as Envoy must try them: the most
// specific (longest) path prefix first, then by prefix and name so the order
// is deterministic. Envoy takes the first route that matches.
func SortRoutes(ts []Tool) {
	slices.SortFunc(ts, func(a, b Tool) int {
		if c := cmp.Compare(len(b.Match.PathPrefix), len(a.Match.PathPrefix)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Match.PathPrefix, b.Match.PathPrefix); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

// RouteVersion is the content hash of one tool's declaration: the control
// plane sends it as the route's route_version and the authz server records the
// version of the route it decided under.
func RouteVersion(t Tool) string {
	b, err := json.Marshal(t)
	if err != nil { // a Tool always marshals; keep the function total anyway
		return "unknown"
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:12]
}
