package plan

import (
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// Defaults applied to zero (or negative) Options fields.
const (
	DefaultMaxBodyBytes   = 1 << 20  // Envoy's max_request_bytes in the shipped config
	DefaultMaxHeaderBytes = 64 << 10 // one header value; Envoy's own default cap is 60 KiB for all of them
	DefaultMaxTokenBytes  = 8 << 10
	DefaultMaxJSONDepth   = 64
	DefaultMaxProvenance  = 64
	DefaultMaxBatch       = 64
)

// Options bound the work FromCheckRequest does on one request.
type Options struct {
	MaxBodyBytes   int // larger bodies are partial_body
	MaxHeaderBytes int // one header value other than authorization; larger is bad_request
	MaxTokenBytes  int // bearer token; larger is token_too_large
	MaxJSONDepth   int // nesting of objects and arrays
	MaxProvenance  int // labels in x-aisecops-provenance
	MaxBatch       int // elements in a JSON-RPC batch
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MaxBodyBytes, DefaultMaxBodyBytes)
	def(&o.MaxHeaderBytes, DefaultMaxHeaderBytes)
	def(&o.MaxTokenBytes, DefaultMaxTokenBytes)
	def(&o.MaxJSONDepth, DefaultMaxJSONDepth)
	def(&o.MaxProvenance, DefaultMaxProvenance)
	def(&o.MaxBatch, DefaultMaxBatch)
	return o
}

// Resolver decides which route a request is on, from the Check's context
// extensions and the request line as the upstream will route it (host
// lowercased without its port, path normalised without its query). Its errors
// are *reason.Error (route_unconfigured).
type Resolver func(ext map[string]string, method, host, path string) (Route, error)

// ExtensionRoutes is the Resolver that believes the context extensions alone:
// what a deployment without a routes file of its own can do. The authz server
// resolves against its routes file instead (see extauthz).
func ExtensionRoutes(ext map[string]string, _, _, _ string) (Route, error) {
	return RouteFromExtensions(ext)
}

// FromCheckRequest parses one Check into a Plan, its route taken from the
// context extensions (ExtensionRoutes).
func FromCheckRequest(req *envoy_service_auth_v3.CheckRequest, opts Options) (*Plan, error) {
	return Parse(req, opts, ExtensionRoutes)
}

