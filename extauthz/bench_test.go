package extauthz_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// BenchmarkCheck is the whole decision path in-process: parse a 1 KB MCP
// tools/call body, verify a valid token (cached after the first), load and
// commit run state in the in-memory store, compute risk, evaluate the bundled
// Rego, write the audit line to a file, build the response.
//
//	go test ./extauthz -run '^$' -bench BenchmarkCheck -benchmem
func BenchmarkCheck(b *testing.B) {
	e := newEnv(b)
	tok := e.token(b, "bench-agent", "docs.search")
	query := strings.Repeat("customer churn analysis for Q3 accounts; ", 22)
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"query":%q,"top_k":5,"filters":{"region":"emea","year":2026}}}}`, query)
	if len(body) < 1000 || len(body) > 1100 {
		b.Fatalf("body is %d bytes, want ~1 KB", len(body))
	}
	r := req{ext: e.route("docs.search"), headers: map[string]string{"authorization": "Bearer " + tok}, body: body, path: "/mcp", host: "mcp.internal"}
	cr := r.build()
	httpReq := cr.Attributes.Request.Http
	ctx := context.Background()
	// Warm up and check the path really allows.
	httpReq.Headers["x-aisecops-run-id"] = "bench-warm"
	resp, _ := e.srv.Check(ctx, cr)
	if resp.GetOkResponse() == nil {
		b.Fatalf("benchmark request is not allowed: %v", resp.GetDeniedResponse().GetBody())
	}
	runs := make([]string, 1000)
	for i := range runs {
		runs[i] = fmt.Sprintf("bench-run-%d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		httpReq.Id = fmt.Sprintf("req-%d", i)
		httpReq.Headers["x-aisecops-run-id"] = runs[i%len(runs)]
		resp, _ := e.srv.Check(ctx, cr)
		if resp.GetOkResponse() == nil {
			b.Fatal("denied")
		}
	}
}
