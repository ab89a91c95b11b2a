package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// buildBinary builds cmd/aisecops into the test's temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "aisecops")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/aisecops")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freeAddrs returns n distinct free loopback addresses. All n listeners are
// held open until every address is known, so the kernel cannot hand the same
// port out twice (closing each before taking the next did, once).
//
// Tests that hand these addresses to a child process do not run in parallel:
// the ports are free only until the child binds them, and another test's
// listener could take one in between.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}

// TestEmbeddedDefaultServesChecks runs the README's run command — `aisecops
// all` with no flags but a fresh home and free ports — mints a token with
// `aisecops token`, and sends Envoy's CheckRequest over gRPC.
func TestEmbeddedDefaultServesChecks(t *testing.T) {
	bin := buildBinary(t)
	home := t.TempDir()
	a := freeAddrs(t, 3)
	authzAddr, httpAddr, xdsAddr := a[0], a[1], a[2]
	env := append(os.Environ(), "AISECOPS_HOME="+home, "AISECOPS_AUTHZ_ADDR="+authzAddr, "AISECOPS_HTTP_ADDR="+httpAddr, "AISECOPS_XDS_ADDR="+xdsAddr)
	all := startProc(t, bin, env, "all")

	waitReady(t, "http://"+httpAddr+"/readyz")
	if _, err := os.Stat(filepath.Join(home, "dev-signing-key.pem")); err != nil {
		t.Fatalf("development key not created in AISECOPS_HOME: %v", err)
	}
	if !strings.Contains(all.logs.String(), "dev-signing-key.pem") {
		t.Error("the service did not say where it put the development key")
	}

	tokCmd := exec.Command(bin, "token", "--agent", "demo-agent", "--tool", "db.read", "--run", "run-bin")
	tokCmd.Env = env
	tok, err := tokCmd.Output()
	if err != nil {
		t.Fatalf("aisecops token: %v", err)
	}

	conn, err := grpc.NewClient(authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health: %v %v", hr, err)
	}
	client := envoy_service_auth_v3.NewAuthorizationClient(conn)
	check := func(token string) *envoy_service_auth_v3.CheckResponse {
		t.Helper()
		resp, err := client.Check(ctx, &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
			Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
				Id: fmt.Sprint(time.Now().UnixNano()), Method: "POST", Path: "/query", Host: "db.internal",
				Headers: map[string]string{":method": "POST", ":path": "/query", ":authority": "db.internal",
					"content-type": "application/json", "authorization": "Bearer " + token, "x-aisecops-run-id": "run-bin"},
				RawBody: []byte(`{"tool":"db.read","arguments":{"table":"customers","limit":5}}`),
			}},
			ContextExtensions: map[string]string{"tool": "db.read", "tool_class": "read", "base_risk": "0.2", "trust": "internal", "cost": "0.01", "route_version": "it"},
		}})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp
	}
	if resp := check(strings.TrimSpace(string(tok))); resp.GetOkResponse() == nil {
		t.Fatalf("valid token denied: %s", resp.GetDeniedResponse().GetBody())
	}
	if resp := check("forged.token.value"); resp.GetDeniedResponse() == nil {
		t.Fatal("forged token allowed")
	}

	if resp, err := http.Get("http://" + httpAddr + "/metrics"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous /metrics: %v %v", resp, err)
	}
	metrics := get(t, "http://"+httpAddr+"/metrics", adminToken(t, home))
	if !strings.Contains(metrics, `aisecops_decisions_total{decision="allow",reason="allowed",tool="db.read"} 1`) {
		t.Errorf("metrics lack the allow: %s", grep(metrics, "aisecops_decisions_total"))
	}

	strict := t.TempDir()
	for _, name := range []string{"authz.rego", "tokens.rego", "data.json"} {
		b, err := os.ReadFile(filepath.Join("../policies", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(strict, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rule := "package aisecops.authz\n\nimport rego.v1\n\ndeny_reasons contains {\"code\": \"customers_closed\", \"message\": \"closed\", \"control_id\": \"AIS-EXE-01\"} if input.plan.arguments.table == \"customers\"\n"
	if err := os.WriteFile(filepath.Join(strict, "strict.rego"), []byte(rule), 0o600); err != nil {
		t.Fatal(err)
	}
	// The same replay through the API, on the running server's own log.
	files := map[string]string{}
	entries, err := os.ReadDir(strict)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(strict, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = string(b)
	}
	body, err := json.Marshal(map[string]any{"policies": files})
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := post(t, "http://"+httpAddr+"/v1/replay/diff", "", string(body)); code != http.StatusUnauthorized {
		t.Fatalf("anonymous replay diff: %d", code)
	}
	code, out := post(t, "http://"+httpAddr+"/v1/replay/diff", adminToken(t, home), string(body))
	if code != http.StatusOK || !strings.Contains(out, `"changed": 1`) || !strings.Contains(out, `"allow_to_deny"`) {
		t.Fatalf("replay diff over the API: %d %s", code, out)
	}

	// Graceful shutdown on SIGTERM, then the audit chain verifies.
	all.stop(t)
	verify := exec.Command(bin, "audit", "verify", filepath.Join(home, "audit.jsonl"))
	if out, err := verify.CombinedOutput(); err != nil || !strings.Contains(string(out), "ok: 2 lines") {
		t.Fatalf("audit verify: %v %s", err, out)
	}

	// The recorded Checks replay: unchanged under the bundle that decided
	// them (exit 0), and under a stricter candidate that reads the sealed
	// arguments the allowed read becomes a deny (exit 1, listed).
	replay := func(policies string) (string, error) {
		cmd := exec.Command(bin, "replay", "--audit", filepath.Join(home, "audit.jsonl"), "--policies", policies, "--json")
		cmd.Env = env
		out, err := cmd.Output()
		return string(out), err
	}
	if out, err := replay("../policies"); err != nil || !strings.Contains(out, `"changed": 0`) || !strings.Contains(out, `"replayed": 1`) {
		t.Fatalf("replay under the deciding bundle: %v\n%s", err, out)
	}
	out, err = replay(strict)
	var rep struct {
		Changed int
		Changes []struct{ Kind, Tool, Before, After string }
	}
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || err == nil || rep.Changed != 1 || rep.Changes[0].Kind != "allow_to_deny" || rep.Changes[0].Tool != "db.read" {
		t.Fatalf("replay under a stricter bundle: exit %v, %+v\n%s", err, rep, out)
	}
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			var body struct{ Ready bool }
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if body.Ready {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready within 30 s", url)
}

// adminToken is the admin token the binary wrote in its home.
func adminToken(t *testing.T, home string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(home, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// get fetches url with bearer as the API credential.
func get(t *testing.T, url, bearer string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
