package httpapi

import (
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/policies"
)

// bundledFiles is the bundled policy as a candidate's files.
func bundledFiles(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range []string{"authz.rego", "tokens.rego", "data.json"} {
		b, err := fs.ReadFile(policies.FS(), name)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = string(b)
	}
	return out
}

// TestReplayDiffRefusesBadCandidates: what the endpoint is sent is bounded and
// checked before anything compiles, and a candidate cannot reach the network
// or the file system.
func TestReplayDiffRefusesBadCandidates(t *testing.T) {
	t.Parallel()
	sealer, err := audit.NewSealer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := ReplayHandler(ReplayConfig{Opener: sealer, Records: func(time.Time, time.Time, int) ([]audit.Record, error) { return nil, nil }})
	withFile := func(name, body string) map[string]any {
		f := bundledFiles(t)
		f[name] = body
		return map[string]any{"policies": f}
	}
	many := map[string]string{}
	for i := range maxPolicyFiles + 1 {
		many[strings.Repeat("a", i+1)+".rego"] = "package x"
	}
	tests := map[string]struct {
		body any
		code string
	}{
		"not json":           {"{", "bad_request"},
		"unknown field":      {map[string]any{"policies": bundledFiles(t), "evil": 1}, "bad_request"},
		"no policies":        {map[string]any{}, "bad_policies"},
		"path in name":       {withFile("../x.rego", "package x"), "bad_policies"},
		"absolute name":      {withFile("/etc/x.rego", "package x"), "bad_policies"},
		"subdirectory":       {withFile("a/x.rego", "package x"), "bad_policies"},
		"other file type":    {withFile("x.sh", "rm -rf /"), "bad_policies"},
		"hidden file":        {withFile(".x.rego", "package x"), "bad_policies"},
		"too many files":     {map[string]any{"policies": many}, "bad_policies"},
		"limit too large":    {map[string]any{"policies": bundledFiles(t), "limit": maxReplayLimit + 1}, "bad_request"},
		"negative limit":     {map[string]any{"policies": bundledFiles(t), "limit": -1}, "bad_request"},
		"from after to":      {map[string]any{"policies": bundledFiles(t), "from": "2026-02-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "bad_request"},
		"does not compile":   {withFile("x.rego", "package aisecops.authz\nthis is not rego"), "bad_policies"},
		"network builtin":    {withFile("x.rego", "package aisecops.authz\nimport rego.v1\nr := http.send({\"method\": \"get\", \"url\": \"http://169.254.169.254/\"})"), "bad_policies"},
		"opa runtime":        {withFile("x.rego", "package aisecops.authz\nimport rego.v1\nr := opa.runtime()"), "bad_policies"},
		"routes unsupported": {map[string]any{"policies": bundledFiles(t), "config": "tools: []"}, "bad_request"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var body string
			if s, ok := tc.body.(string); ok {
				body = s
			} else {
				b, err := json.Marshal(tc.body)
				if err != nil {
					t.Fatal(err)
				}
				body = string(b)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/replay/diff", strings.NewReader(body)))
			var got struct{ Error Error }
			if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.Error.Code != tc.code || w.Code < 400 {
				t.Fatalf("%d %s, want %s", w.Code, w.Body, tc.code)
			}
		})
	}
	// The bundled policy as the candidate over no records: a clean report.
	b, _ := json.Marshal(map[string]any{"policies": bundledFiles(t)})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/replay/diff", strings.NewReader(string(b))))
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"changed": 0`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

// TestReplayDiffRangeTooLarge: more records than the limit is an error that
// says to narrow the range, never a silently partial report.
func TestReplayDiffRangeTooLarge(t *testing.T) {
	t.Parallel()
	sealer, err := audit.NewSealer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := ReplayHandler(ReplayConfig{Opener: sealer, Records: func(_, _ time.Time, limit int) ([]audit.Record, error) {
		return make([]audit.Record, limit), audit.ErrTooMany
	}})
	b, _ := json.Marshal(map[string]any{"policies": bundledFiles(t), "limit": 5})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/replay/diff", strings.NewReader(string(b))))
	if w.Code != http.StatusUnprocessableEntity || !strings.Contains(w.Body.String(), "range_too_large") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}