// Parse parses one Check into a Plan on the route resolve decides. Every
// error is a *reason.Error; it never panics, whatever the request holds. A
// Plan returned with an error holds what was parsed before it (the route,
// when known), for the audit line.
func Parse(req *envoy_service_auth_v3.CheckRequest, opts Options, resolve Resolver) (p *Plan, err error) {
	defer func() {
		if err != nil && p != nil {
			p.Calls = nil // a partial plan names its route, never a call to decide on
		}
	}()
	o := opts.withDefaults()
	if req == nil {
		return nil, reason.New(reason.BadRequest, "empty check request")
	}
	attrs := req.GetAttributes()
	hr := attrs.GetRequest().GetHttp()
	if hr == nil {
		return nil, reason.New(reason.BadRequest, "check request carries no HTTP request")
	}
	if id := hr.GetId(); id != "" && !validID(id, idChars) {
		return nil, reason.New(reason.BadRequest, "request id is not valid")
	}
	p = &Plan{RequestID: hr.GetId(), Source: SourceNone}

	h, err := collectHeaders(hr, o)
	if err != nil {
		return nil, err
	}
	if err := requestLine(p, h, hr); err != nil {
		return nil, err
	}
	route, err := resolve(attrs.GetContextExtensions(), p.Method, p.Host, p.Path)
	if err != nil {
		return nil, err
	}
	p.Route = route
	if err := h.apply(p, o, route.ToolClass == "llm"); err != nil {
		return p, err
	}

	// The partial-body marker is checked before the body is looked at: a cut
	// body may end right before the argument that matters.
	if h.partial {
		return p, reason.New(reason.PartialBody, "request body was truncated")
	}
	body := hr.GetRawBody()
	if len(body) == 0 && hr.GetBody() != "" {
		body = []byte(hr.GetBody())
	}
	if len(body) > o.MaxBodyBytes {
		return p, reason.New(reason.PartialBody, "request body is over the size limit")
	}
	// size is the request's Content-Length (-1 when unknown): a body shorter than
	// it is a body Envoy did not send us in full, whatever the header says.
	if size := hr.GetSize(); size > int64(len(body)) {
		return p, reason.New(reason.PartialBody, "request body was truncated")
	}
	if len(body) > 0 && h.encoded {
		return p, reason.New(reason.BadPlan, "content-encoded request bodies are not accepted")
	}
	p.ContentType = h.contentType.v
	if len(body) > 0 {
		p.RawBody = body
		if p.Body, err = bodyText(route, body, h.contentType.v); err != nil {
			return p, err
		}
	}

	bi, err := parseBody(route, p.Body, h.contentType.v, o)
	if err != nil {
		return p, err
	}
	p.doc = bi.doc
	var hp *planDoc
	if h.plan.n > 0 {
		if hp, err = parsePlanHeader(h.plan.v, o); err != nil {
			return p, err
		}
	}
	if err := merge(p, bi, hp); err != nil {
		return p, err
	}
	for _, c := range p.Calls {
		if err := CheckTool(route, p.Source, c); err != nil {
			return p, err
		}
	}

	if p.TraceID == "" {
		p.TraceID = bi.traceID
		if hp != nil && p.TraceID == "" {
			p.TraceID = hp.traceID
		}
	}
	if p.RunID == "" {
		p.RunID = h.session.v
	}
	if p.RunID == "" {
		p.RunID = p.TraceID
	}
	return p, nil
}

// stateChanging are the route classes whose bodies must be readable: an
// undecodable or undeclared-compressed body could carry a call or data we
// cannot see, and the upstream may still read it.
var stateChanging = map[string]bool{"write": true, "external_send": true, "exec": true}

// bodyText is the body as the upstream reads it: decoded from whatever
// Unicode encoding it is in (DecodeText). On a state-changing route a body
// that cannot be decoded, or that is compressed without a Content-Encoding
// saying so, is refused; elsewhere it stays opaque bytes, scanned as they are.
// NUL-interleaved text that reads as JSON is refused everywhere: no JSON
// parser accepts a NUL, so upstreams that strip them and ones that reject
// them would disagree.
func bodyText(route Route, body []byte, contentType string) ([]byte, error) {
	if c := SniffCompression(body); c != "" && stateChanging[route.ToolClass] {
		return nil, badPlan("the body is %s-compressed without a Content-Encoding saying so", c)
	}
	text, enc, err := DecodeText(body, contentType, 0)
	if err != nil {
		if stateChanging[route.ToolClass] || len(route.MCPTools) > 0 {
			return nil, err
		}
		return body, nil
	}
	if enc.NULs && looksJSON(text) {
		return nil, badPlan("the body interleaves NUL bytes with JSON text")
	}
	return text, nil
}

// merge combines the body's plan with the x-aisecops-plan header's.
func merge(p *Plan, bi bodyInfo, hp *planDoc) error {
	p.Source = bi.source
	p.MCPMethod = bi.mcpMethod
	p.MCPMethods = bi.mcpMethods
	p.RPCIDs = bi.rpcIDs
	p.AgentID = bi.agentID
	if bi.call != nil {
		p.Calls = []Call{*bi.call}
	}
	if hp == nil {
		return nil
	}
	switch {
	case bi.call != nil:
		if hp.call.Tool != bi.call.Tool || string(hp.call.Arguments) != string(bi.call.Arguments) {
			return reason.New(reason.PlanConflict, "plan header and body name different calls")
		}
		if hp.agentID != "" && bi.agentID != "" && hp.agentID != bi.agentID {
			return reason.New(reason.PlanConflict, "plan header and body name different agents")
		}
		if hp.traceID != "" && bi.traceID != "" && hp.traceID != bi.traceID {
			return reason.New(reason.PlanConflict, "plan header and body name different traces")
		}
	case bi.source == SourceMCP || bi.source == SourceLLM:
		return reason.New(reason.PlanConflict, "plan header names a call the body does not make")
	default:
		p.Source = SourceHeader
		p.Calls = []Call{hp.call}
	}
	if p.AgentID == "" {
		p.AgentID = hp.agentID
	}
	return nil
}

