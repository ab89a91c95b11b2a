package egress

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// loop runs f b.N times and reports MB per CPU-second of this thread
// ("cpu-MB/s") beside the wall-clock MB/s.
func loop(b *testing.B, n int, f func()) {
	defer lockThread()()
	b.SetBytes(int64(n))
	b.ReportAllocs()
	var cpu time.Duration
	for b.Loop() {
		c0 := threadCPU()
		f()
		cpu += threadCPU() - c0
	}
	if cpu > 0 {
		b.ReportMetric(float64(n)*float64(b.N)/cpu.Seconds()/1e6, "cpu-MB/s")
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// realisticJSON is an MCP tools/call body of about n bytes: a write tool
// carrying a document with prose, numbers, identifiers and links to the
// route's own host, and no secrets.
func realisticJSON(n int) []byte {
	var rows []map[string]any
	prose := "The quarterly review covers revenue by region, churn, and the onboarding backlog. " +
		"Action items were assigned to the platform team; see the tracker for details and owners. "
	for i := 0; ; i++ {
		rows = append(rows, map[string]any{
			"id":         fmt.Sprintf("row-%06d", i),
			"uuid":       fmt.Sprintf("3f2b%04x-9c1e-4d7a-b0f2-%012x", i, i*7919),
			"amount":     1234.5 + float64(i),
			"count":      i * 37,
			"updated_at": "2026-03-14T09:26:53Z",
			"link":       fmt.Sprintf("https://db.internal/v1/items/%d?expand=owner", i),
			"summary":    prose,
			"tags":       []string{"finance", "q1", "review"},
		})
		b, _ := json.Marshal(mcpCall(1, map[string]any{"table": "reports", "rows": rows}))
		if len(b) >= n {
			return b
		}
	}
}

func BenchmarkInspectJSON(b *testing.B) {
	in := newTestInspector(b, Limits{})
	for _, size := range []int{8 << 10, 64 << 10} {
		body := realisticJSON(size)
		req := &Request{Method: "POST", Path: "/mcp", Authority: "db.internal", RouteHost: "db.internal", ToolClass: "write",
			ContentType: "application/json", Body: body, Headers: map[string]string{"content-type": "application/json", "mcp-session-id": "abc123"}}
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			loop(b, len(body), func() {
				if r, err := in.Inspect(req, &Policy{}); err != nil || len(r.Findings) != 0 {
					b.Fatalf("%v %v", err, r.Findings)
				}
			})
		})
	}
}

func BenchmarkInspectLLM(b *testing.B) {
	in := newTestInspector(b, Limits{})
	var msgs []any
	msgs = append(msgs, map[string]any{"role": "system", "content": "You are a careful analyst. Answer with citations."})
	for len(msgs) < 60 {
		msgs = append(msgs,
			map[string]any{"role": "user", "content": "Summarise the attached findings and list the open risks, with owners.\nThanks!"},
			map[string]any{"role": "tool", "tool_call_id": "c", "content": strings.Repeat("Search result: the migration plan moves billing to the new cluster in two phases; phase one completes in May. ", 8)},
			map[string]any{"role": "assistant", "content": "Here is the summary of the plan and the risks identified so far."})
	}
	body, _ := json.Marshal(map[string]any{"model": "gpt-4o", "messages": msgs})
	req := &Request{Method: "POST", Path: "/v1/chat/completions", Authority: "api.openai.com", RouteHost: "api.openai.com", ToolClass: "llm", ContentType: "application/json", Body: body}
	loop(b, len(body), func() {
		if r, err := in.Inspect(req, &Policy{}); err != nil || len(r.Findings) != 0 {
			b.Fatalf("%v %v", err, r.Findings)
		}
	})
}

// adversarial bodies: each repeats what one scanner examines most.
func adversarial() map[string][]byte {
	const size = 16 << 20
	fill := func(unit string) []byte { return bytes.Repeat([]byte(unit), size/len(unit)+1)[:size] }
	return map[string][]byte{
		"base64 alphabet": fill("QUtJQUlPU0ZPRE5ON0VYQU1QTEUgaGVsbG8gd29ybGQ+/"),
		"digits":          fill("4111 1111 1111 111"),
		"percent":         fill("%25%41%"),
		"at signs":        fill("a@b.c@"),
		"escapes":         fill(`\u0041\\u\x4`),
		"prefixes":        fill("eyJ.AKIAghp_sk-xoxb-"),
		"keywords":        fill("secret=token=password="),
		"urls":            fill("http://a.b/http://"),
		"iban-like":       fill("GB82 WEST "),
		"full-width":      fill("ＡＫＩＡ\u200b"),
	}
}

func BenchmarkInspectAdversarial16MiB(b *testing.B) {
	in := newTestInspector(b, Limits{})
	for name, body := range adversarial() {
		for _, class := range []string{"write", "llm"} {
			req := &Request{Method: "POST", Path: "/", Authority: "h", RouteHost: "h", ToolClass: class, ContentType: "application/json", Body: body, UntrustedContext: true}
			b.Run(name+"/"+class, func(b *testing.B) {
				loop(b, len(body), func() {
					in.Inspect(req, &Policy{}) // an error (deny) is a fine outcome; time is the point
				})
			})
		}
	}
}

// BenchmarkStages splits the JSON benchmark into its passes.
func BenchmarkStages(b *testing.B) {
	in := newTestInspector(b, Limits{})
	body := realisticJSON(64 << 10)
	s := newScan(in, &Request{RouteHost: "db.internal"}, &Policy{})
	stages := map[string]func(){
		"detect":    func() { s.detect(body, "body", mDLP|mURL, false) },
		"canonical": func() { canonical(body) },
		"runs":      func() { s.runs(body, "body", 0, mDLP|mURL) },
		"emails":    func() { s.emails(body, "body", false) },
	}
	for name, f := range stages {
		b.Run(name, func(b *testing.B) { loop(b, len(body), f) })
	}
}
