package plan

import (
	"slices"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// CheckTool reports whether call may go through route. The call's tool must be
// the route's tool; on a route with mcp_tools the route's tool names the MCP
// server (the token is scoped to the server) and an MCP call's tool must be one
// of mcp_tools instead. Other sources on such a route still name the route's
// tool. The error is tool_mismatch.
func CheckTool(route Route, src Source, call Call) error {
	if src == SourceMCP && len(route.MCPTools) > 0 {
		if slices.Contains(route.MCPTools, call.Tool) {
			return nil
		}
		return reason.New(reason.ToolMismatch, "MCP tool is not offered on this route")
	}
	if call.Tool != route.Tool {
		return reason.New(reason.ToolMismatch, "plan names a tool other than the route's")
	}
	return nil
}
