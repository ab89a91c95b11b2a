package extauthz_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
)

// swapBundle is a policy bundle whose decision, version and escalation factor
// all say which bundle it is: allow + version "swap-allow" + an exec after a
// read escalated by 1.5, or deny + "swap-deny" + 3.0.
func swapBundle(allow bool) map[string]string {
	decision, version, e := "deny", "swap-deny", "3.0"
	if allow {
		decision, version, e = "allow", "swap-allow", "1.5"
	}
	return map[string]string{
		"authz.rego": fmt.Sprintf(`package aisecops.authz

import rego.v1

result := {"decision": %q, "reasons": [{"code": %q, "message": "from %s"}], "obligations": {}}
`, decision, version, version),
		"data.json": fmt.Sprintf(`{"aisecops": {"policy_version": %q, "accepted_policy_versions": ["v1.0"],
  "escalation": [{"name": "send_after_read", "when": ["exec"], "after": ["read"], "e": %s}]}}`, version, e),
	}
}

func writeBundleFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOnePolicySnapshotPerCheck swaps the bundle back and forth while Checks
// run, and finds every audit record's policy_version, decision and escalation
// factor from one and the same bundle: the one that decided.
func TestOnePolicySnapshotPerCheck(t *testing.T) {
	dir := t.TempDir()
	writeBundleFiles(t, dir, swapBundle(true))
	engine, err := policy.New(context.Background(), policy.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *extauthz.Config) { c.Policy = engine })
	// A read, so that every later exec escalates by the bundle's factor.
	if res := e.check(t, e.call(t, "sticky-agent", "db.read", "run-swap", `{"table":"t"}`)); !res.allowed {
		t.Fatal(reasonCodes(res.body))
	}
	var stop atomic.Bool
	var swaps sync.WaitGroup
	swaps.Go(func() {
		allow := false
		for !stop.Load() {
			writeBundleFiles(t, dir, swapBundle(allow))
			if err := engine.Reload(context.Background()); err != nil {
				t.Error(err)
				return
			}
			allow = !allow
		}
	})
	var checks sync.WaitGroup
	for w := range 4 {
		checks.Go(func() {
			for i := range 40 {
				e.check(t, e.call(t, "sticky-agent", "shell.exec", "run-swap", fmt.Sprintf(`{"cmd":"echo %d-%d"}`, w, i)))
			}
		})
	}
	checks.Wait()
	stop.Store(true)
	swaps.Wait()
	seen := map[string]int{}
	for _, rec := range e.auditRecords(t)[1:] {
		seen[rec.PolicyVersion]++
		want := map[string]struct {
			decision string
			e        float64
		}{"swap-allow": {"allow", 1.5}, "swap-deny": {"deny", 3.0}}[rec.PolicyVersion]
		if want.decision == "" {
			t.Fatalf("record %s: policy version %q", rec.DecisionID, rec.PolicyVersion)
		}
		if rec.Decision != want.decision || len(rec.Reasons) == 0 || rec.Reasons[0].Code != rec.PolicyVersion {
			t.Errorf("record %s: version %s but decision %s %v", rec.DecisionID, rec.PolicyVersion, rec.Decision, rec.Reasons)
		}
		if math.Abs(rec.StepRisk.E-want.e) > 1e-9 {
			t.Errorf("record %s: version %s but E = %v from another bundle", rec.DecisionID, rec.PolicyVersion, rec.StepRisk.E)
		}
	}
	if seen["swap-allow"] == 0 || seen["swap-deny"] == 0 {
		t.Fatalf("the swaps did not interleave with the checks: %v", seen)
	}
}
