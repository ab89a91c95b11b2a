package plan

import "encoding/json"

// Route is the tool identity Envoy attaches to the Check through the route's
// per-route ext_authz context_extensions. It comes from the control plane, never
// from the agent.
type Route struct {
	Tool         string   `json:"tool"`
	ToolClass    string   `json:"tool_class"` // read | write | external_send | exec | llm
	BaseRisk     float64  `json:"base_risk"`
	Trust        string   `json:"trust"` // internal | neutral | untrusted
	Cost         float64  `json:"cost"`
	RouteVersion string   `json:"route_version"`
	MCPTools     []string `json:"mcp_tools,omitempty"` // from "mcp_tools": comma-separated
}

// Provenance is one label of the context that led to this call
// (x-aisecops-provenance, base64url JSON list).
type Provenance struct {
	SourceType string `json:"source_type"`
	SourceName string `json:"source_name"`
	TrustLevel string `json:"trust_level"`
	SourceHash string `json:"source_hash,omitempty"`
}

// Call is one tool invocation found in the request.
type Call struct {
	Tool      string          `json:"tool"`      // the tool as the agent named it (plan tool or MCP params.name)
	Arguments json.RawMessage `json:"arguments"` // canonical JSON object ("{}" when absent)
}

// Source says where the plan came from.
type Source string

const (
	SourceNone   Source = "none"   // no plan: an opaque or non-JSON body, or no body
	SourcePlan   Source = "plan"   // plain JSON execution plan body
	SourceMCP    Source = "mcp"    // MCP JSON-RPC body
	SourceHeader Source = "header" // x-aisecops-plan header only
	SourceLLM    Source = "llm"    // LLM API request on an llm route
)

// Plan is everything the rest of the pipeline needs from one CheckRequest.
type Plan struct {
	RequestID string // attributes.request.http.id (x-request-id); "" when Envoy sent none
	Route     Route

	Method  string // :method
	Host    string // :authority / host, lowercased, port stripped
	Path    string // normalised as the upstream will route it ("//a/../b" → "/b")
	RawPath string // path exactly as received
	Query   string // the raw query after '?' ("" when none), fragment dropped

	Token      string // capability token: authorization, or x-aisecops-token on llm routes (never logged, never audited)
	RunID      string // x-aisecops-run-id, else Mcp-Session-Id, else trace id
	TraceID    string // x-aisecops-trace-id, else the plan's trace_id
	Provenance []Provenance
	DryRun     bool
	Explain    bool
	ApprovalID string

	Source    Source
	AgentID   string // agent_id the plan claims ("" when none); the token decides who the agent is
	MCPMethod string // JSON-RPC method for MCP bodies ("tools/call", "initialize", …); "batch" for a batch without a call
	// MCPMethods is the method of every message of an MCP body in order ("" for a
	// JSON-RPC response), so policy can see every element of a batch.
	MCPMethods []string
	// RPCIDs is the id of every message of an MCP body in order (nil for a
	// notification or a response), so a denial can answer each request in
	// JSON-RPC.
	RPCIDs []json.RawMessage
	Calls  []Call // tool invocations; at most one per Check (see package doc)

	// InputHeaders lists the names of every x-aisecops-* header, and of
	// authorization except on llm routes, that the request carried: they are
	// removed before the upstream.
	InputHeaders []string

	// Headers are the request headers that reach the upstream (lowercase names,
	// repeated ones joined with ","), without pseudo-headers, authorization or
	// x-aisecops-* inputs: what egress inspection looks at.
	Headers         map[string]string
	ContentType     string
	ContentEncoding string
	// RawBody is the body as Envoy sent it (raw_body preferred); Body is the
	// same body as text (UTF-8) the way the upstream reads it: what parsing,
	// scanning and policy look at.
	RawBody []byte
	Body    []byte

	doc *value // the parsed JSON body, when it is JSON (see Fields)
}

// RequestDigest is the SHA-256 of the exact request the upstream receives:
// method, normalised path, query and body bytes. An approval binds to it, so
// an approved call cannot be swapped for another one under the same run.
func (p *Plan) RequestDigest() string {
	return Hash([]byte(p.Method), []byte(p.Path), []byte(p.Query), p.RawBody)
}

// CallDigest is what an approval binds to: the RequestDigest, except for an
// MCP tools/call, where it is the call itself — method, normalised path,
// query, tool name and canonical arguments — because an MCP client gives every
// message a new JSON-RPC id, so the retry of an approved call never repeats
// the body's bytes. Nothing an MCP server acts on is left out: the envelope
// the strict parser accepts around params.name and params.arguments is the
// id and the version.
func (p *Plan) CallDigest() string {
	if p.Source != SourceMCP || len(p.Calls) != 1 || len(p.MCPMethods) != 1 {
		return p.RequestDigest()
	}
	c := p.Calls[0]
	return Hash([]byte(p.Method), []byte(p.Path), []byte(p.Query), []byte("mcp:tools/call"), []byte(c.Tool), c.Arguments)
}

// Protocol reports whether the request is protocol traffic on an MCP route —
// initialize, tools/list, notifications, a GET that opens the event stream,
// the DELETE that ends a session: anything but a tools/call. It is decided
// like any request but reaches no tool, so it is not counted as a step of the
// run.
func (p *Plan) Protocol() bool {
	return len(p.Route.MCPTools) > 0 && len(p.Calls) == 0
}

// Call0 returns the plan's tool call, or a zero Call when there is none.
func (p *Plan) Call0() Call {
	if len(p.Calls) == 0 {
		return Call{Arguments: json.RawMessage("{}")}
	}
	return p.Calls[0]
}
