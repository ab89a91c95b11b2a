package extauthz

import (
	"strconv"
	"strings"

	"github.com/aisecops/aisecops-envoy/extauthz/egress"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Inspection is what egress inspection found in one request.
type Inspection struct {
	Findings []policy.Finding
	// Provenance labels the context firewall derived from an LLM request
	// (the messages carrying untrusted content), for the audit line.
	Provenance []plan.Provenance
}

// EgressInspector runs the egress package's inspector on the Check path.
type EgressInspector struct{ in *egress.Inspector }

var _ Inspector = (*EgressInspector)(nil)

// NewEgressInspector returns an inspector whose finding hashes are keyed with
// key (at least egress.MinKeyBytes), so they correlate within a deployment but
// cannot be brute-forced from the audit log.
func NewEgressInspector(key []byte) (*EgressInspector, error) {
	in, err := egress.NewInspector(key, egress.Limits{})
	if err != nil {
		return nil, err
	}
	return &EgressInspector{in: in}, nil
}

// Inspect implements Inspector.
func (e *EgressInspector) Inspect(p *plan.Plan, tool config.Tool, untrusted bool) (Inspection, error) {
	path, query, _ := strings.Cut(p.RawPath, "?")
	routeHost := tool.Match.Host
	if routeHost == "" {
		// A route this replica's configuration does not describe: Envoy routed
		// the request by its host, so that host is the route's.
		routeHost = p.Host
	}
	req := &egress.Request{
		Method: p.Method, Host: p.Headers["host"], Authority: p.Host, Path: path, RawQuery: query,
		Headers: p.Headers, ContentType: p.ContentType, ContentEncoding: p.ContentEncoding, Body: p.Body,
		ToolClass: p.Route.ToolClass, RouteHost: routeHost, UntrustedContext: untrusted,
	}
	if len(p.Calls) > 0 {
		req.Arguments = p.Calls[0].Arguments
	}
	pol := &egress.Policy{DestinationArgs: tool.DestinationArgs, Destinations: tool.Destinations}
	// Besides the route's host, a request may name its upstream and the
	// destinations the tool declares (a fetch tool's allowed API hosts).
	if tool.Upstream.Address != "" && tool.Upstream.Address != routeHost {
		pol.AllowedHosts = append(pol.AllowedHosts, tool.Upstream.Address)
	}
	for _, d := range tool.Destinations {
		if !strings.HasPrefix(d, "#") && !strings.HasPrefix(d, "@") {
			pol.AllowedHosts = append(pol.AllowedHosts, d)
		}
	}
	res, err := e.in.Inspect(req, pol)
	out := Inspection{Findings: make([]policy.Finding, len(res.Findings))}
	for i, f := range res.Findings {
		out.Findings[i] = policy.Finding{Detector: f.Detector, Location: f.Location, Count: f.Count, Hash: f.Hash, Class: f.Class}
	}
	if s := res.LLM; s != nil {
		for i, u := range s.Untrusted {
			label := plan.Provenance{SourceType: "llm_message", SourceName: s.Format + "[" + strconv.Itoa(u) + "]", TrustLevel: "untrusted"}
			if i < len(s.Hashes) {
				label.SourceHash = s.Hashes[i]
			}
			out.Provenance = append(out.Provenance, label)
		}
	}
	return out, err
}
