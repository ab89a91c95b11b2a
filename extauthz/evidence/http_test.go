package evidence

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
)

func evidenceAPI(t *testing.T, f *fixture) (http.Handler, *handler) {
	t.Helper()
	st, err := httpapi.NewStaticTokens([]httpapi.Credential{
		{Name: "ops", TokenSHA256: httpapi.TokenSHA256("ops"), Roles: []string{httpapi.RoleOperator}},
		{Name: "alice", TokenSHA256: httpapi.TokenSHA256("approver"), Roles: []string{httpapi.RoleApprover}},
	})
	if err != nil {
		t.Fatal(err)
	}
	routes := Routes(Source{Path: f.path, Keys: f.keys, Signer: f.signer, Clock: func() time.Time { return t0.Add(time.Hour) }})
	return httpapi.Handler(httpapi.Config{Auth: &httpapi.Auth{Authenticators: []httpapi.Authenticator{st}}, Routes: routes}), routes[0].Handler.(*handler)
}

func getEvidence(h http.Handler, query, bearer string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/v1/evidence?"+query, nil)
	if bearer != "" {
		r.Header.Set("Authorization", "Bearer "+bearer)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestEvidenceEndpoint: GET /v1/evidence streams a file that verifies with
// the log's public key, over the log's rotated files too; it needs the
// operator role, checks its range, and runs one export at a time.
func TestEvidenceEndpoint(t *testing.T) {
	f := newFixture(t)
	h, inner := evidenceAPI(t, f)
	w := getEvidence(h, "", "ops") // the last 24 hours: every record
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-ndjson" || !strings.Contains(w.Header().Get("Content-Disposition"), "attachment") {
		t.Fatalf("%d %v %s", w.Code, w.Header(), w.Body)
	}
	rep, err := Verify(bytes.NewReader(w.Body.Bytes()), f.pub())
	if err != nil || rep.Records != 11 || len(rep.Header.Files) != 2 {
		t.Fatalf("%v %+v", err, rep)
	}
	q := url.Values{"from": {t0.Add(5 * time.Minute).Format(time.RFC3339)}, "to": {t0.Add(7 * time.Minute).Format(time.RFC3339)}}
	if rep, err := Verify(bytes.NewReader(getEvidence(h, q.Encode(), "ops").Body.Bytes()), f.pub()); err != nil || rep.Records != 2 {
		t.Fatalf("range: %v %+v", err, rep)
	}

	for _, c := range []struct {
		query, bearer string
		status        int
		code          string
	}{
		{"", "", 401, "unauthenticated"},
		{"", "approver", 403, "forbidden"},
		{"from=yesterday", "ops", 400, "bad_request"},
		{"from=2026-03-02T12:00:00Z&to=2026-03-02T11:00:00Z", "ops", 400, "bad_request"},
		{"from=2025-01-01T00:00:00Z&to=2026-03-02T11:00:00Z", "ops", 400, "bad_request"},
		{"from=2026-03-02T00:00:00Z&from=2026-03-02T01:00:00Z", "ops", 400, "bad_request"},
		{"path=../../etc/passwd", "ops", 400, "bad_request"},
		{"to=" + strings.Repeat("9", 600), "ops", 400, "bad_request"},
	} {
		w := getEvidence(h, c.query, c.bearer)
		if w.Code != c.status || !strings.Contains(w.Body.String(), `"code": "`+c.code+`"`) {
			t.Errorf("?%.40s as %q: %d %s, want %d %s", c.query, c.bearer, w.Code, w.Body, c.status, c.code)
		}
	}
	inner.busy <- struct{}{}
	if w := getEvidence(h, "", "ops"); w.Code != http.StatusTooManyRequests || !strings.Contains(w.Body.String(), `"busy"`) {
		t.Errorf("second export at once: %d %s", w.Code, w.Body)
	}
	<-inner.busy
}
