package plan

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

func TestFoldKey(t *testing.T) {
	t.Parallel()
	same := [][2]string{{"k", "\u212a"}, {"s", "\u017f"}, {"Method", "mETHOD"}, {"ǅ", "ǆ"}}
	for _, p := range same {
		if foldKey(p[0]) != foldKey(p[1]) || !strings.EqualFold(p[0], p[1]) {
			t.Errorf("foldKey(%q) != foldKey(%q)", p[0], p[1])
		}
	}
	if foldKey("a") == foldKey("b") || foldKey("ß") == foldKey("ss") {
		t.Error("foldKey merges keys EqualFold keeps apart")
	}
}

// FuzzFromCheckRequest: no input panics, every error is a *reason.Error, and a
// plan that is returned keeps the package's invariants.
func FuzzFromCheckRequest(f *testing.F) {
	seeds := []string{
		planBody, mcpCall, mcpInit, mcpNotify, mcpCallOther, dangerousPlan,
		`[` + mcpNotify + `,` + mcpCall + `]`, `[` + mcpCall + `,` + mcpCallOther + `]`, `[]`,
		`{"tool":"db.read","tool":"db.write"}`, `{"a":[{"b":{"K":1,"k":2}}]}`,
		`{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"search"}}`,
		`{"tool":"db.read","arguments":{"q":"\ud800"}}`, "{\"q\":\"\xff\"}", `{"tool":"db.read"} x`,
		strings.Repeat(`[`, 70), "a,b\n1,2", "",
	}
	for i, s := range seeds {
		f.Add([]byte(s), "Bearer abc.def.ghi", "run-1", b64(`[{"source_type":"a","source_name":"b","trust_level":"c"}]`),
			"", "/a/../b", "application/json", i%2 == 0, i%3 == 0)
	}
	f.Add([]byte(planBody), "bearer x,y", "r1,r2", "!!", b64(`{"tool":"db.read","arguments":{"z":1}}`), "//admin", "text/plain", true, false)
	f.Add([]byte(mcpCall), "", "", "", b64(`{"tool":"search","arguments":{"q":"cats","limit":5}}`), "/%2e%2e/x", "", false, true)

	f.Fuzz(func(t *testing.T, body []byte, auth, runID, prov, planHdr, path, ctype string, headerMap, mcpRoute bool) {
		c := newCheck().rawBody(body).h(":path", path).h("content-type", ctype)
		if mcpRoute {
			c.mcp().h(":path", path)
		}
		set := func(k, v string) {
			if v == "" {
				return
			}
			if headerMap {
				c.entry(k, v, !utf8.ValidString(v))
			} else {
				c.h(k, v)
			}
		}
		set("authorization", auth)
		set("x-aisecops-run-id", runID)
		set("x-aisecops-provenance", prov)
		set("x-aisecops-plan", planHdr)
		if headerMap {
			c.headerMap()
		}
		p, err := FromCheckRequest(c.build(), Options{MaxBodyBytes: 1 << 16})
		if err != nil {
			if _, ok := err.(*reason.Error); !ok {
				t.Fatalf("error %T %v is not a *reason.Error", err, err)
			}
			if p != nil && len(p.Calls) > 0 {
				t.Fatal("plan with a call returned with an error")
			}
			return
		}
		if len(p.Calls) > 1 {
			t.Fatalf("%d calls in one plan", len(p.Calls))
		}
		for _, cl := range p.Calls {
			if err := CheckTool(p.Route, p.Source, cl); err != nil {
				t.Fatalf("returned call fails CheckTool: %v", err)
			}
			again, err := CanonicalJSON(cl.Arguments)
			if err != nil || !bytes.Equal(again, cl.Arguments) || !json.Valid(cl.Arguments) || cl.Arguments[0] != '{' {
				t.Fatalf("arguments %q are not a canonical object (%v)", cl.Arguments, err)
			}
		}
		if p.Path != "*" {
			if !strings.HasPrefix(p.Path, "/") || strings.Contains(p.Path, "//") ||
				strings.Contains(p.Path+"/", "/../") || strings.Contains(p.Path+"/", "/./") || strings.ContainsAny(p.Path, "?#\\") {
				t.Fatalf("path %q from %q is not normal", p.Path, path)
			}
			if again, err := NormalizePath(p.Path); err != nil || again != p.Path {
				t.Fatalf("NormalizePath not idempotent: %q → %q (%v)", p.Path, again, err)
			}
		}
		if p.Token != "" && (len(p.Token) > DefaultMaxTokenBytes || strings.ContainsAny(p.Token, " ,")) {
			t.Fatalf("token %q accepted", p.Token)
		}
	})
}

// BenchmarkFromCheckRequest parses an MCP tools/call of about 1 KB with a bearer
// token and the usual input headers.
func BenchmarkFromCheckRequest(b *testing.B) {
	body := `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search","arguments":{` +
		`"query":"` + strings.Repeat("quarterly revenue by region ", 20) + `",` +
		`"filters":{"region":["emea","apac","amer"],"year":2025,"include_drafts":false},` +
		`"limit":25,"offset":0,"sort":{"field":"date","order":"desc"},` +
		`"fields":["title","url","snippet","author","date","tags"],` +
		`"context":"` + strings.Repeat("x", 200) + `"}}}`
	req := newCheck().mcp().withBody(body).
		h("authorization", "Bearer eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJkZW1vLWFnZW50IiwidG9vbCI6ImRvY3Muc2VhcmNoIn0.c2lnbmF0dXJl").
		h("x-aisecops-run-id", "run-1234").
		h("x-aisecops-trace-id", "trace-5678").
		h("mcp-session-id", "sess-abcdef").
		h("user-agent", "agent-sdk/1.0").
		build()
	if _, err := FromCheckRequest(req, Options{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := FromCheckRequest(req, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzNormalizePath: no input panics, every error is bad_request, and a path
// that is returned is normal: it starts with '/' (or is "*"), normalising it
// again changes nothing, and it has no empty, "." or ".." segment, no
// backslash, query or fragment, and no escape an upstream would decode into a
// separator or a dot.
func FuzzNormalizePath(f *testing.F) {
	for in := range normalizePathCases {
		f.Add(in)
	}
	for _, in := range badPaths {
		f.Add(in)
	}
	f.Add("/a/%2e%2E/%2F%5c/./..%2f.%2e")
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := NormalizePath(raw)
		if err != nil {
			if reason.CodeOf(err) != reason.BadRequest || p != "" {
				t.Fatalf("NormalizePath(%q) = %q, %v: want no path and bad_request", raw, p, err)
			}
			return
		}
		if p == "*" {
			if raw != "*" {
				t.Fatalf("NormalizePath(%q) = \"*\"", raw)
			}
			return
		}
		upper := strings.ToUpper(p)
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") ||
			strings.Contains(p+"/", "/./") || strings.Contains(p+"/", "/../") ||
			strings.ContainsAny(p, "\\?#") ||
			strings.Contains(upper, "%2F") || strings.Contains(upper, "%5C") || strings.Contains(upper, "%2E") {
			t.Fatalf("NormalizePath(%q) = %q is not normal", raw, p)
		}
		if again, err := NormalizePath(p); err != nil || again != p {
			t.Fatalf("NormalizePath not idempotent: %q → %q → %q (%v)", raw, p, again, err)
		}
	})
}
