package plan

import (
	"encoding/json"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

func basePlan() *Plan {
	return &Plan{
		RequestID: "req-1",
		Route: Route{
			Tool: "db.read", ToolClass: "read", BaseRisk: 0.2, Trust: "internal",
			Cost: 0.01, RouteVersion: "v1",
		},
		Method:      "POST",
		Host:        "db.internal",
		Path:        "/query",
		RawPath:     "/query",
		Source:      SourceNone,
		ContentType: "application/json",
	}
}

func mcpWant(p *Plan) {
	p.Route.Tool = "docs.search"
	p.Route.MCPTools = []string{"search", "fetch_page"}
	p.Host = "mcp.internal"
	p.Path, p.RawPath = "/mcp", "/mcp"
	p.Source = SourceMCP
}

func call(tool, args string) []Call {
	return []Call{{Tool: tool, Arguments: json.RawMessage(args)}}
}

const (
	planBody     = `{"agent_id":"ops_agent","tool":"db.read","arguments":{"z":1,"a":{"y":[true,null],"b":"x"}},"trace_id":"run-123"}`
	planArgs     = `{"a":{"b":"x","y":[true,null]},"z":1}`
	mcpCall      = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"cats","limit":5}}}`
	mcpCallArgs  = `{"limit":5,"q":"cats"}`
	mcpInit      = `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`
	mcpNotify    = `{"jsonrpc":"2.0","method":"notifications/initialized"}`
	mcpCallOther = `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_index","arguments":{}}}`
)

// dangerous is a plan whose dangerous argument sits past a 64-byte cut.
var dangerousPlan = `{"tool":"db.read","arguments":{"pad":"` + strings.Repeat("x", 64) + `","sql":"DROP TABLE users"}}`

