package extauthz

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/aisecops/aisecops-envoy/extauthz/egress"
	"github.com/aisecops/aisecops-envoy/extauthz/finding"
	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// Inspection is what egress inspection found in one request.
type Inspection struct {
	Findings []finding.Finding
	// Provenance labels the context firewall derived from an LLM request
	// (the messages carrying untrusted content), for the audit record.
	Provenance []plan.Provenance
}

// Findings is what the inspect stage knows about the call's payload and context.
type Findings struct {
	List []finding.Finding
	// Untrusted: the call's context is untrusted, because a provenance label
	// says so or instructions were injected into it (AIS-CTX-01).
	Untrusted bool
	// Derived are the provenance labels the context firewall derived.
	Derived []plan.Provenance
}

// Classes are the distinct finding classes, in order of first appearance.
func (f Findings) Classes() []string {
	var out []string
	for _, x := range f.List {
		if !slices.Contains(out, x.Class) {
			out = append(out, x.Class)
		}
	}
	return out
}

// inspect: Plan → Findings. An inspector error is a deny (egress_blocked, or
// deadline_exceeded when the Check's deadline stopped it).
func inspect(ctx context.Context, p *plan.Plan, tool config.Tool, in Inspector) (Findings, *reason.Error) {
	f := Findings{Untrusted: slices.ContainsFunc(p.Provenance, func(l plan.Provenance) bool { return risk.Untrusted(l.TrustLevel) })}
	if in == nil {
		return f, nil
	}
	ins, err := in.Inspect(ctx, p, tool, f.Untrusted)
	if err != nil && ctx.Err() != nil {
		return f, reason.Wrap(reason.DeadlineExceeded, err, "the check deadline passed during inspection")
	}
	f.List, f.Derived = ins.Findings, ins.Provenance
	if slices.ContainsFunc(f.List, func(x finding.Finding) bool { return x.Class == finding.Injection }) {
		// Injected instructions make the whole step untrusted context, which
		// the run remembers.
		f.Untrusted = true
	}
	return f, asReason(err, reason.EgressBlocked)
}

// Redact implements Inspector.
func (e *EgressInspector) Redact(v string) string { return e.in.Redact(v) }

// MaskSecrets returns an agent-written string as an approver may read it:
// unchanged, or a keyed hash when it carries a secret.
func (e *EgressInspector) MaskSecrets(v string) string { return e.in.MaskSecrets(v) }

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
func (e *EgressInspector) Inspect(ctx context.Context, p *plan.Plan, tool config.Tool, untrusted bool) (Inspection, error) {
	path, query, _ := strings.Cut(p.RawPath, "?")
	routeHost := tool.Match.Host
	req := &egress.Request{
		Method: p.Method, Host: p.Headers["host"], Authority: p.Host, Path: path, RawQuery: query,
		Headers: p.Headers, ContentType: p.ContentType, ContentEncoding: p.ContentEncoding, Body: p.Body,
		ToolClass: p.Route.ToolClass, RouteHost: routeHost, UntrustedContext: untrusted,
		TrustFirstUserMessage: tool.TrustFirstUserMessage, Cancel: ctx.Done(),
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
	out := Inspection{Findings: res.Findings}
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
