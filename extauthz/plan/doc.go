// Package plan owns the first stage of a Check: it turns Envoy's CheckRequest
// into a Plan — the route's tool identity, the agent's input headers, the
// request line as the upstream will route it, and the one tool call the request
// makes. It is a pure parser: it must not verify tokens, consult run state, log,
// or decide anything beyond "this request is malformed or ambiguous". Every error
// it returns is a *reason.Error whose message is safe to show the agent (it never
// contains the token or a body fragment).
//
// Decisions the rest of the pipeline relies on:
//
//   - One governed call per Check. A JSON-RPC batch is evaluated element by
//     element, but more than one tools/call in it is rejected (batch_rejected):
//     budgets, approvals and the audit line are per Check, and splitting one
//     Check's budget debit across several calls would make them inexact. An
//     empty batch, a batch over Options.MaxBatch elements, or a batch of plain
//     plans is rejected too.
//   - Strict JSON everywhere. Duplicate keys and keys that differ only in case
//     (strings.EqualFold, i.e. Unicode simple folding) are rejected at every
//     depth (duplicate_key), because upstream parsers disagree on which one wins
//     and Go's encoding/json matches field names case-insensitively. A key that
//     differs only in case from one we expect ("Method" alone) is not that key:
//     the body is bad_plan. Invalid UTF-8, lone UTF-16 surrogate escapes,
//     trailing data and nesting over Options.MaxJSONDepth are bad_plan.
//   - A body is parsed as JSON when its content type is application/json or
//     */*+json, or when it starts with '{' or '[' (after whitespace or a BOM)
//     whatever its content type: most MCP servers and REST tools ignore the
//     content type, so "text/plain" must not hide a tool call. Such a body that
//     is not strict JSON is bad_plan. On a route with mcp_tools every non-empty
//     body must be JSON-RPC. A body with a Content-Encoding other than identity
//     is bad_plan: we cannot see the call inside it.
//   - Tool consistency (CheckTool): the call's tool must equal the route's tool.
//     On a route with mcp_tools the route's tool names the MCP server (the
//     capability token is scoped to the server) and an MCP tools/call's
//     params.name must be one of mcp_tools instead.
//   - Body text (DecodeText): the bytes are read as the upstream reads them —
//     UTF-16 or UTF-32 with or without a byte order mark, detected as
//     Python's json.loads detects it, or as a charset parameter declares,
//     with NULs removed so NUL-interleaved text cannot hide from a scanner.
//     A charset the detection contradicts is ambiguous and an error, as are
//     invalid sequences. SniffCompression names an undeclared compressed
//     body; this package never decompresses.
//   - Path normalisation (Plan.Path) resolves what an upstream may resolve, so a
//     policy on the path sees the most-resolved form: the query and fragment are
//     dropped; percent-encoded unreserved characters, %2F (slash) and %5C
//     (backslash) are decoded (each once: %25 stays encoded, so "%252e" is the
//     literal segment "%2e", as a once-decoding upstream sees it); a backslash
//     is a separator; runs of slashes are merged; "." and ".." segments are
//     removed (RFC 3986 §5.2.4). Other escapes keep their value with hex digits
//     upper-cased. A malformed escape, a control, space or non-ASCII byte is
//     bad_request.
//   - Headers: Envoy sends either the joined `headers` map or, with
//     encode_raw_headers, the `header_map` list; when header_map has entries it
//     is used and `headers` is ignored. Every header name and value must be
//     UTF-8. The single-valued inputs (authorization, x-aisecops-*, the ids,
//     mcp-session-id) sent twice — two header_map entries, two names differing
//     in case, or a comma (none of them admits one) — are duplicate_header.
package plan
