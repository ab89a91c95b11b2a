package extauthz_test

import (
	"context"
	"fmt"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/aisecops/aisecops-envoy/extauthz"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
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
	cr := benchRequest(b, e)
	httpReq := cr.Attributes.Request.Http
	ctx := context.Background()
	runs := make([]string, 1000)
	for i := range runs {
		runs[i] = fmt.Sprintf("bench-run-%d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuNow()
	for i := 0; i < b.N; i++ {
		httpReq.Id = fmt.Sprintf("req-%d", i)
		httpReq.Headers["x-aisecops-run-id"] = runs[i%len(runs)]
		resp, _ := e.srv.Check(ctx, cr)
		if resp.GetOkResponse() == nil {
			b.Fatal("denied")
		}
	}
	b.ReportMetric(float64(cpuNow()-cpu0)/float64(b.N), "cpu-ns/op")
}

// benchRequest is the benchmark's Check: bench-agent calling the MCP search
// tool with a ~1 KB tools/call body and a valid token.
func benchRequest(b *testing.B, e *env) *envoy_service_auth_v3.CheckRequest {
	b.Helper()
	tok := e.token(b, "bench-agent", "docs.search")
	query := strings.Repeat("customer churn analysis for Q3 accounts; ", 22)
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"query":%q,"top_k":5,"filters":{"region":"emea","year":2026}}}}`, query)
	if len(body) < 1000 || len(body) > 1100 {
		b.Fatalf("body is %d bytes, want ~1 KB", len(body))
	}
	r := req{ext: e.route("docs.search"), headers: map[string]string{"authorization": "Bearer " + tok, "x-aisecops-run-id": "bench-warm"},
		body: body, path: "/mcp", host: "mcp.internal", id: "warm"}
	cr := r.build()
	if resp, _ := e.srv.Check(context.Background(), cr); resp.GetOkResponse() == nil {
		b.Fatalf("benchmark request is not allowed: %v", resp.GetDeniedResponse().GetBody())
	}
	return cr
}

// BenchmarkCheckTraced is BenchmarkCheck with tracing on: a span per Check and
// per stage, exported in batches to an exporter that drops them (the cost is
// ours and the SDK's, not a network's).
//
//	go test ./extauthz -run '^$' -bench 'BenchmarkCheck(Traced)?$' -benchmem
func BenchmarkCheckTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}))
	defer tp.Shutdown(context.Background())
	e := newEnv(b, func(c *extauthz.Config) { c.Tracer = tp.Tracer("bench") })
	cr := benchRequest(b, e)
	httpReq := cr.Attributes.Request.Http
	httpReq.Headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		httpReq.Id = fmt.Sprintf("req-%d", i)
		httpReq.Headers["x-aisecops-run-id"] = fmt.Sprintf("bench-run-%d", i%1000)
		if resp, _ := e.srv.Check(ctx, cr); resp.GetOkResponse() == nil {
			b.Fatal("denied")
		}
	}
}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }
