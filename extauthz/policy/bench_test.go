package policy

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/aisecops/aisecops-envoy/extauthz/plan"
	"github.com/aisecops/aisecops-envoy/extauthz/risk"
)

// benchInput is a realistic external-send step: ~1 KB of arguments, two
// provenance labels, a few recent steps and one finding.
func benchInput(b *testing.B) *Input {
	args, err := json.Marshal(map[string]any{
		"to":          []string{"alice@example.com"},
		"cc":          []string{"bob@example.com", "carol@example.com"},
		"subject":     "Quarterly summary for the customer success team",
		"body":        strings.Repeat("The account review is attached; numbers are final. ", 15),
		"attachments": []map[string]any{{"name": "q3.pdf", "size": 48213}, {"name": "notes.txt", "size": 912}},
		"priority":    "normal",
		"thread_id":   "th-9b1c3e",
	})
	if err != nil {
		b.Fatal(err)
	}
	in := baseInput()
	sendEmail(in)
	in.Plan.Arguments = args
	in.Provenance = []plan.Provenance{
		{SourceType: "user", SourceName: "chat", TrustLevel: "internal"},
		{SourceType: "tool", SourceName: "db.read", TrustLevel: "internal", SourceHash: "sha256:ab"},
	}
	in.Run.Facts = []string{risk.FactStep("read", "internal"), risk.FactStep("read", "neutral")}
	in.Findings = []Finding{{Detector: "email", Location: "body.arguments.body", Count: 1, Hash: "h", Class: "pii"}}
	in.Risk = Risk{RStep: 0.4, E: 1.2, T: 2, B: 1, Step: 0.96, TotalBefore: 0.1, Total: 1.06, Escalations: []string{"external_send_after_internal_read"}}
	return in
}

// BenchmarkEval compares the engine's path (hand-built ast.Value input,
// EvalParsedInput) with rego.EvalInput over a Go map from a JSON round trip.
//
//	go test ./extauthz/policy -run '^$' -bench BenchmarkEval -benchtime=2000x
func BenchmarkEval(b *testing.B) {
	e := newEmbedded(b)
	in := benchInput(b)
	c := e.cur.Load()
	if d, err := e.Eval(context.Background(), in); err != nil || d.Decision != RequireApproval {
		b.Fatalf("bench input: %+v %v", d, err)
	}
	if len(in.Plan.Arguments) < 1000 {
		b.Fatalf("arguments are %d bytes, want ~1 KB", len(in.Plan.Arguments))
	}

	b.Run("ast-value", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		for b.Loop() {
			if _, err := e.Eval(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ast-value-deadline", func(b *testing.B) {
		b.ReportAllocs()
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		for b.Loop() {
			if _, err := e.Eval(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-map-EvalInput", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		for b.Loop() {
			raw, err := json.Marshal(in)
			if err != nil {
				b.Fatal(err)
			}
			var m map[string]any
			if err := util.UnmarshalJSON(raw, &m); err != nil {
				b.Fatal(err)
			}
			if _, err := c.eval(ctx, rego.EvalInput(m)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-map-prebuilt-EvalInput", func(b *testing.B) {
		raw, _ := json.Marshal(in)
		var m map[string]any
		if err := util.UnmarshalJSON(raw, &m); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		ctx := context.Background()
		for b.Loop() {
			if _, err := c.eval(ctx, rego.EvalInput(m)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("convert-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := inputValue(in, true); err != nil {
				b.Fatal(err)
			}
		}
	})
}
