package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

// TestBudgetChangeReachesAuthzOverXDS: `aisecops xds` serves a routes file;
// `aisecops serve --xds-server` takes the tools and agents from it over ADS.
// Editing the file's budget, or narrowing a tool's destination allowlist (a
// setting no Envoy route carries), changes the replica's next decision.
func TestBudgetChangeReachesAuthzOverXDS(t *testing.T) {
	bin := buildBinary(t)
	home := t.TempDir()
	routes := filepath.Join(t.TempDir(), "routes.yaml")
	destinations := "example.com"
	writeBudget := func(calls int) {
		data := strings.NewReplacer("max_tool_calls: 50", fmt.Sprintf("max_tool_calls: %d", calls),
			"destinations: [example.com]", "destinations: ["+destinations+"]").Replace(string(config.Example()))
		tmp := routes + ".tmp"
		if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, routes); err != nil { // as editors and ConfigMaps do
			t.Fatal(err)
		}
	}
	writeBudget(50)
	a := freeAddrs(t, 4)
	xdsAddr, xdsHTTP, authzAddr, httpAddr := a[0], a[1], a[2], a[3]
	base := append(os.Environ(), "AISECOPS_HOME="+home)
	startProc(t, bin, base, "xds", "--config", routes, "--xds-addr", xdsAddr, "--http-addr", xdsHTTP)
	waitReady(t, "http://"+xdsHTTP+"/readyz")
	startProc(t, bin, base, "serve", "--xds-server", xdsAddr, "--authz-addr", authzAddr, "--http-addr", httpAddr)
	waitReady(t, "http://"+httpAddr+"/readyz")

	conn, err := grpc.NewClient(authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := envoy_service_auth_v3.NewAuthorizationClient(conn)
	n := 0
	call := func(tool, host, run, args string, ext map[string]string) (allowed bool, body string) {
		t.Helper()
		n++
		tokCmd := exec.Command(bin, "token", "--agent", "demo-agent", "--tool", tool)
		tokCmd.Env = base
		tok, err := tokCmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ext["tool"], ext["route_version"] = tool, "it"
		resp, err := client.Check(ctx, &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
			Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
				Id: fmt.Sprintf("xds-%d", n), Method: "POST", Path: "/query", Host: host,
				Headers: map[string]string{":method": "POST", ":path": "/query", ":authority": host,
					"content-type": "application/json", "authorization": "Bearer " + strings.TrimSpace(string(tok)), "x-aisecops-run-id": run},
				RawBody: []byte(fmt.Sprintf(`{"tool":%q,"arguments":%s}`, tool, args)),
			}},
			ContextExtensions: ext,
		}})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp.GetOkResponse() != nil, resp.GetDeniedResponse().GetBody()
	}
	check := func() (allowed bool, body string) {
		t.Helper()
		return call("db.read", "db.internal", "run-xds", fmt.Sprintf(`{"table":"t","n":%d}`, n+1),
			map[string]string{"tool_class": "read", "base_risk": "0.01", "trust": "internal", "cost": "0"})
	}
	// Each email goes in a run of its own, so budgets and run history stay out of it.
	email := func() (allowed bool, body string) {
		t.Helper()
		return call("send_email", "mail.example.com", fmt.Sprintf("run-xds-mail-%d", n+1), `{"to":"bob@example.com","subject":"hi","body":"hello"}`,
			map[string]string{"tool_class": "external_send", "base_risk": "0.4", "trust": "untrusted", "cost": "0.02"})
	}
	if ok, body := email(); !ok {
		t.Fatalf("email to an allowed domain denied: %s", body)
	}
	if ok, body := check(); !ok {
		t.Fatalf("first call denied under a budget of 50: %s", body)
	}
	writeBudget(1) // one call already spent: the next one is over budget
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, body := check()
		if !ok {
			if !strings.Contains(body, "budget_exceeded") {
				t.Fatalf("denied for another reason: %s", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the budget change did not reach the authz replica within 20 s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Narrow send_email's allowlist: the replica must stop allowing example.com.
	destinations = "billing.example.com"
	writeBudget(1)
	deadline = time.Now().Add(20 * time.Second)
	for {
		ok, body := email()
		if !ok {
			if !strings.Contains(body, "destination_blocked") {
				t.Fatalf("email denied for another reason: %s", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the narrowed destination allowlist did not reach the authz replica within 20 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	status := get(t, "http://"+xdsHTTP+"/v1/xds/status", adminToken(t, home))
	if !strings.Contains(status, "aisecops-authz") {
		t.Errorf("xds status does not list the authz replica: %s", status)
	}
}
