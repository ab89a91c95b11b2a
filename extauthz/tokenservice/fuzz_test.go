package tokenservice

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/reason"
)

// FuzzParseRequest: the token request parser never panics, fails only with a
// *reason.Error, and everything it accepts is within the documented bounds.
func FuzzParseRequest(f *testing.F) {
	for _, seed := range []string{
		`{"tool":"db.read","scope":"crm","run_id":"run-1","ttl":"2m","constraints":{"max_rows":100,"max_cost":1.5,"expiry":"2026-03-02T17:00:00Z"},"single_use":true}`,
		`{"tool":"db.read"}`, `{"tool":"db.read","tool":"x"}`, `{"Tool":"db.read"}`, `{"tool":"db.read"} {}`,
		`{"tool":"db.read","constraints":null}`, `{"tool":"db.read","constraints":{"max_rows":-1}}`,
		`{"tool":"db.read","ttl":"-1s"}`, `{"tool":"db.read","ttl":"9999999h"}`, `[]`, `null`, ``, `{"tool":"\u0000"}`,
		`{"tool":"db.read","constraints":{"MAX_ROWS":1,"max_rows":2}}`, `{"tool":"db.read","max_cost":1e999}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := ParseRequest(data, t0, 0)
		if err != nil {
			if code := reason.CodeOf(err); code != reason.BadRequest && code != reason.DuplicateKey {
				t.Fatalf("error code %s: %v", code, err)
			}
			return
		}
		switch {
		case req.Tool == "" || len(req.Tool) > maxToolLen || !validID(req.Tool, toolChars):
			t.Fatalf("accepted tool %q", req.Tool)
		case req.RunID != "" && (len(req.RunID) > maxIDLen || !validID(req.RunID, idChars)):
			t.Fatalf("accepted run id %q", req.RunID)
		case req.TTL < time.Second:
			t.Fatalf("accepted ttl %v", req.TTL)
		case len(req.Scope) > maxScope || !printable(req.Scope):
			t.Fatalf("accepted scope %q", req.Scope)
		case req.Constraints.MaxRows != nil && *req.Constraints.MaxRows < 0,
			req.Constraints.MaxCost != nil && *req.Constraints.MaxCost < 0:
			t.Fatalf("accepted constraints %+v", req.Constraints)
		}
	})
}

// BenchmarkIssue is one POST /v1/tokens end to end: workload verification,
// parsing, the real policy, signing and an audit line.
func BenchmarkIssue(b *testing.B) {
	f := newFixture(b, nil)
	wl := f.workload(b, sa("reader"), t0, time.Hour)
	body := `{"tool":"db.read","run_id":"run-1","ttl":"2m"}`
	b.ReportAllocs()
	for b.Loop() {
		w := f.do(b, wl, body)
		if w.Code != http.StatusCreated {
			b.Fatalf("status %d: %s", w.Code, strings.TrimSpace(w.Body.String()))
		}
	}
}