// Route context extension keys, set per route by the control plane.
const (
	extTool         = "tool"
	extToolClass    = "tool_class"
	extBaseRisk     = "base_risk"
	extTrust        = "trust"
	extCost         = "cost"
	extRouteVersion = "route_version"
	extMCPTools     = "mcp_tools"
)

// RouteFromExtensions reads a Route from a Check's context extensions, as the
// control plane sets them per route.
func RouteFromExtensions(ext map[string]string) (Route, error) {
	var r Route
	get := func(k string) (string, error) {
		v, ok := ext[k]
		if !ok || v == "" {
			return "", reason.New(reason.RouteUnconfigured, "route has no %s context extension", k)
		}
		if !utf8.ValidString(v) {
			return "", reason.New(reason.RouteUnconfigured, "route context extension %s is not valid", k)
		}
		return v, nil
	}
	bad := func(k string) error {
		return reason.New(reason.RouteUnconfigured, "route context extension %s is not valid", k)
	}
	var err error
	if r.Tool, err = get(extTool); err != nil {
		return Route{}, err
	}
	if !validID(r.Tool, toolChars) {
		return Route{}, bad(extTool)
	}
	if r.ToolClass, err = get(extToolClass); err != nil {
		return Route{}, err
	}
	switch r.ToolClass {
	case "read", "write", "external_send", "exec", "llm":
	default:
		return Route{}, bad(extToolClass)
	}
	s, err := get(extBaseRisk)
	if err != nil {
		return Route{}, err
	}
	if r.BaseRisk, err = strconv.ParseFloat(s, 64); err != nil || math.IsNaN(r.BaseRisk) || r.BaseRisk < 0 || r.BaseRisk > 10 {
		return Route{}, bad(extBaseRisk)
	}
	if r.Trust, err = get(extTrust); err != nil {
		return Route{}, err
	}
	switch r.Trust {
	case "internal", "neutral", "untrusted":
	default:
		return Route{}, bad(extTrust)
	}
	if s, err = get(extCost); err != nil {
		return Route{}, err
	}
	if r.Cost, err = strconv.ParseFloat(s, 64); err != nil || math.IsNaN(r.Cost) || math.IsInf(r.Cost, 0) || r.Cost < 0 {
		return Route{}, bad(extCost)
	}
	if r.RouteVersion, err = get(extRouteVersion); err != nil {
		return Route{}, err
	}
	if len(r.RouteVersion) > 256 {
		return Route{}, bad(extRouteVersion)
	}
	if s, ok := ext[extMCPTools]; ok && s != "" {
		for t := range strings.SplitSeq(s, ",") {
			t = strings.TrimSpace(t)
			if !validID(t, toolChars) {
				return Route{}, bad(extMCPTools)
			}
			r.MCPTools = append(r.MCPTools, t)
		}
	}
	return r, nil
}

// Character sets of the identifiers we accept. Ids end up in Redis keys, audit
// lines and metrics, so they are kept to characters with no meaning there.
const (
	idChars      = "._:@-"
	sessionChars = "._:@-+/=~" // MCP session ids are often base64
	toolChars    = "._:/-"
)

const maxIDLen = 128

// validID reports whether s is 1..128 ASCII letters, digits or bytes of extra.
func validID(s, extra string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') {
			continue
		}
		if strings.IndexByte(extra, c) < 0 {
			return false
		}
	}
	return true
}
