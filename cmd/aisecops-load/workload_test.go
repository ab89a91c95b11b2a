package main

import (
	"context"
	"crypto"
	"path/filepath"
	"strings"
	"testing"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/riskstore"
)

// inProcess is the real Check path, wired as `aisecops serve` wires it, on
// the load's routes file and an in-memory store; called without gRPC.
type inProcess struct {
	srv   *extauthz.Server
	store *riskstore.Memory
	audit string
	mix   *mix
}

func (p inProcess) Check(ctx context.Context, req *envoy_service_auth_v3.CheckRequest, _ ...grpc.CallOption) (*envoy_service_auth_v3.CheckResponse, error) {
	return p.srv.Check(ctx, req)
}

func newInProcess(t *testing.T) inProcess {
	t.Helper()
	dir := t.TempDir()
	_, routes, err := routesFile()
	if err != nil {
		t.Fatal(err)
	}
	signer, _, err := capability.LoadOrCreateDevKey(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := newMix(routes, signer)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewStaticKeys(map[string]crypto.PublicKey{signer.KeyID(): signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	engine, err := policy.New(ctx, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := capability.NewVerifier(capability.VerifierConfig{Issuer: tokenIssuer, Audience: tokenAudience, Keys: keys,
		AcceptedPolicyVersions: engine.AcceptedPolicyVersions()})
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(dir, "audit.jsonl")
	alog, err := audit.Open(auditPath, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alog.Close() })
	inspector, err := extauthz.NewEgressInspector([]byte("load-test-finding-hmac-key-32-by"))
	if err != nil {
		t.Fatal(err)
	}
	store := riskstore.NewMemory(nil)
	srv, err := extauthz.New(extauthz.Config{
		Directory: extauthz.NewDirectory(routes, "load"), Store: store, Approvals: store, Nonces: store,
		Inspector: inspector, Verifier: verifier, Policy: engine, Audit: alog,
	})
	if err != nil {
		t.Fatal(err)
	}
	return inProcess{srv: srv, store: store, audit: auditPath, mix: m}
}

// TestMixIsAllowed: every Check of the load, in runs of each length the bench
// uses, is allowed by the real decision path; the load measures allows.
func TestMixIsAllowed(t *testing.T) {
	t.Parallel()
	p := newInProcess(t)
	ctx := context.Background()
	for _, tc := range []struct {
		steps, checks int
	}{{1, 40}, {20, 100}, {200, 400}} {
		// Worker 2 starts with a tool run and a chat run follows.
		w := newRunner(p.mix, loadAgent, "test-"+strings.Repeat("s", tc.steps%7), tc.steps, 2)
		var kinds [numKinds]int
		for i := range tc.checks {
			c, err := w.next()
			if err != nil {
				t.Fatal(err)
			}
			kinds[c.kind]++
			if a := check(ctx, p, c.req, 0x7fffffff); !a.allowed || a.decisionID == "" {
				t.Fatalf("runs of %d: Check %d (%s, run %s) not allowed: %s", tc.steps, i, kindNames[c.kind], c.run, a.code)
			}
		}
		for k, n := range kinds {
			if n == 0 {
				t.Errorf("runs of %d: no %s Check in %d", tc.steps, kindNames[k], tc.checks)
			}
		}
	}
}

// TestMixShares: over whole runs the mix is read 25%, MCP 25%, write 15%,
// send 15%, model 20%, whatever the run length.
func TestMixShares(t *testing.T) {
	t.Parallel()
	p := newInProcess(t)
	for _, steps := range []int{1, 20, 200} {
		w := newRunner(p.mix, loadAgent, "shares", steps, 0)
		var kinds [numKinds]int
		n := 5 * 20 * steps // whole runs of every family, whole cycles of the one-step mix
		for range n {
			c, err := w.next()
			if err != nil {
				t.Fatal(err)
			}
			kinds[c.kind]++
		}
		want := [numKinds]int{25, 25, 15, 15, 20}
		for k := range numKinds {
			if got := 100 * kinds[k] / n; got != want[k] {
				t.Errorf("runs of %d: %s is %d%%, want %d%%", steps, kindNames[k], got, want[k])
			}
		}
	}
}

// TestCappedAgentMeetsItsBudget: the soak's capped agent is allowed up to its
// budget and refused after, so the budget invariant is exercised.
func TestCappedAgentMeetsItsBudget(t *testing.T) {
	t.Parallel()
	p := newInProcess(t)
	w := newRunner(p.mix, cappedAgent, "capped", int(cappedLimits.calls)+10, 0)
	allowed, denials := 0, map[string]int{}
	for range cappedLimits.calls + 10 {
		c, err := w.next()
		if err != nil {
			t.Fatal(err)
		}
		if a := check(context.Background(), p, c.req, 0x7fffffff); a.allowed {
			allowed++
		} else {
			denials[a.code]++
		}
	}
	if allowed == 0 || int64(allowed) > cappedLimits.calls || denials["budget_exceeded"] == 0 || len(denials) != 1 {
		t.Fatalf("capped agent: %d allowed, denials %v; want some allowed, at most %d, then budget_exceeded only", allowed, denials, cappedLimits.calls)
	}
}

func TestRoutesFileNamesEveryTool(t *testing.T) {
	t.Parallel()
	_, f, err := routesFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{loadAgent, cappedAgent} {
		a, ok := f.Agent(id)
		if !ok {
			t.Fatalf("no agent %s", id)
		}
		for _, tool := range kindTools {
			if !strings.Contains(strings.Join(a.AllowedTools, ","), tool) {
				t.Errorf("%s may not call %s", id, tool)
			}
		}
	}
}
