package plan

import (
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// bodyInfo is what the body says about the call.
type bodyInfo struct {
	doc        *value // the parsed JSON body, when it is JSON
	source     Source
	mcpMethod  string
	mcpMethods []string
	rpcIDs     []json.RawMessage
	agentID    string
	traceID    string
	call       *Call
}

// planDoc is a parsed plain execution plan.
type planDoc struct {
	agentID string
	traceID string
	call    Call
}

// Keys of a plain execution plan and of a JSON-RPC 2.0 message.
var (
	planKeys     = []string{"agent_id", "tool", "arguments", "trace_id"}
	rpcKeys      = []string{"jsonrpc", "method", "params", "id", "result", "error"}
	callKeys     = []string{"name", "arguments"}
	classifyKeys = []string{"jsonrpc", "tool", "method"}
)

const (
	mcpToolsCall = "tools/call"
	mcpBatch     = "batch" // MCPMethod of a batch that makes no call
	maxToolName  = 256
)

func badPlan(format string, args ...any) *reason.Error {
	return reason.New(reason.BadPlan, format, args...)
}

// jsonMediaType reports whether a Content-Type names JSON.
func jsonMediaType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// looksJSON reports whether body starts like a JSON object or array, after
// JSON whitespace or a UTF-8 BOM (some parsers skip one).
func looksJSON(body []byte) bool {
	if len(body) >= 3 && body[0] == 0xEF && body[1] == 0xBB && body[2] == 0xBF {
		body = body[3:]
	}
	for _, c := range body {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[':
			return true
		}
		return false
	}
	return false
}

// parseBody classifies and parses the request body.
func parseBody(route Route, body []byte, contentType string, o Options) (bodyInfo, error) {
	none := bodyInfo{source: SourceNone}
	if len(body) == 0 {
		return none, nil
	}
	mcpRoute := len(route.MCPTools) > 0
	if !jsonMediaType(contentType) && !looksJSON(body) {
		if mcpRoute {
			return bodyInfo{}, badPlan("body on an MCP route is not JSON-RPC")
		}
		return none, nil
	}
	doc, err := parseStrict(body, o.MaxJSONDepth)
	if err != nil {
		return bodyInfo{}, err
	}
	bi, err := classify(route, &doc, mcpRoute, o)
	bi.doc = &doc
	return bi, err
}

func classify(route Route, doc *value, mcpRoute bool, o Options) (bodyInfo, error) {
	if route.ToolClass == "llm" {
		// The LLM request itself is read by the context firewall; here it only
		// has to be strict JSON.
		return bodyInfo{source: SourceLLM}, nil
	}
	switch doc.kind {
	case kindObject:
		return parseObjectBody(doc, mcpRoute)
	case kindArray:
		return parseBatch(doc, mcpRoute, o)
	}
	if mcpRoute {
		return bodyInfo{}, badPlan("body on an MCP route is not JSON-RPC")
	}
	return bodyInfo{source: SourceNone}, nil
}

func parseObjectBody(doc *value, mcpRoute bool) (bodyInfo, error) {
	if doc.caseVariant(classifyKeys...) {
		return bodyInfo{}, badPlan("body has a case-variant plan key")
	}
	_, isRPC := doc.get("jsonrpc")
	_, isPlan := doc.get("tool")
	switch {
	case isRPC && isPlan:
		return bodyInfo{}, badPlan("body is both a plan and a JSON-RPC message")
	case isRPC:
		method, call, err := parseRPC(doc)
		if err != nil {
			return bodyInfo{}, err
		}
		return bodyInfo{source: SourceMCP, mcpMethod: method, mcpMethods: []string{method}, rpcIDs: []json.RawMessage{rpcID(doc)}, call: call}, nil
	case isPlan:
		pd, err := parsePlanObject(doc, false)
		if err != nil {
			return bodyInfo{}, err
		}
		return bodyInfo{source: SourcePlan, agentID: pd.agentID, traceID: pd.traceID, call: &pd.call}, nil
	}
	// A tools/call without "jsonrpc" would still be run by a lenient server.
	if m, ok := doc.get("method"); ok && m.kind == kindString && strings.EqualFold(m.str, mcpToolsCall) {
		return bodyInfo{}, badPlan("body is a JSON-RPC message without jsonrpc 2.0")
	}
	if mcpRoute {
		return bodyInfo{}, badPlan("body on an MCP route is not JSON-RPC")
	}
	return bodyInfo{source: SourceNone}, nil
}

// parseBatch evaluates every element of a JSON array body. An array with no
// plan or JSON-RPC element is opaque data (a REST bulk body).
func parseBatch(doc *value, mcpRoute bool, o Options) (bodyInfo, error) {
	if len(doc.elems) == 0 {
		if mcpRoute {
			return bodyInfo{}, reason.New(reason.BatchRejected, "empty JSON-RPC batch")
		}
		return bodyInfo{}, reason.New(reason.BatchRejected, "empty JSON array body")
	}
	isBatch := mcpRoute
	for i := range doc.elems {
		e := &doc.elems[i]
		if e.kind != kindObject {
			continue
		}
		for _, m := range e.members {
			for _, k := range classifyKeys {
				if strings.EqualFold(m.key, k) {
					isBatch = true
				}
			}
		}
	}
	if !isBatch {
		return bodyInfo{source: SourceNone}, nil
	}
	if len(doc.elems) > o.MaxBatch {
		return bodyInfo{}, reason.New(reason.BatchRejected, "JSON-RPC batch has too many elements")
	}
	bi := bodyInfo{source: SourceMCP, mcpMethods: make([]string, 0, len(doc.elems))}
	for i := range doc.elems {
		e := &doc.elems[i]
		if e.kind != kindObject {
			return bodyInfo{}, badPlan("JSON-RPC batch element is not an object")
		}
		if e.caseVariant(classifyKeys...) {
			return bodyInfo{}, badPlan("JSON-RPC batch element has a case-variant key")
		}
		if _, ok := e.get("tool"); ok {
			return bodyInfo{}, reason.New(reason.BatchRejected, "execution plans cannot be batched")
		}
		if _, ok := e.get("jsonrpc"); !ok {
			return bodyInfo{}, badPlan("JSON-RPC batch element is not a JSON-RPC 2.0 message")
		}
		method, call, err := parseRPC(e)
		if err != nil {
			return bodyInfo{}, err
		}
		bi.mcpMethods = append(bi.mcpMethods, method)
		bi.rpcIDs = append(bi.rpcIDs, rpcID(e))
		if call != nil {
			if bi.call != nil {
				return bodyInfo{}, reason.New(reason.BatchRejected, "JSON-RPC batch makes more than one tool call")
			}
			bi.call = call
		}
	}
	switch {
	case bi.call != nil:
		bi.mcpMethod = mcpToolsCall
	case len(bi.mcpMethods) == 1:
		bi.mcpMethod = bi.mcpMethods[0]
	default:
		bi.mcpMethod = mcpBatch
	}
	return bi, nil
}

// rpcID is the canonical id of a JSON-RPC message (nil for a notification or
// a response), so an answer can name the request it answers.
func rpcID(msg *value) json.RawMessage {
	id, ok := msg.get("id")
	if !ok || id.kind == kindNull {
		return nil
	}
	if _, isReq := msg.get("method"); !isReq {
		return nil
	}
	return canonical(id)
}

// parseRPC checks one JSON-RPC 2.0 message and returns its method ("" for a
// response) and, for tools/call, the call.
func parseRPC(msg *value) (string, *Call, error) {
	if msg.caseVariant(rpcKeys...) {
		return "", nil, badPlan("JSON-RPC message has a case-variant key")
	}
	var method, params, id, result, rpcErr *value
	for i := range msg.members {
		m := &msg.members[i]
		switch m.key {
		case "jsonrpc":
			if m.val.kind != kindString || m.val.str != "2.0" {
				return "", nil, badPlan("JSON-RPC version is not 2.0")
			}
		case "method":
			method = &m.val
		case "params":
			params = &m.val
		case "id":
			id = &m.val
		case "result":
			result = &m.val
		case "error":
			rpcErr = &m.val
		default:
			return "", nil, badPlan("JSON-RPC message has an unknown member")
		}
	}
	if id != nil && id.kind != kindString && id.kind != kindNumber && id.kind != kindNull {
		return "", nil, badPlan("JSON-RPC id is not valid")
	}
	if method == nil {
		// A response to a server request (sampling, elicitation): no call.
		if id == nil || (result == nil) == (rpcErr == nil) || params != nil {
			return "", nil, badPlan("JSON-RPC message has no method")
		}
		return "", nil, nil
	}
	if result != nil || rpcErr != nil {
		return "", nil, badPlan("JSON-RPC request carries a result")
	}
	if method.kind != kindString || method.str == "" || len(method.str) > 128 {
		return "", nil, badPlan("JSON-RPC method is not valid")
	}
	if params != nil && params.kind != kindObject && params.kind != kindArray {
		return "", nil, badPlan("JSON-RPC params are not valid")
	}
	if method.str != mcpToolsCall {
		if strings.EqualFold(method.str, mcpToolsCall) {
			return "", nil, badPlan("JSON-RPC method is a case variant of tools/call")
		}
		return method.str, nil, nil
	}
	if params == nil || params.kind != kindObject {
		return "", nil, badPlan("tools/call params are not an object")
	}
	if params.caseVariant(callKeys...) {
		return "", nil, badPlan("tools/call params have a case-variant key")
	}
	name, ok := params.get("name")
	if !ok || name.kind != kindString || !validToolName(name.str) {
		return "", nil, badPlan("tools/call name is not valid")
	}
	args, err := arguments(params)
	if err != nil {
		return "", nil, err
	}
	return mcpToolsCall, &Call{Tool: name.str, Arguments: args}, nil
}

// parsePlanObject reads a plain execution plan. strict rejects keys other than
// the plan's own (the x-aisecops-plan header is our format; a body may be the
// tool's own and carry more).
func parsePlanObject(doc *value, strict bool) (planDoc, error) {
	if doc.caseVariant(planKeys...) {
		return planDoc{}, badPlan("plan has a case-variant key")
	}
	var pd planDoc
	for i := range doc.members {
		m := &doc.members[i]
		switch m.key {
		case "tool":
			if m.val.kind != kindString || !validToolName(m.val.str) {
				return planDoc{}, badPlan("plan tool is not valid")
			}
			pd.call.Tool = m.val.str
		case "agent_id":
			if m.val.kind != kindString || !validID(m.val.str, idChars) {
				return planDoc{}, badPlan("plan agent_id is not valid")
			}
			pd.agentID = m.val.str
		case "trace_id":
			if m.val.kind != kindString || !validID(m.val.str, idChars) {
				return planDoc{}, badPlan("plan trace_id is not valid")
			}
			pd.traceID = m.val.str
		case "arguments":
		default:
			if strict {
				return planDoc{}, badPlan("plan has an unknown key")
			}
		}
	}
	if pd.call.Tool == "" {
		return planDoc{}, badPlan("plan names no tool")
	}
	args, err := arguments(doc)
	if err != nil {
		return planDoc{}, err
	}
	pd.call.Arguments = args
	return pd, nil
}

// arguments returns the canonical "arguments" object of v, "{}" when absent.
func arguments(v *value) (json.RawMessage, error) {
	a, ok := v.get("arguments")
	if !ok {
		return json.RawMessage("{}"), nil
	}
	if a.kind != kindObject {
		return nil, badPlan("arguments are not an object")
	}
	return canonical(a), nil
}

func validToolName(s string) bool {
	if s == "" || len(s) > maxToolName || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// parsePlanHeader decodes x-aisecops-plan: a base64url plain execution plan.
func parsePlanHeader(v string, o Options) (*planDoc, error) {
	raw, ok := decodeB64URL(v)
	if !ok {
		return nil, badPlan("header %s is not base64url", hPlan)
	}
	doc, err := parseStrict(raw, o.MaxJSONDepth)
	if err != nil {
		return nil, err
	}
	if doc.kind != kindObject {
		return nil, badPlan("header %s is not a plan object", hPlan)
	}
	pd, err := parsePlanObject(&doc, true)
	if err != nil {
		return nil, err
	}
	return &pd, nil
}
