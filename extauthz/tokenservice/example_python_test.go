package tokenservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aisecops/aisecops-envoy/extauthz/capability"
	"github.com/aisecops/aisecops-envoy/extauthz/reason"
	"github.com/aisecops/aisecops-envoy/extauthz/revocation"
)

// fakeEnvoy stands in for Envoy's egress listener plus the token stage of the
// Check path: it routes by Host, verifies the capability token with the real
// capability.Verifier, consults the real revocation set, binds the run id and
// the plan's tool, and forwards allowed calls to the upstream. It answers
// denials the way the authz server does (JSON body, x-aisecops-decision).
type fakeEnvoy struct {
	verifier *capability.Verifier
	revoked  *revocation.Set
	routes   map[string]string // host → tool
	proxy    *httputil.ReverseProxy
}

func (e *fakeEnvoy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	tool, ok := e.routes[host]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if err := e.check(r, tool); err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("x-aisecops-decision", "deny")
		w.WriteHeader(reason.HTTPStatus(reason.CodeOf(err)))
		_ = json.NewEncoder(w).Encode(map[string]any{
			"decision": "deny", "decision_id": "d-1",
			"reasons": []map[string]string{{"code": string(reason.CodeOf(err)), "message": "denied"}},
		})
		return
	}
	e.proxy.ServeHTTP(w, r)
}

func (e *fakeEnvoy) check(r *http.Request, tool string) error {
	raw, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	claims, err := e.verifier.Verify(r.Context(), raw, time.Now())
	if err != nil {
		return err
	}
	if err := e.revoked.Check(claims); err != nil {
		return err
	}
	if err := e.verifier.CheckRoute(claims, tool); err != nil {
		return err
	}
	if claims.RunID != "" && r.Header.Get("x-aisecops-run-id") != claims.RunID {
		return reason.New(reason.RunMismatch, "run")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return reason.New(reason.BadPlan, "body")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var p struct {
		Tool string `json:"tool"`
	}
	if json.Unmarshal(body, &p) != nil || p.Tool != tool {
		return reason.New(reason.ToolMismatch, "plan tool")
	}
	return nil
}

// recorded is what the upstream received.
type recorded struct {
	Host, Path, Auth, RunID string
	Plan                    map[string]any
}

// TestPythonAgent runs examples/python/agent.py against the real token
// service handler and a fake Envoy in front of a recording upstream.
func TestPythonAgent(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "examples", "python", "agent.py"))
	if err != nil {
		t.Fatal(err)
	}

	f := newFixture(t, func(c *Config) { c.Clock = time.Now })
	tokenSrv := httptest.NewServer(f.handler)
	defer tokenSrv.Close()

	var (
		mu   sync.Mutex
		seen []recorded
	)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rec recorded
		rec.Host, rec.Path, rec.Auth, rec.RunID = r.Host, r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("x-aisecops-run-id")
		_ = json.NewDecoder(r.Body).Decode(&rec.Plan)
		mu.Lock()
		seen = append(seen, rec)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"rows": [{"id": 1}]}`)
	}))
	defer upstream.Close()
	upURL, err := url.Parse(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := revocation.New(revocation.Options{})
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(upURL)
	proxy.ModifyResponse = func(r *http.Response) error { r.Header.Set("x-aisecops-decision", "allow"); return nil }
	envoy := httptest.NewServer(&fakeEnvoy{
		verifier: f.verifier(t), revoked: revoked, proxy: proxy,
		routes: map[string]string{"db.internal": "db.read", "shell.internal": "shell.exec"},
	})
	defer envoy.Close()

	run := func(t *testing.T, agent string, extra ...string) (map[string]any, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := append([]string{script, "--token-service", tokenSrv.URL, "--egress", envoy.URL, "--run-id", "run-42-" + agent}, extra...) // runs belong to their agent
		cmd := exec.CommandContext(ctx, python, args...)
		wl := f.workload(t, sa(agent), time.Now(), time.Hour)
		cmd.Env = append(os.Environ(), "AISECOPS_WORKLOAD_TOKEN="+wl)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
		case err != nil:
			t.Fatalf("python3: %v; stderr: %s", err, stderr.String())
		}
		var out map[string]any
		if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
			t.Fatalf("agent output %q (stderr %s): %v", stdout.String(), stderr.String(), err)
		}
		if strings.Contains(stdout.String(), wl) || strings.Contains(stdout.String(), "eyJ") {
			t.Error("the agent printed a credential or a token")
		}
		return out, code
	}
	readArgs := []string{"--tool", "db.read", "--host", "db.internal", "--path", "/query", "--arguments", `{"table": "customers", "limit": 10}`}

	t.Run("allowed call reaches the upstream", func(t *testing.T) {
		out, code := run(t, "reader", readArgs...)
		if code != 0 || out["decision"] != "allow" || out["step"] != "call" {
			t.Fatalf("exit %d, output %v", code, out)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 1 {
			t.Fatalf("upstream saw %d requests", len(seen))
		}
		got := seen[0]
		if got.Path != "/query" || got.RunID != "run-42-reader" || !strings.HasPrefix(got.Auth, "Bearer ") {
			t.Errorf("upstream request %+v", got)
		}
		want := map[string]any{"tool": "db.read", "arguments": map[string]any{"table": "customers", "limit": float64(10)}}
		if diff := cmp.Diff(want, got.Plan); diff != "" {
			t.Errorf("plan (-want +got):\n%s", diff)
		}
	})

	t.Run("token refused by policy", func(t *testing.T) {
		out, code := run(t, "reader", "--tool", "shell.exec", "--host", "shell.internal", "--path", "/run")
		if code != 2 || out["step"] != "token" || out["status"] != float64(http.StatusForbidden) {
			t.Fatalf("exit %d, output %v", code, out)
		}
		if diff := cmp.Diff([]any{"tool_not_allowed"}, reasonCodes(out)); diff != "" {
			t.Error(diff)
		}
	})

	t.Run("token for one tool used on another route", func(t *testing.T) {
		// The plan says db.read, and so does the token, but the Host routes to shell.exec.
		out, code := run(t, "demo-agent", "--tool", "db.read", "--host", "shell.internal", "--path", "/run")
		if code != 2 || out["decision"] != "deny" {
			t.Fatalf("exit %d, output %v", code, out)
		}
		if diff := cmp.Diff([]any{string(reason.TokenToolMismatch)}, reasonCodes(out)); diff != "" {
			t.Error(diff)
		}
	})

	t.Run("revoked agent is denied at the gateway", func(t *testing.T) {
		if _, err := revoked.RevokeAgent("reader", time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		out, code := run(t, "reader", readArgs...)
		if code != 2 || out["decision"] != "deny" {
			t.Fatalf("exit %d, output %v", code, out)
		}
		if diff := cmp.Diff([]any{string(reason.TokenRevoked)}, reasonCodes(out)); diff != "" {
			t.Error(diff)
		}
	})

	// Every token request above wrote exactly one audit line.
	if n := len(f.records(t)); n != 4 {
		t.Errorf("%d audit lines for 4 token requests", n)
	}
}

func reasonCodes(out map[string]any) []any {
	var codes []any
	list, _ := out["reasons"].([]any)
	for _, r := range list {
		if m, ok := r.(map[string]any); ok {
			codes = append(codes, m["code"])
		}
	}
	return codes
}
