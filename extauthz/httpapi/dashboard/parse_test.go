package dashboard

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/finding"
)

// TestParseLineSkipsOnlyReplayFields: cutting a line at its replay fields
// reads exactly what decoding the whole line reads — for a Check with sealed
// input, for an event whose detail has a key "input", and for a line whose
// agent-written values hold the cut's text — and a line cut inside a nested
// object falls back to the whole line. parseLine decodes with encoding/json
// v2; the reference here is encoding/json, so the two must agree on every
// field a record carries.
func TestParseLineSkipsOnlyReplayFields(t *testing.T) {
	t.Parallel()
	check := audit.Record{TS: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC), DecisionID: "d_1", RunID: `r,"input":{`, AgentID: "a",
		Tool: "send_email", Decision: "deny", Reasons: []audit.Reason{{Code: "egress_secret"}}, CumulativeRisk: 1.5,
		ContextProvenance: []audit.Provenance{{SourceType: "web", SourceName: `x","input":1}`, TrustLevel: "untrusted"}},
		Input:             json.RawMessage(`{"plan":{"arguments":{"to":"<sealed>"}}}`), Sealed: &audit.Sealed{KeyID: "k", Nonce: []byte("n"), Ciphertext: []byte("AAAA")}}
	event := audit.Record{TS: check.TS, Event: audit.EventApprovalDecided, ApprovalID: "ap_1", Decision: "approve",
		Detail: map[string]string{"input": "x", "zz": "y"}}
	full := check
	full.MCPMethod, full.OTelTraceID, full.TraceID, full.TokenJTI = "tools/call", "0af7651916cd43dd8448eb211c80319c", "t-1", "jti-1"
	full.ControlIDs, full.PolicyVersion, full.RouteVersion = []string{"AIS-EGR-01", "AIS-RUN-02"}, "sha256:p", "sha256:r"
	full.StepRisk = audit.StepRisk{RStep: 0.3, E: 1.5, T: 1.2, B: 1, Step: 0.54}
	full.EgressFindings = []finding.Finding{{Detector: "aws_access_key_id", Location: "body.text", Class: "secret", Count: 2, Hash: "h"}}
	full.Decision, full.ApprovalID, full.DryRun, full.Explain = "require_approval", "ap_2", true, true
	full.Detail = map[string]string{"from": "v1", "é": "\u2028 <&>"}
	full.RunID = "run \"quoted\" é 日本"
	for name, rec := range map[string]audit.Record{"check": check, "event": event, "full": full} {
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		var whole line
		if err := json.Unmarshal(b, &whole); err != nil {
			t.Fatal(err)
		}
		if name == "check" {
			// The shortcut is taken: the cut is at the top-level input.
			i := bytes.Index(b, inputKey)
			if i < 0 || !json.Valid(append(b[:i:i], '}')) || !bytes.HasPrefix(b[i+len(inputKey):], []byte(`{"plan"`)) {
				t.Errorf("the check's line is not cut at its input: %s", b)
			}
		}
		got, err := parseLine(b)
		if err != nil || !reflect.DeepEqual(got, whole) {
			t.Errorf("%s: parseLine = %+v, %v\nwant %+v", name, got, err, whole)
		}
	}
	nested := `{"ts":"2026-12-02T10:00:00Z","decision_id":"d_2","detail":{"a":"b","input":"c"},"tool":"t","decision":"allow"}`
	if !strings.Contains(nested, string(inputKey)) {
		t.Fatal("the nested case does not hold the cut's text")
	}
	got, err := parseLine([]byte(nested))
	if err != nil || got.Tool != "t" || got.Decision != "allow" || got.Detail["input"] != "c" {
		t.Fatalf("a cut inside a nested object did not fall back: %+v, %v", got, err)
	}
}

// TestDeclarationKeyCreatedOnce: replicas creating the declaration key at the
// same moment end up signing with one key.
func TestDeclarationKeyCreatedOnce(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "declaration-signing-key.pem")
	keys := make([]*DeclarationKey, 8)
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateDeclarationKey(path) })
	}
	wg.Wait()
	for i, k := range keys {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(k.PublicPEM(), keys[0].PublicPEM()) {
			t.Fatalf("replica %d signs with another key", i)
		}
	}
}
