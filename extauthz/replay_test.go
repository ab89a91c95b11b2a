package extauthz_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/extauthz/replay"
	"github.com/aisecops/aisecops-envoy/policies"
)

// assertReplays replays every record of e's audit log under the bundle that
// decided it and fails unless each one decides exactly as recorded. At least
// min records must have been replayable, so the check cannot pass empty.
func (e *env) assertReplays(t *testing.T, min int) {
	t.Helper()
	b := e.engine.Current()
	rep, err := replay.Diff(context.Background(), e.auditRecords(t), replay.Options{Bundle: b, Opener: e.sealer})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() || rep.Replayed < min {
		t.Fatalf("replay under the deciding bundle: %d of %d replayed (want ≥ %d), changes %+v, problems %+v",
			rep.Replayed, rep.Total, min, rep.Changes, rep.Problems)
	}
}

// candidateBundle is the bundled policy with extra files added, as a
// candidate a team would replay before rolling it out.
func candidateBundle(t *testing.T, extra map[string]string) *policy.Bundle {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(policies.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS(), path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, path), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range extra {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	eng, err := policy.New(context.Background(), policy.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return eng.Current()
}

// stricter denies mail to carol: a rule that reads the arguments, so
// it changes decisions only if the replay restored them.
const stricter = `package aisecops.authz

import rego.v1

deny_reasons contains {
	"code": "recipient_forbidden",
	"message": "mail to carol is not allowed",
	"control_id": "AIS-EXE-01",
} if {
	input.route.tool == "send_email"
	startswith(input.plan.arguments.to, "carol@")
}
`

// TestReplayDiffStricterBundle: a recorded log replayed under a stricter
// bundle lists exactly the calls it changes — an allowed send that becomes a
// deny, and a denied send whose reasons grow — and nothing else.
func TestReplayDiffStricterBundle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var ids []string
	for _, c := range []struct{ agent, tool, run, args string }{
		{"demo-agent", "db.read", "r1", `{"table":"t"}`},
		{"demo-agent", "send_email", "r2", `{"to":"bob@example.com","subject":"s","body":"b"}`},
		{"demo-agent", "send_email", "r3", `{"to":"carol@example.com","subject":"s","body":"b"}`},
	} {
		res := e.check(t, e.call(t, c.agent, c.tool, c.run, c.args))
		if !res.allowed {
			t.Fatalf("%s in %s: %v", c.tool, c.run, reasonCodes(res.body))
		}
		ids = append(ids, res.headers[extauthz.HeaderDecisionID])
	}
	// Scenario 3.1's injected send: denied today, for one more reason after.
	r := e.call(t, "demo-agent", "send_email", "r4", `{"to":"carol@example.com","subject":"fwd","body":"x"}`)
	r.headers["x-aisecops-provenance"] = b64(`[{"source_type":"retrieval_chunk","source_name":"kb","trust_level":"unverified"}]`)
	res := e.check(t, r)
	if res.allowed {
		t.Fatal("injected send allowed")
	}
	ids = append(ids, res.body.DecisionID)
	// A stage denial before the policy: not replayable, kept.
	bad := e.call(t, "demo-agent", "db.read", "r5", "")
	bad.headers["authorization"] = "Bearer not-a-token"
	if res := e.check(t, bad); res.allowed {
		t.Fatal("bad token allowed")
	}

	rep, err := replay.Diff(context.Background(), e.auditRecords(t), replay.Options{Bundle: candidateBundle(t, map[string]string{"strict.rego": stricter}), Opener: e.sealer})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Total != 5 || rep.Replayed != 4 || rep.NotReplayable != 1 || rep.Changed != 2 || len(rep.Problems) != 0 {
		t.Fatalf("report: %+v", rep)
	}
	want := []replay.Change{
		{DecisionID: ids[2], RunID: "r3", AgentID: "demo-agent", Tool: "send_email", Kind: replay.AllowToDeny, Before: "allow", After: "deny"},
		{DecisionID: ids[3], RunID: "r4", AgentID: "demo-agent", Tool: "send_email", Kind: replay.ReasonsChanged, Before: "deny", After: "deny"},
	}
	for i, w := range want {
		g := rep.Changes[i]
		if g.DecisionID != w.DecisionID || g.RunID != w.RunID || g.AgentID != w.AgentID || g.Tool != w.Tool || g.Kind != w.Kind || g.Before != w.Before || g.After != w.After {
			t.Errorf("change %d = %+v, want %+v", i, g, w)
		}
		if !slices.Contains(g.ReasonsAfter, "recipient_forbidden") || slices.Contains(g.ReasonsBefore, "recipient_forbidden") {
			t.Errorf("change %d reasons %v → %v", i, g.ReasonsBefore, g.ReasonsAfter)
		}
	}
	if c := rep.ByTool["send_email"]; c.Replayed != 3 || c.Changed != 2 || c.ByKind[replay.AllowToDeny] != 1 || c.ByKind[replay.ReasonsChanged] != 1 {
		t.Errorf("send_email counts %+v", c)
	}
	if c := rep.ByTool["db.read"]; c.Replayed != 1 || c.Changed != 0 {
		t.Errorf("db.read counts %+v", c)
	}
	if c := rep.ByAgent["demo-agent"]; c.Replayed != 4 || c.Changed != 2 {
		t.Errorf("demo-agent counts %+v", c)
	}
	// The same log under the deciding bundle changes nothing.
	e.assertReplays(t, 4)
}

// TestReplayNeedsTheDeploymentsKeys: another deployment's seal keys open
// nothing, and a record whose sealed values were moved to another decision
// (or altered) does not open either — each is a problem, never a silent
// replay on missing arguments.
func TestReplayNeedsTheDeploymentsKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, run := range []string{"k1", "k2"} {
		if res := e.check(t, e.call(t, "demo-agent", "send_email", run, `{"to":"bob@example.com","subject":"s","body":"b"}`)); !res.allowed {
			t.Fatal(reasonCodes(res.body))
		}
	}
	recs := e.auditRecords(t)
	other, err := audit.NewSealer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := replay.Diff(context.Background(), recs, replay.Options{Bundle: e.engine.Current(), Opener: other})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 2 || rep.Replayed != 0 || rep.Clean() {
		t.Fatalf("foreign keys: %+v", rep)
	}
	swapped := slices.Clone(recs)
	swapped[0].Sealed, swapped[1].Sealed = swapped[1].Sealed, swapped[0].Sealed
	flipped := *recs[0].Sealed
	flipped.Ciphertext = slices.Clone(flipped.Ciphertext)
	flipped.Ciphertext[0] ^= 1
	altered := slices.Clone(recs[:1])
	altered[0].Sealed = &flipped
	for name, rs := range map[string][]audit.Record{"swapped": swapped, "altered": altered} {
		rep, err := replay.Diff(context.Background(), rs, replay.Options{Bundle: e.engine.Current(), Opener: e.sealer})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Problems) != len(rs) || rep.Replayed != 0 {
			t.Errorf("%s sealed values: %+v", name, rep)
		}
	}
	// A record whose open input claims a sealed string it has no place for
	// is refused as well (the sealed map must fit the input).
	if _, err := extauthz.Unseal(&recs[0], e.sealer); err != nil {
		t.Fatalf("the untouched record does not open: %v", err)
	}
}

