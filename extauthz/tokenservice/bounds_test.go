package tokenservice

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
)

// revokedAgents is a revocation list that names agents.
type revokedAgents map[string]bool

func (r revokedAgents) AgentRevoked(agent string, _ time.Time) bool { return r[agent] }

// TestRevokedAgentCannotMint: revoking an agent stops its minting too.
func TestRevokedAgentCannotMint(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Revocations = revokedAgents{"demo-agent": true} })
	w := f.do(t, f.workload(t, sa("demo-agent"), t0, time.Hour), `{"tool":"db.read"}`)
	if w.Code != http.StatusForbidden {
		t.Fatalf("revoked agent: status %d", w.Code)
	}
	if diff := cmp.Diff([]string{"token_revoked"}, codes(decodeRefused(t, w).Reasons)); diff != "" {
		t.Error(diff)
	}
	if w := f.do(t, f.workload(t, sa("reader"), t0, time.Hour), `{"tool":"db.read"}`); w.Code != http.StatusCreated {
		t.Fatalf("another agent: status %d", w.Code)
	}
}

// TestMintedConstraintsBoundedByGrant: scope, max_rows and max_cost are at
// most what the routes file grants the agent on the tool, and a token with no
// constraint of its own states the grant's.
func TestMintedConstraintsBoundedByGrant(t *testing.T) {
	f := newFixture(t, nil)
	wl := func() string { return f.workload(t, sa("granted"), t0, time.Hour) }
	for body, code := range map[string]string{
		`{"tool":"db.read","scope":"tenant.other.payroll"}`:                          "token_scope",
		`{"tool":"db.read","scope":"project.alphabet"}`:                              "token_scope",
		`{"tool":"db.read"}`:                                                         "token_scope", // the grant names scopes: one is required
		`{"tool":"db.read","scope":"project.alpha","constraints":{"max_rows":101}}`:  "token_constraint",
		`{"tool":"db.read","scope":"project.alpha","constraints":{"max_cost":0.51}}`: "token_constraint",
	} {
		w := f.do(t, wl(), body)
		if w.Code != http.StatusForbidden {
			t.Fatalf("%s: status %d", body, w.Code)
		}
		if diff := cmp.Diff([]string{code}, codes(decodeRefused(t, w).Reasons)); diff != "" {
			t.Errorf("%s: %s", body, diff)
		}
	}
	w := f.do(t, wl(), `{"tool":"db.read","scope":"project.alpha.orders"}`)
	if w.Code != http.StatusCreated {
		t.Fatalf("within the grant: status %d: %s", w.Code, w.Body)
	}
	c, err := f.verifier(t).Verify(t.Context(), decodeIssued(t, w).Token, t0)
	if err != nil {
		t.Fatal(err)
	}
	want := capability.Constraints{MaxRows: ptr(int64(100)), MaxCost: ptr(0.5)}
	if diff := cmp.Diff(want, c.Constraints); diff != "" || c.Scope != "project.alpha.orders" {
		t.Errorf("scope %q, constraints (-want +got):\n%s", c.Scope, diff)
	}
}

func ptr[T any](v T) *T { return &v }

// TestRunBoundTokensOnlyForOwnRuns: a run id another agent opened is not
// minted for.
func TestRunBoundTokensOnlyForOwnRuns(t *testing.T) {
	f := newFixture(t, nil)
	if w := f.do(t, f.workload(t, sa("reader"), t0, time.Hour), `{"tool":"db.read","run_id":"run-r"}`); w.Code != http.StatusCreated {
		t.Fatalf("first agent: status %d", w.Code)
	}
	for _, run := range []string{"run-r", "agent:reader"} {
		if run == "agent:reader" {
			if w := f.do(t, f.workload(t, sa("reader"), t0, time.Hour), `{"tool":"db.read","run_id":"agent:reader"}`); w.Code != http.StatusCreated {
				t.Fatalf("reader's default run: status %d", w.Code)
			}
		}
		w := f.do(t, f.workload(t, sa("demo-agent"), t0, time.Hour), `{"tool":"db.read","run_id":"`+run+`"}`)
		if w.Code != http.StatusForbidden {
			t.Fatalf("%s for another agent: status %d", run, w.Code)
		}
		if diff := cmp.Diff([]string{"run_not_owned"}, codes(decodeRefused(t, w).Reasons)); diff != "" {
			t.Error(diff)
		}
	}
}
