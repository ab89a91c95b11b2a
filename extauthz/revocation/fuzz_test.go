package revocation

import (
	"bytes"
	"testing"
)

// FuzzParse: the file parser and the POST body decoder never panic, and what
// they accept holds only non-empty, bounded ids.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{"jtis":[{"jti":"a","expires_at":"2026-03-02T17:00:00Z"}],"agents":[{"agent_id":"b","revoked_before":"2026-03-02T16:00:00Z"}]}`,
		`{"jtis":[{"jti":""}]}`, `{"agents":[{"agent_id":"a"}]}`, `{} {}`, `null`, `[]`,
		`{"jti":"j"}`, `{"agent_id":"a","before":"2026-03-02T16:00:00Z"}`, `{"jti":"j","JTI":"k"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if l, err := ParseFile(data); err == nil {
			for _, e := range l.JTIs {
				if e.JTI == "" || len(e.JTI) > maxIDLen {
					t.Fatalf("accepted jti %q", e.JTI)
				}
			}
			for _, e := range l.Agents {
				if e.AgentID == "" || len(e.AgentID) > maxIDLen || e.RevokedBefore.IsZero() {
					t.Fatalf("accepted agent entry %+v", e)
				}
			}
		}
		if req, err := decodeRevoke(bytes.NewReader(data)); err == nil {
			if (req.JTI == "") == (req.AgentID == "") {
				t.Fatalf("accepted %+v", req)
			}
		}
	})
}