// TestAuditFileHoldsNoClearArgument: argument values — a secret among them —
// reach the audit file in no encoding: not as they were sent, JSON-escaped,
// base64 (standard or URL), hex or URL-encoded. The replay still gets them.
func TestAuditFileHoldsNoClearArgument(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	values := []string{"zq-7f3a9-confidential-subject", "quarterly numbers: 2,400,000 EUR", "AKIAIOSFODNN7EXAMPLE", "zed.quill@example.com"}
	args, err := json.Marshal(map[string]string{"to": values[3], "subject": values[0], "body": values[1] + " key " + values[2]})
	if err != nil {
		t.Fatal(err)
	}
	e.check(t, e.call(t, "demo-agent", "send_email", "run-clear", string(args)))
	if res := e.check(t, e.call(t, "demo-agent", "db.read", "run-clear", `{"table":"zq-7f3a9-confidential-subject"}`)); !res.allowed {
		t.Fatal(reasonCodes(res.body))
	}
	raw, err := os.ReadFile(e.audit)
	if err != nil {
		t.Fatal(err)
	}
	file := string(raw)
	for _, v := range values {
		js, _ := json.Marshal(v)
		for enc, s := range map[string]string{
			"clear": v, "json": string(js[1 : len(js)-1]), "base64": base64.StdEncoding.EncodeToString([]byte(v)),
			"base64url": base64.RawURLEncoding.EncodeToString([]byte(v)), "hex": hex.EncodeToString([]byte(v)),
			"url": url.QueryEscape(v), "path": url.PathEscape(v),
		} {
			if strings.Contains(file, s) {
				t.Errorf("the audit file holds %q %s", v, enc)
			}
		}
	}
	recs := e.auditRecords(t)
	if len(recs) != 2 || recs[0].Input == nil || recs[1].Input == nil {
		t.Fatalf("records lack their input: %+v", recs)
	}
	in, err := extauthz.Unseal(&recs[0], e.sealer)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(in.Plan.Arguments, &got); err != nil || got["subject"] != values[0] {
		t.Fatalf("unsealed arguments %s (%v)", in.Plan.Arguments, err)
	}
}