func TestFromCheckRequestOK(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		req  *check
		want func(p *Plan)
	}{
		{
			name: "no body",
			req:  newCheck(),
			want: func(p *Plan) {},
		},
		{
			name: "plain plan body with canonical arguments",
			req:  newCheck().withBody(planBody),
			want: func(p *Plan) {
				p.Source = SourcePlan
				p.AgentID = "ops_agent"
				p.TraceID, p.RunID = "run-123", "run-123"
				p.Calls = call("db.read", planArgs)
			},
		},
		{
			name: "plan without arguments gets {}",
			req:  newCheck().withBody(`{"tool":"db.read"}`),
			want: func(p *Plan) { p.Source = SourcePlan; p.Calls = call("db.read", `{}`) },
		},
		{
			name: "plan body with extra keys of the tool's own",
			req:  newCheck().withBody(`{"tool":"db.read","arguments":{},"context":{"x":1}}`),
			want: func(p *Plan) { p.Source = SourcePlan; p.Calls = call("db.read", `{}`) },
		},
		{
			name: "body string field when raw_body is empty",
			req:  newCheck().stringBody(`{"tool":"db.read"}`),
			want: func(p *Plan) {
				p.Source = SourcePlan
				p.Calls = call("db.read", `{}`)
				p.Body = []byte(`{"tool":"db.read"}`)
				p.RawBody = p.Body
			},
		},
		{
			name: "MCP tools/call",
			req:  newCheck().mcp().withBody(mcpCall),
			want: func(p *Plan) {
				mcpWant(p)
				p.MCPMethod, p.MCPMethods = "tools/call", []string{"tools/call"}
				p.Calls = call("search", mcpCallArgs)
			},
		},
		{
			name: "MCP tools/call on a route without mcp_tools names the route tool",
			req:  newCheck().withBody(`{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"db.read"}}`),
			want: func(p *Plan) {
				p.Source = SourceMCP
				p.MCPMethod, p.MCPMethods = "tools/call", []string{"tools/call"}
				p.Calls = call("db.read", `{}`)
			},
		},
		{
			name: "MCP initialize is not a call",
			req:  newCheck().mcp().withBody(mcpInit),
			want: func(p *Plan) { mcpWant(p); p.MCPMethod, p.MCPMethods = "initialize", []string{"initialize"} },
		},
		{
			name: "MCP notification",
			req:  newCheck().mcp().withBody(mcpNotify),
			want: func(p *Plan) {
				mcpWant(p)
				p.MCPMethod, p.MCPMethods = "notifications/initialized", []string{"notifications/initialized"}
			},
		},
		{
			name: "MCP response to a server request",
			req:  newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":7,"result":{"ok":true}}`),
			want: func(p *Plan) { mcpWant(p); p.MCPMethods = []string{""} },
		},
		{
			name: "batch with one tools/call after another method",
			req:  newCheck().mcp().withBody(`[` + mcpNotify + `,` + mcpCall + `]`),
			want: func(p *Plan) {
				mcpWant(p)
				p.MCPMethod = "tools/call"
				p.MCPMethods = []string{"notifications/initialized", "tools/call"}
				p.Calls = call("search", mcpCallArgs)
			},
		},
		{
			name: "batch without a call",
			req:  newCheck().mcp().withBody(`[` + mcpInit + `,` + mcpNotify + `]`),
			want: func(p *Plan) {
				mcpWant(p)
				p.MCPMethod = "batch"
				p.MCPMethods = []string{"initialize", "notifications/initialized"}
			},
		},
		{
			name: "tools/call hidden behind text/plain is still parsed",
			req:  newCheck().mcp().h("content-type", "text/plain").withBody("\n " + mcpCall),
			want: func(p *Plan) {
				mcpWant(p)
				p.ContentType = "text/plain"
				p.MCPMethod, p.MCPMethods = "tools/call", []string{"tools/call"}
				p.Calls = call("search", mcpCallArgs)
			},
		},
		{
			name: "LLM route JSON body",
			req:  newCheck().llm().withBody(`{"model":"gpt","messages":[{"role":"user","content":"hi"}]}`),
			want: func(p *Plan) { p.Route.Tool, p.Route.ToolClass = "llm.openai", "llm"; p.Source = SourceLLM },
		},
		{
			name: "opaque body",
			req:  newCheck().h("content-type", "text/csv").withBody("a,b\n1,2\n"),
			want: func(p *Plan) { p.ContentType = "text/csv" },
		},
		{
			name: "JSON body that is not a plan",
			req:  newCheck().withBody(`{"query":"select 1","params":[1]}`),
			want: func(p *Plan) {},
		},
		{
			name: "JSON array body without plans",
			req:  newCheck().withBody(`[{"a":1},{"b":2}]`),
			want: func(p *Plan) {},
		},
		{
			name: "header plan only",
			req:  newCheck().h("x-aisecops-plan", b64(`{"tool":"db.read","arguments":{"b":2,"a":1},"trace_id":"t1","agent_id":"ag"}`)),
			want: func(p *Plan) {
				p.Source = SourceHeader
				p.Calls = call("db.read", `{"a":1,"b":2}`)
				p.TraceID, p.RunID, p.AgentID = "t1", "t1", "ag"
				p.InputHeaders = []string{"x-aisecops-plan"}
			},
		},
		{
			name: "header plan agrees with body plan",
			req: newCheck().withBody(planBody).
				h("x-aisecops-plan", b64(`{"tool":"db.read","arguments":{"a":{"y":[true,null],"b":"x"},"z":1}}`)+"=="),
			want: func(p *Plan) {
				p.Source = SourcePlan
				p.AgentID = "ops_agent"
				p.TraceID, p.RunID = "run-123", "run-123"
				p.Calls = call("db.read", planArgs)
				p.InputHeaders = []string{"x-aisecops-plan"}
			},
		},
		{
			name: "header plan agrees with MCP call",
			req:  newCheck().mcp().withBody(mcpCall).h("x-aisecops-plan", b64(`{"tool":"search","arguments":{"q":"cats","limit":5}}`)),
			want: func(p *Plan) {
				mcpWant(p)
				p.MCPMethod, p.MCPMethods = "tools/call", []string{"tools/call"}
				p.Calls = call("search", mcpCallArgs)
				p.InputHeaders = []string{"x-aisecops-plan"}
			},
		},
		{
			name: "all input headers",
			req: newCheck().
				h("authorization", "bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln").
				h("x-aisecops-run-id", "run-1").
				h("x-aisecops-trace-id", "trace-1").
				h("x-aisecops-dry-run", "true").
				h("x-aisecops-explain", "false").
				h("x-aisecops-approval", "appr_1").
				h("x-aisecops-other", "whatever").
				h("x-aisecops-provenance", b64(`[{"source_type":"web","source_name":"example.com","trust_level":"untrusted","source_hash":"ab"},{"source_type":"user","source_name":"chat","trust_level":"trusted"}]`)).
				h("mcp-session-id", "sess-1"),
			want: func(p *Plan) {
				p.Token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln"
				p.RunID, p.TraceID = "run-1", "trace-1"
				p.DryRun, p.ApprovalID = true, "appr_1"
				p.Provenance = []Provenance{
					{SourceType: "web", SourceName: "example.com", TrustLevel: "untrusted", SourceHash: "ab"},
					{SourceType: "user", SourceName: "chat", TrustLevel: "trusted"},
				}
				p.InputHeaders = []string{
					"authorization", "x-aisecops-approval", "x-aisecops-dry-run", "x-aisecops-explain",
					"x-aisecops-other", "x-aisecops-provenance", "x-aisecops-run-id", "x-aisecops-trace-id",
				}
			},
		},
		{
			name: "mcp-session-id is the run id fallback",
			req:  newCheck().h("mcp-session-id", "c2Vzcw+/=").withBody(planBody),
			want: func(p *Plan) {
				p.Source, p.AgentID = SourcePlan, "ops_agent"
				p.Calls = call("db.read", planArgs)
				p.TraceID, p.RunID = "run-123", "c2Vzcw+/="
			},
		},
		{
			name: "trace header wins over the plan's trace_id",
			req:  newCheck().h("x-aisecops-trace-id", "tr-9").withBody(planBody),
			want: func(p *Plan) {
				p.Source, p.AgentID = SourcePlan, "ops_agent"
				p.Calls = call("db.read", planArgs)
				p.TraceID, p.RunID = "tr-9", "tr-9"
				p.InputHeaders = []string{"x-aisecops-trace-id"}
			},
		},
		{
			name: "header_map with raw_value",
			req: newCheck().entry("x-aisecops-run-id", "run-raw", true).
				entry("authorization", "Bearer abc", true),
			want: func(p *Plan) {
				p.RunID, p.Token = "run-raw", "abc"
				p.InputHeaders = []string{"authorization", "x-aisecops-run-id"}
			},
		},
		{
			name: "header names in mixed case",
			req:  newCheck().h("X-AISecOps-Run-Id", "r1"),
			want: func(p *Plan) { p.RunID = "r1"; p.InputHeaders = []string{"x-aisecops-run-id"} },
		},
		{
			name: "double slash",
			req:  newCheck().h(":path", "//admin"),
			want: func(p *Plan) { p.Path, p.RawPath = "/admin", "//admin" },
		},
		{
			name: "dot dot",
			req:  newCheck().h(":path", "/a/../b?x=/../c"),
			want: func(p *Plan) { p.Path, p.RawPath, p.Query = "/b", "/a/../b?x=/../c", "x=/../c" },
		},
		{
			name: "encoded dot dot",
			req:  newCheck().h(":path", "/public/%2e%2E/admin"),
			want: func(p *Plan) { p.Path, p.RawPath = "/admin", "/public/%2e%2E/admin" },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := basePlan()
			if len(tc.req.body) > 0 {
				want.Body, want.RawBody = tc.req.body, tc.req.body
			}
			tc.want(want)
			got, err := FromCheckRequest(tc.req.build(), Options{})
			if err != nil {
				t.Fatalf("FromCheckRequest: %v", err)
			}
			// Headers (what egress inspection sees) has its own test.
			if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Plan{}, "Headers", "RPCIDs"), cmpopts.IgnoreUnexported(Plan{})); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHeadersForInspection: the headers egress inspection sees are what the
