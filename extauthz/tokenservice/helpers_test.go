package tokenservice

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/extauthz/audit"
	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/policy"
	"github.com/aisecops/aisecops-envoy/riskstore"
	"github.com/aisecops/aisecops-envoy/xds/config"
)

// The tests' clock and identities.
var t0 = time.Date(2026, 3, 2, 16, 0, 0, 0, time.UTC)

const (
	testIssuer       = "aisecops"
	testAudience     = "aisecops-egress"
	workloadIssuer   = "https://kubernetes.default.svc.cluster.local"
	workloadAudience = "aisecops-token-service"
)

func newSigner(t testing.TB) capability.Signer {
	t.Helper()
	s, _ := newKeyPair(t)
	return s
}

func newKeyPair(t testing.TB) (capability.Signer, ed25519.PrivateKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := capability.NewSigner(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return s, priv
}

func staticKeys(t testing.TB, signers ...capability.Signer) *capability.StaticKeys {
	t.Helper()
	m := map[string]crypto.PublicKey{}
	for _, s := range signers {
		m[s.KeyID()] = s.Public()
	}
	k, err := capability.NewStaticKeys(m)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// directory is the bundled example's tools with two agents: demo-agent (every
// tool) and reader (db.read only).
type directory struct {
	agents map[string]config.Agent
	tools  map[string]config.Tool
}

func newDirectory(t testing.TB) *directory {
	t.Helper()
	f, err := config.Parse("example.yaml", config.Example())
	if err != nil {
		t.Fatal(err)
	}
	d := &directory{agents: map[string]config.Agent{}, tools: map[string]config.Tool{}}
	for _, a := range f.Agents {
		d.agents[a.ID] = a
	}
	d.agents["reader"] = config.Agent{ID: "reader", AllowedTools: []string{"db.read"}}
	d.agents["granted"] = config.Agent{ID: "granted", AllowedTools: []string{"db.read"},
		Grants: map[string]config.Grant{"db.read": {Scopes: []string{"project.alpha"}, MaxRows: 100, MaxCost: 0.5}}}
	for _, tl := range f.Tools {
		d.tools[tl.Name] = tl
	}
	if _, ok := d.agents["demo-agent"]; !ok {
		t.Fatal("the example has no demo-agent")
	}
	return d
}

func (d *directory) agent(id string) (config.Agent, bool) { a, ok := d.agents[id]; return a, ok }
func (d *directory) tool(n string) (config.Tool, bool)    { tl, ok := d.tools[n]; return tl, ok }

var embeddedEngine = sync.OnceValues(func() (*policy.Engine, error) {
	return policy.New(context.Background(), policy.Options{})
})

func engine(t testing.TB) *policy.Engine {
	t.Helper()
	e, err := embeddedEngine()
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// fixture is a token service with real keys, the real policy engine and a real
// audit log in a temporary directory.
type fixture struct {
	svc       *Service
	handler   http.Handler
	signer    capability.Signer // the service's
	wlSigner  capability.Signer // the workload issuer's (the cluster's)
	wlPriv    ed25519.PrivateKey
	auditPath string
	log       *audit.Log
	cfg       Config
}

func newFixture(t testing.TB, mutate func(*Config)) *fixture {
	t.Helper()
	f := &fixture{signer: newSigner(t)}
	f.wlSigner, f.wlPriv = newKeyPair(t)
	wv, err := capability.NewWorkloadVerifier(capability.WorkloadConfig{
		Issuer: workloadIssuer, Audience: workloadAudience, Keys: staticKeys(t, f.wlSigner),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.auditPath = filepath.Join(t.TempDir(), "audit.jsonl")
	f.log, err = audit.Open(f.auditPath, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.log.Close() })
	dir := newDirectory(t)
	e := engine(t)
	f.cfg = Config{
		Signer: f.signer, Issuer: testIssuer, Audience: testAudience, MaxTTL: 10 * time.Minute,
		Workload:    wv,
		AgentLookup: dir.agent, ToolLookup: dir.tool, AgentNamespace: "agents",
		Runs:   riskstore.NewMemory(func() time.Time { return t0 }),
		Policy: e, Audit: f.log, PolicyVersion: e.Version,
		Clock: func() time.Time { return t0 },
	}
	if mutate != nil {
		mutate(&f.cfg)
	}
	f.svc, err = New(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.handler = f.svc.Handler()
	return f
}

// workload mints a workload credential as the cluster would.
func (f *fixture) workload(t testing.TB, sub string, iat time.Time, ttl time.Duration) string {
	t.Helper()
	tok, err := f.wlSigner.Sign(&capability.Claims{
		Issuer: workloadIssuer, Subject: sub, Audience: []string{workloadAudience},
		IssuedAt: iat, NotBefore: iat, ExpiresAt: iat.Add(ttl),
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func sa(name string) string { return "system:serviceaccount:agents:" + name }

// do sends one POST /v1/tokens.
func (f *fixture) do(t testing.TB, bearer string, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/v1/tokens", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		r.Header.Set("Authorization", "Bearer "+bearer)
	}
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, r)
	return w
}

// verifier is the Check path's verifier for f's tokens.
func (f *fixture) verifier(t testing.TB) *capability.Verifier {
	t.Helper()
	v, err := capability.NewVerifier(capability.VerifierConfig{
		Issuer: testIssuer, Audience: testAudience, Keys: staticKeys(t, f.signer),
		AcceptedPolicyVersions: engine(t).AcceptedPolicyVersions(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (f *fixture) records(t testing.TB) []audit.Record {
	t.Helper()
	b, err := os.ReadFile(f.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := audit.ReadAll(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func decodeIssued(t testing.TB, w *httptest.ResponseRecorder) Issued {
	t.Helper()
	var out Issued
	dec := json.NewDecoder(w.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("201 body: %v", err)
	}
	return out
}

func decodeRefused(t testing.TB, w *httptest.ResponseRecorder) Refused {
	t.Helper()
	var out Refused
	dec := json.NewDecoder(w.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("refusal body: %v", err)
	}
	return out
}

func codes(rs []policy.Reason) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Code)
	}
	return out
}

// failingSink refuses every write, as a full disk would.
type failingSink struct{}

func (failingSink) Write(*audit.Record) error { return errors.New("disk full") }

// copyBundle copies the bundled policies into dir, overriding keys of
// data.aisecops with raw JSON values.
func copyBundle(t testing.TB, dir string, data map[string]string) {
	t.Helper()
	src := filepath.Join("..", "..", "policies")
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".rego") && name != "data.json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "data.json" {
			var doc map[string]map[string]json.RawMessage
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			for k, v := range data {
				doc["aisecops"][k] = json.RawMessage(v)
			}
			if b, err = json.Marshal(doc); err != nil {
				t.Fatal(err)
			}
		}
		writeFile(t, dir, name, string(b))
	}
}

func writeFile(t testing.TB, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