// upstream receives, minus the pseudo-headers, the capability token and the
// x-aisecops-* inputs; repeated headers are joined as Envoy joins them.
func TestHeadersForInspection(t *testing.T) {
	t.Parallel()
	r := newCheck().h("x-custom", "a").h("x-aisecops-trace-id", "t1").h("authorization", "Bearer abc.def.ghi")
	got, err := FromCheckRequest(r.build(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{":path", ":authority", "authorization", "x-aisecops-trace-id"} {
		if _, ok := got.Headers[h]; ok {
			t.Errorf("%s is among the inspected headers", h)
		}
	}
	if got.Headers["x-custom"] != "a" {
		t.Errorf("x-custom = %q", got.Headers["x-custom"])
	}
}

func TestFromCheckRequestRequestLineFallback(t *testing.T) {
	t.Parallel()
	// Envoy always fills the attribute fields; with no pseudo headers they are used.
	req := newCheck().del(":authority").del(":path").del(":method").build()
	hr := req.GetAttributes().GetRequest().GetHttp()
	hr.Method, hr.Path, hr.Host = "GET", "/x/./y", "DB.Internal:8443"
	got, err := FromCheckRequest(req, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"GET", "/x/y", "/x/./y", "db.internal"}, []string{got.Method, got.Path, got.RawPath, got.Host}); diff != "" {
		t.Errorf("request line (-want +got):\n%s", diff)
	}
}

func TestFromCheckRequestErrors(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("a", 1<<20)
	deep := strings.Repeat(`{"a":`, 65) + "1" + strings.Repeat("}", 65)
	manyKeys := func(dupe string) string {
		var b strings.Builder
		b.WriteString(`{"tool":"db.read","arguments":{`)
		for i := range 40 {
			b.WriteString(`"k` + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `":1,`)
		}
		b.WriteString(`"` + dupe + `":2}}`)
		return b.String()
	}
	provs := func(n int) string {
		var items []string
		for range n {
			items = append(items, `{"source_type":"a","source_name":"b","trust_level":"c"}`)
		}
		return b64("[" + strings.Join(items, ",") + "]")
	}

	tests := []struct {
		name string
		req  *envoy_service_auth_v3.CheckRequest
		opts Options
		want reason.Code
	}{
		{name: "nil request", req: nil, want: reason.BadRequest},
		{name: "nil attributes", req: &envoy_service_auth_v3.CheckRequest{}, want: reason.BadRequest},
		{name: "no http request", req: func() *envoy_service_auth_v3.CheckRequest {
			r := newCheck().build()
			r.Attributes.Request = nil
			return r
		}(), want: reason.BadRequest},

		{name: "missing tool", req: newCheck().delExt("tool").build(), want: reason.RouteUnconfigured},
		{name: "missing tool_class", req: newCheck().delExt("tool_class").build(), want: reason.RouteUnconfigured},
		{name: "missing base_risk", req: newCheck().delExt("base_risk").build(), want: reason.RouteUnconfigured},
		{name: "missing trust", req: newCheck().delExt("trust").build(), want: reason.RouteUnconfigured},
		{name: "missing cost", req: newCheck().delExt("cost").build(), want: reason.RouteUnconfigured},
		{name: "missing route_version", req: newCheck().delExt("route_version").build(), want: reason.RouteUnconfigured},
		{name: "bad tool_class", req: newCheck().setExt("tool_class", "admin").build(), want: reason.RouteUnconfigured},
		{name: "base_risk over 10", req: newCheck().setExt("base_risk", "10.5").build(), want: reason.RouteUnconfigured},
		{name: "base_risk NaN", req: newCheck().setExt("base_risk", "NaN").build(), want: reason.RouteUnconfigured},
		{name: "base_risk not a number", req: newCheck().setExt("base_risk", "high").build(), want: reason.RouteUnconfigured},
		{name: "bad trust", req: newCheck().setExt("trust", "trusted").build(), want: reason.RouteUnconfigured},
		{name: "negative cost", req: newCheck().setExt("cost", "-1").build(), want: reason.RouteUnconfigured},
		{name: "infinite cost", req: newCheck().setExt("cost", "+Inf").build(), want: reason.RouteUnconfigured},
		{name: "empty mcp_tools entry", req: newCheck().setExt("mcp_tools", "a,,b").build(), want: reason.RouteUnconfigured},

		{name: "run id twice in header_map", req: newCheck().entry("x-aisecops-run-id", "r1", false).entry("x-aisecops-run-id", "r2", false).build(), want: reason.DuplicateHeader},
		{name: "run id twice joined with a comma", req: newCheck().h("x-aisecops-run-id", "r1,r2").build(), want: reason.DuplicateHeader},
		{name: "run id twice in two name cases", req: newCheck().h("x-aisecops-run-id", "r1").h("X-Aisecops-Run-Id", "r2").build(), want: reason.DuplicateHeader},
		{name: "authorization twice in header_map", req: newCheck().entry("authorization", "Bearer a", false).entry("authorization", "Bearer b", true).build(), want: reason.DuplicateHeader},
		{name: "authorization twice joined", req: newCheck().h("authorization", "Bearer a,Bearer b").build(), want: reason.DuplicateHeader},
		{name: "plan header twice", req: newCheck().entry("x-aisecops-plan", b64(`{"tool":"db.read"}`), false).entry("x-aisecops-plan", b64(`{"tool":"db.read"}`), false).build(), want: reason.DuplicateHeader},
		{name: "trace id twice", req: newCheck().h("x-aisecops-trace-id", "a,b").build(), want: reason.DuplicateHeader},
		{name: "session twice", req: newCheck().entry("mcp-session-id", "s1", false).entry("mcp-session-id", "s2", false).build(), want: reason.DuplicateHeader},
		{name: "approval twice", req: newCheck().h("x-aisecops-approval", "a,b").build(), want: reason.DuplicateHeader},
		{name: "dry-run twice", req: newCheck().h("x-aisecops-dry-run", "false,true").build(), want: reason.DuplicateHeader},
		{name: "provenance twice", req: newCheck().entry("x-aisecops-provenance", provs(1), false).entry("x-aisecops-provenance", provs(1), false).build(), want: reason.DuplicateHeader},
		{name: "path twice", req: newCheck().entry(":path", "/other", false).build(), want: reason.BadRequest},

		{name: "run id with a space", req: newCheck().h("x-aisecops-run-id", "run 1").build(), want: reason.BadRequest},
		{name: "run id with braces", req: newCheck().h("x-aisecops-run-id", "{run}").build(), want: reason.BadRequest},
		{name: "run id too long", req: newCheck().h("x-aisecops-run-id", strings.Repeat("r", 129)).build(), want: reason.BadRequest},
		{name: "empty run id", req: newCheck().h("x-aisecops-run-id", "").build(), want: reason.BadRequest},
		{name: "approval id with slash", req: newCheck().h("x-aisecops-approval", "a/b").build(), want: reason.BadRequest},
		{name: "session with newline", req: newCheck().h("mcp-session-id", "s\n1").build(), want: reason.BadRequest},
		{name: "non-UTF-8 raw_value", req: newCheck().entry("x-aisecops-run-id", "r\xff", true).build(), want: reason.BadRequest},
		{name: "non-UTF-8 value of another header", req: newCheck().h("user-agent", "bot\xc3\x28").build(), want: reason.BadRequest},
		{name: "non-UTF-8 header name", req: newCheck().h("x-\xff", "1").build(), want: reason.BadRequest},
		{name: "dry-run yes", req: newCheck().h("x-aisecops-dry-run", "yes").build(), want: reason.BadRequest},
		{name: "explain TRUE", req: newCheck().h("x-aisecops-explain", "TRUE").build(), want: reason.BadRequest},
		{name: "oversized other header", req: newCheck().h("x-big", big).build(), want: reason.BadRequest},

		{name: "basic auth", req: newCheck().h("authorization", "Basic dXNlcjpwYXNz").build(), want: reason.BadRequest},
		{name: "bearer without token", req: newCheck().h("authorization", "Bearer").build(), want: reason.BadRequest},
		{name: "bearer with space in token", req: newCheck().h("authorization", "Bearer a b").build(), want: reason.BadRequest},
		{name: "empty authorization", req: newCheck().h("authorization", "").build(), want: reason.BadRequest},
		{name: "1 MB bearer", req: newCheck().h("authorization", "Bearer "+big).build(), want: reason.TokenTooLarge},
		{name: "1 MB bearer as raw_value", req: newCheck().entry("authorization", "Bearer "+big, true).build(), want: reason.TokenTooLarge},
		{name: "bearer just over the limit", req: newCheck().h("authorization", "Bearer "+strings.Repeat("a", 8<<10+1)).build(), want: reason.TokenTooLarge},

		{name: "partial body with the dangerous argument after the cut", req: newCheck().withBody(dangerousPlan[:64]).h("x-envoy-auth-partial-body", "true").build(), want: reason.PartialBody},
		{name: "partial body in header_map", req: newCheck().withBody(dangerousPlan[:64]).entry("x-envoy-auth-partial-body", "true", false).build(), want: reason.PartialBody},
		{name: "agent false joined with envoy true", req: newCheck().withBody(`{}`).h("x-envoy-auth-partial-body", "false,true").build(), want: reason.PartialBody},
		{name: "body over the limit", req: newCheck().withBody(dangerousPlan).build(), opts: Options{MaxBodyBytes: 64}, want: reason.PartialBody},
		{name: "body shorter than the request size", req: newCheck().withBody(dangerousPlan[:64]).withSize(int64(len(dangerousPlan))).build(), want: reason.PartialBody},
		{name: "gzip body", req: newCheck().h("content-encoding", "gzip").rawBody([]byte{0x1f, 0x8b, 8, 0}).build(), want: reason.BadPlan},

		{name: "provenance not base64", req: newCheck().h("x-aisecops-provenance", "!!").build(), want: reason.BadRequest},
		{name: "provenance std base64", req: newCheck().h("x-aisecops-provenance", "W3sic291cmNlX3R5cGUiOiI/In1d").build(), want: reason.BadRequest},
		{name: "provenance not a list", req: newCheck().h("x-aisecops-provenance", b64(`{"source_type":"a"}`)).build(), want: reason.BadRequest},
		{name: "provenance unknown key", req: newCheck().h("x-aisecops-provenance", b64(`[{"source_type":"a","source_name":"b","trust_level":"c","x":"d"}]`)).build(), want: reason.BadRequest},
		{name: "provenance case-variant key", req: newCheck().h("x-aisecops-provenance", b64(`[{"Source_Type":"a","source_name":"b","trust_level":"c"}]`)).build(), want: reason.BadRequest},
		{name: "provenance missing field", req: newCheck().h("x-aisecops-provenance", b64(`[{"source_type":"a","source_name":"b"}]`)).build(), want: reason.BadRequest},
		{name: "provenance non-string", req: newCheck().h("x-aisecops-provenance", b64(`[{"source_type":1,"source_name":"b","trust_level":"c"}]`)).build(), want: reason.BadRequest},
		{name: "provenance too many labels", req: newCheck().h("x-aisecops-provenance", provs(65)).build(), want: reason.BadRequest},
		{name: "provenance duplicate key", req: newCheck().h("x-aisecops-provenance", b64(`[{"source_type":"a","source_type":"a","source_name":"b","trust_level":"c"}]`)).build(), want: reason.DuplicateKey},

		{name: "duplicate key", req: newCheck().withBody(`{"tool":"db.read","tool":"db.write"}`).build(), want: reason.DuplicateKey},
		{name: "case-variant key beside the key", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call","params":{"name":"x"}}`).build(), want: reason.DuplicateKey},
		{name: "nested duplicate key in arguments", req: newCheck().withBody(`{"tool":"db.read","arguments":{"q":{"sql":"select 1","sql":"drop table t"}}}`).build(), want: reason.DuplicateKey},
		{name: "nested case-variant key in an array", req: newCheck().withBody(`{"a":[{"b":{"K":1,"k":2}}]}`).build(), want: reason.DuplicateKey},
		{name: "Kelvin sign case variant", req: newCheck().withBody(`{"tool":"db.read","arguments":{"k":1,"\u212a":2}}`).build(), want: reason.DuplicateKey},
		{name: "escaped duplicate key", req: newCheck().withBody(`{"tool":"db.read","t\u006fol":"db.write"}`).build(), want: reason.DuplicateKey},
		{name: "duplicate in a large object", req: newCheck().withBody(manyKeys("KBA")).build(), want: reason.DuplicateKey},
		{name: "duplicate key in a non-plan body", req: newCheck().h("content-type", "text/plain").withBody(`{"a":1,"A":2}`).build(), want: reason.DuplicateKey},
		{name: "duplicate key on an LLM route", req: newCheck().llm().withBody(`{"model":"a","messages":[],"model":"b"}`).build(), want: reason.DuplicateKey},

		{name: "case-variant method alone", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"search"}}`).build(), want: reason.BadPlan},
		{name: "case-variant tool alone", req: newCheck().withBody(`{"Tool":"db.write","arguments":{}}`).build(), want: reason.BadPlan},
		{name: "case-variant params name alone", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"delete_index"}}`).build(), want: reason.BadPlan},
		{name: "case-variant arguments alone", req: newCheck().withBody(`{"tool":"db.read","Arguments":{"sql":"drop"}}`).build(), want: reason.BadPlan},
		{name: "case-variant tools/call method", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"search"}}`).build(), want: reason.BadPlan},
		{name: "tools/call without jsonrpc", req: newCheck().withBody(`{"id":1,"method":"tools/call","params":{"name":"x"}}`).build(), want: reason.BadPlan},
		{name: "jsonrpc 1.0", req: newCheck().mcp().withBody(`{"jsonrpc":"1.0","id":1,"method":"initialize"}`).build(), want: reason.BadPlan},
		{name: "jsonrpc unknown member", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"method":"initialize","tool":"x"}`).build(), want: reason.BadPlan},
		{name: "jsonrpc without method or result", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1}`).build(), want: reason.BadPlan},
		{name: "tools/call without name", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}`).build(), want: reason.BadPlan},
		{name: "tools/call params array", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["search"]}`).build(), want: reason.BadPlan},
		{name: "invalid JSON", req: newCheck().withBody(`{"tool":`).build(), want: reason.BadPlan},
		{name: "trailing comma", req: newCheck().withBody(`{"tool":"db.read",}`).build(), want: reason.BadPlan},
		{name: "trailing value", req: newCheck().withBody(`{"tool":"db.read"}{"tool":"db.write"}`).build(), want: reason.BadPlan},
		{name: "trailing garbage", req: newCheck().withBody(`{"tool":"db.read"} x`).build(), want: reason.BadPlan},
		{name: "too deep", req: newCheck().withBody(deep).build(), want: reason.BadPlan},
		{name: "non-UTF-8 body", req: newCheck().rawBody([]byte("{\"tool\":\"db.read\",\"arguments\":{\"q\":\"\xff\"}}")).build(), want: reason.BadPlan},
		{name: "lone surrogate", req: newCheck().withBody(`{"tool":"db.read","arguments":{"q":"\ud800"}}`).build(), want: reason.BadPlan},
		{name: "BOM before JSON in text/plain", req: newCheck().h("content-type", "text/plain").withBody("\xef\xbb\xbf" + mcpCall).build(), want: reason.ToolMismatch},
		{name: "arguments array", req: newCheck().withBody(`{"tool":"db.read","arguments":[1]}`).build(), want: reason.BadPlan},
		{name: "arguments string", req: newCheck().withBody(`{"tool":"db.read","arguments":"x"}`).build(), want: reason.BadPlan},
		{name: "arguments null", req: newCheck().withBody(`{"tool":"db.read","arguments":null}`).build(), want: reason.BadPlan},
		{name: "empty tool", req: newCheck().withBody(`{"tool":""}`).build(), want: reason.BadPlan},
		{name: "bad agent_id", req: newCheck().withBody(`{"tool":"db.read","agent_id":"a b"}`).build(), want: reason.BadPlan},
		{name: "plan and jsonrpc at once", req: newCheck().withBody(`{"jsonrpc":"2.0","tool":"db.read","method":"initialize","id":1}`).build(), want: reason.BadPlan},
		{name: "text body on an MCP route", req: newCheck().mcp().h("content-type", "text/plain").withBody("tools/call search").build(), want: reason.BadPlan},
		{name: "JSON non-RPC on an MCP route", req: newCheck().mcp().withBody(`{"q":"x"}`).build(), want: reason.BadPlan},

		{name: "batch with two tools/call", req: newCheck().mcp().withBody(`[` + mcpCall + `,` + mcpCall + `]`).build(), want: reason.BatchRejected},
		{name: "batch whose second element names another tool", req: newCheck().mcp().withBody(`[` + mcpCall + `,` + mcpCallOther + `]`).build(), want: reason.BatchRejected},
		{name: "batch whose only call is in the second element", req: newCheck().mcp().withBody(`[` + mcpInit + `,` + mcpCallOther + `]`).build(), want: reason.ToolMismatch},
		{name: "empty batch", req: newCheck().mcp().withBody(`[]`).build(), want: reason.BatchRejected},
		{name: "empty array", req: newCheck().withBody(`[]`).build(), want: reason.BatchRejected},
		{name: "batch element not an object", req: newCheck().mcp().withBody(`[` + mcpInit + `,1]`).build(), want: reason.BadPlan},
		{name: "batch element without jsonrpc", req: newCheck().withBody(`[` + mcpInit + `,{"method":"tools/call","id":3}]`).build(), want: reason.BadPlan},
		{name: "batch of plans", req: newCheck().withBody(`[{"tool":"db.read"},{"tool":"db.write"}]`).build(), want: reason.BatchRejected},
		{name: "batch too large", req: newCheck().mcp().withBody(`[` + strings.TrimSuffix(strings.Repeat(mcpNotify+",", 65), ",") + `]`).build(), want: reason.BatchRejected},
		{name: "batch with a bad second element", req: newCheck().mcp().withBody(`[` + mcpCall + `,{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","arguments":{"a":1,"A":2}}}]`).build(), want: reason.DuplicateKey},

		{name: "plan names another tool", req: newCheck().withBody(`{"tool":"db.write","arguments":{}}`).build(), want: reason.ToolMismatch},
		{name: "MCP tool not on the route", req: newCheck().mcp().withBody(mcpCallOther).build(), want: reason.ToolMismatch},
		{name: "MCP server name is not an MCP tool", req: newCheck().mcp().withBody(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"docs.search"}}`).build(), want: reason.ToolMismatch},
		{name: "MCP call on a route without mcp_tools", req: newCheck().withBody(mcpCall).build(), want: reason.ToolMismatch},
		{name: "header plan names another tool", req: newCheck().h("x-aisecops-plan", b64(`{"tool":"db.write"}`)).build(), want: reason.ToolMismatch},

		{name: "header plan and body name different tools", req: newCheck().withBody(`{"tool":"db.read"}`).h("x-aisecops-plan", b64(`{"tool":"db.write"}`)).build(), want: reason.PlanConflict},
		{name: "header plan and body differ in arguments", req: newCheck().withBody(planBody).h("x-aisecops-plan", b64(`{"tool":"db.read","arguments":{"z":2}}`)).build(), want: reason.PlanConflict},
		{name: "header plan and MCP call differ", req: newCheck().mcp().withBody(mcpCall).h("x-aisecops-plan", b64(`{"tool":"search","arguments":{"q":"dogs","limit":5}}`)).build(), want: reason.PlanConflict},
		{name: "header plan beside a non-call MCP body", req: newCheck().mcp().withBody(mcpInit).h("x-aisecops-plan", b64(`{"tool":"search"}`)).build(), want: reason.PlanConflict},
		{name: "header plan and body name different agents", req: newCheck().withBody(planBody).h("x-aisecops-plan", b64(`{"tool":"db.read","agent_id":"other","arguments":{"z":1,"a":{"y":[true,null],"b":"x"}}}`)).build(), want: reason.PlanConflict},
		{name: "header plan not base64url", req: newCheck().h("x-aisecops-plan", "{not base64}").build(), want: reason.BadPlan},
		{name: "header plan unknown key", req: newCheck().h("x-aisecops-plan", b64(`{"tool":"db.read","extra":1}`)).build(), want: reason.BadPlan},
		{name: "header plan duplicate key", req: newCheck().h("x-aisecops-plan", b64(`{"tool":"db.read","TOOL":"db.write"}`)).build(), want: reason.DuplicateKey},
		{name: "header plan not an object", req: newCheck().h("x-aisecops-plan", b64(`["db.read"]`)).build(), want: reason.BadPlan},

		{name: "malformed percent escape", req: newCheck().h(":path", "/a%zz").build(), want: reason.BadRequest},
		{name: "truncated percent escape", req: newCheck().h(":path", "/a%2").build(), want: reason.BadRequest},
		{name: "space in path", req: newCheck().h(":path", "/a b").build(), want: reason.BadRequest},
		{name: "relative path", req: newCheck().h(":path", "admin").build(), want: reason.BadRequest},
		{name: "no path at all", req: newCheck().del(":path").build(), want: reason.BadRequest},
		{name: "host with userinfo", req: newCheck().h(":authority", "user@db.internal").build(), want: reason.BadRequest},
		{name: "host and authority disagree", req: newCheck().h("host", "evil.example").build(), want: reason.BadRequest},
		{name: "bad port", req: newCheck().h(":authority", "db.internal:80a").build(), want: reason.BadRequest},
		{name: "bad method", req: newCheck().h(":method", "GE T").build(), want: reason.BadRequest},
		{name: "pseudo header disagrees with the field", req: func() *envoy_service_auth_v3.CheckRequest {
			r := newCheck().build()
			r.Attributes.Request.Http.Path = "/other"
			return r
		}(), want: reason.BadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromCheckRequest(tc.req, tc.opts)
			if err == nil {
				t.Fatalf("FromCheckRequest = %+v, want error %s", got, tc.want)
			}
			var re *reason.Error
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a *reason.Error", err)
			}
			if re.Code != tc.want {
				t.Errorf("code = %s (%v), want %s", re.Code, err, tc.want)
			}
			// A plan returned with an error is partial, for the audit record:
			// it holds no call, so nothing can be decided on it.
			if got != nil && len(got.Calls) > 0 {
				t.Errorf("plan = %+v holds a call with an error", got)
			}
		})
	}
}

// A huge bearer string must be refused without being copied or scanned: what
// is allocated per check must not grow with the token.
//
// Not parallel: runtime.MemStats is process-wide, so other tests would add to it.
func TestHugeBearerDoesNotCopy(t *testing.T) {
	req := newCheck().h("authorization", "Bearer "+strings.Repeat("a", 1<<20)).build()
	const runs = 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		if _, err := FromCheckRequest(req, Options{}); reason.CodeOf(err) != reason.TokenTooLarge {
			t.Fatalf("err = %v, want %s", err, reason.TokenTooLarge)
		}
	}
	runtime.ReadMemStats(&after)
	if perRun := (after.TotalAlloc - before.TotalAlloc) / runs; perRun > 16<<10 {
		t.Errorf("refusing a 1 MB bearer allocated %d bytes per check, want well under the token size", perRun)
	}
}

// normalizePathCases maps request paths to their normal form; FuzzNormalizePath
// starts from them too.
var normalizePathCases = map[string]string{
	"/":                     "/",
	"/a/b":                  "/a/b",
	"//admin":               "/admin",
	"///a//b//":             "/a/b/",
	"/a/../b":               "/b",
	"/a/./b/.":              "/a/b/",
	"/a/b/..":               "/a/",
	"/..":                   "/",
	"/../../etc/passwd":     "/etc/passwd",
	"/%2e%2e/admin":         "/admin",
	"/a/%2E%2e/b":           "/b",
	"/a/.%2e/b":             "/b",
	"/a%2fb":                "/a/b",
	"/a%2F..%2Fadmin":       "/admin",
	"/a%5c..%5cadmin":       "/admin",
	`/a\..\admin`:           "/admin",
	"/%41%62%7e%2D%5F":      "/Ab~-_",
	"/%3a%2520":             "/%3A%2520",
	"/%252e%252e/admin":     "/%252e%252e/admin",
	"/a/b?x=../../c":        "/a/b",
	"/a/b#frag":             "/a/b",
	"/a/%2e%2e?next=/admin": "/",
	"/...":                  "/...",
	"/.well-known/x":        "/.well-known/x",
	"*":                     "*",
}

// badPaths are request paths NormalizePath refuses.
var badPaths = []string{"", "a", "/a%", "/a%g0", "/a b", "/a\x00", "/é", "/a\x7f"}

func TestNormalizePath(t *testing.T) {
	t.Parallel()
	for in, want := range normalizePathCases {
		got, err := NormalizePath(in)
		if err != nil {
			t.Errorf("NormalizePath(%q): %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("NormalizePath(%q) = %q, want %q", in, got, want)
		}
	}
	for _, in := range badPaths {
		if _, err := NormalizePath(in); reason.CodeOf(err) != reason.BadRequest {
			t.Errorf("NormalizePath(%q) err = %v, want %s", in, err, reason.BadRequest)
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"db.internal":        "db.internal",
		"DB.Internal:8443":   "db.internal",
		"example.com.":       "example.com",
		"example.com.:443":   "example.com",
		"[::1]:80":           "::1",
		"[::FFFF:127.0.0.1]": "::ffff:127.0.0.1",
		"127.0.0.1:":         "127.0.0.1",
	}
	for in, want := range tests {
		got, err := NormalizeHost(in)
		if err != nil || got != want {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ":80", "a:b:c", "user@h", "h/x", "[::1", "[]", "[::1]x", "h:123456", "ex ample", "é.com", "."} {
		if _, err := NormalizeHost(in); reason.CodeOf(err) != reason.BadRequest {
			t.Errorf("NormalizeHost(%q) err = %v, want %s", in, err, reason.BadRequest)
		}
	}
}

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		code     reason.Code
	}{
		{in: `{"b":1,"a":[3,{"d":null,"c":true}]}`, want: `{"a":[3,{"c":true,"d":null}],"b":1}`},
		{in: " { \"a\" : 1.50 , \"b\":-0e3 } ", want: `{"a":1.50,"b":-0e3}`},
		{in: `{"s":"<&>\u00e9\n\u0001\"\\/"}`, want: `{"s":"<&>é\n\u0001\"\\/"}`},
		{in: `{"é":1,"z":2,"A":3}`, want: `{"A":3,"z":2,"é":1}`},
		{in: `"x"`, want: `"x"`},
		{in: `[]`, want: `[]`},
		{in: `{"😀":"\ud83d\ude00"}`, want: `{"😀":"😀"}`},
		{in: `{"a":1,"a":2}`, code: reason.DuplicateKey},
		{in: `{"a":1,"A":2}`, code: reason.DuplicateKey},
		{in: `{"a":1}x`, code: reason.BadPlan},
		{in: ``, code: reason.BadPlan},
		{in: `{"a":"\udc00"}`, code: reason.BadPlan},
		{in: "{\"a\":\"\xff\"}", code: reason.BadPlan},
		{in: `{"a":01}`, code: reason.BadPlan},
		{in: `{'a':1}`, code: reason.BadPlan},
		{in: `[1,]`, code: reason.BadPlan},
		{in: `{"a":NaN}`, code: reason.BadPlan},
	}
	for _, tc := range tests {
		got, err := CanonicalJSON([]byte(tc.in))
		if tc.code != "" {
			if reason.CodeOf(err) != tc.code {
				t.Errorf("CanonicalJSON(%q) err = %v, want %s", tc.in, err, tc.code)
			}
			continue
		}
		if err != nil {
			t.Errorf("CanonicalJSON(%q): %v", tc.in, err)
			continue
		}
		if string(got) != tc.want {
			t.Errorf("CanonicalJSON(%q) = %s, want %s", tc.in, got, tc.want)
		}
		again, err := CanonicalJSON(got)
		if err != nil || string(again) != string(got) {
			t.Errorf("CanonicalJSON not idempotent on %s: %s, %v", got, again, err)
		}
	}
}

func TestHash(t *testing.T) {
	t.Parallel()
	if Hash([]byte("ab"), []byte("c")) == Hash([]byte("a"), []byte("bc")) {
		t.Error("Hash does not separate parts")
	}
	if Hash([]byte("a")) == Hash([]byte("a"), nil) {
		t.Error("Hash ignores an empty trailing part")
	}
	// sha256 of 8-byte big-endian length 0: a fixed vector pins the encoding.
	if got, want := Hash(nil), "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"; got != want {
		t.Errorf("Hash() of one empty part = %s, want %s", got, want)
	}
	if PlanHash("t", []byte(`{}`), "r1") == PlanHash("t", []byte(`{}`), "r2") {
		t.Error("PlanHash ignores the run")
	}
	if PlanHash("t", []byte(`{}`), "r") != Hash([]byte("t"), []byte(`{}`), []byte("r")) {
		t.Error("PlanHash is not Hash(tool, args, run)")
	}
	if ArgumentsHash(json.RawMessage(`{}`)) != Hash([]byte(`{}`)) {
		t.Error("ArgumentsHash is not Hash(args)")
	}
}

func TestCheckTool(t *testing.T) {
	t.Parallel()
	plain := Route{Tool: "db.read"}
	mcp := Route{Tool: "docs.search", MCPTools: []string{"search", "fetch_page"}}
	tests := []struct {
		name  string
		route Route
		src   Source
		tool  string
		ok    bool
	}{
		{"plan names the route tool", plain, SourcePlan, "db.read", true},
		{"plan names another tool", plain, SourcePlan, "db.write", false},
		{"header plan names the route tool", plain, SourceHeader, "db.read", true},
		{"MCP call on a plain route names the route tool", plain, SourceMCP, "db.read", true},
		{"MCP call on a plain route names another tool", plain, SourceMCP, "search", false},
		{"MCP call names an offered tool", mcp, SourceMCP, "fetch_page", true},
		{"MCP call names the server", mcp, SourceMCP, "docs.search", false},
		{"MCP call names a tool not offered", mcp, SourceMCP, "delete_index", false},
		{"MCP call names a case variant", mcp, SourceMCP, "Search", false},
		{"plan on an MCP route names the server", mcp, SourcePlan, "docs.search", true},
		{"plan on an MCP route names an MCP tool", mcp, SourcePlan, "search", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckTool(tc.route, tc.src, Call{Tool: tc.tool})
			if tc.ok && err != nil {
				t.Errorf("CheckTool: %v", err)
			}
			if !tc.ok && reason.CodeOf(err) != reason.ToolMismatch {
				t.Errorf("CheckTool err = %v, want %s", err, reason.ToolMismatch)
			}
		})
	}
}

func TestOptionsDefaults(t *testing.T) {
	t.Parallel()
	got := Options{MaxBodyBytes: -1, MaxJSONDepth: 3}.withDefaults()
	want := Options{
		MaxBodyBytes: DefaultMaxBodyBytes, MaxHeaderBytes: DefaultMaxHeaderBytes,
		MaxTokenBytes: DefaultMaxTokenBytes, MaxJSONDepth: 3,
		MaxProvenance: DefaultMaxProvenance, MaxBatch: DefaultMaxBatch,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("withDefaults (-want +got):\n%s", diff)
	}
}

// TestRPCIDs: every request of an MCP body keeps its id, so a denial can answer
// it in JSON-RPC; notifications and responses have none.
func TestRPCIDs(t *testing.T) {
	t.Parallel()
	r := Route{Tool: "docs", ToolClass: "read", Trust: "internal", RouteVersion: "v", MCPTools: []string{"search"}}
	resolve := func(map[string]string, string, string, string) (Route, error) { return r, nil }
	for body, want := range map[string][]string{
		`{"jsonrpc":"2.0","id":7,"method":"tools/list"}`:                                                                              {"7"},
		`{"jsonrpc":"2.0","id":"a b","method":"tools/list"}`:                                                                          {`"a b"`},
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`:                                                                      {""},
		`[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"result":{}},{"jsonrpc":"2.0","id":null,"method":"ping"}]`: {"1", "", ""},
	} {
		p, err := Parse(newCheck().withBody(body).build(), Options{}, resolve)
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		var got []string
		for _, id := range p.RPCIDs {
			got = append(got, string(id))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: ids %q, want %q", body, got, want)
		}
	}
}
