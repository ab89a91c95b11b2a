package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// TestTLSEverywhere: the binary refuses plaintext on every interface; then
// the two processes of a deployment run with TLS: `aisecops dev-certs`, then `aisecops xds` and
// `aisecops serve --xds-server` with every TLS flag. The replica takes its
// directory from the control plane over mTLS as the node its certificate
// names; Envoy's certificate gets a Check decided; a client without one gets
// nothing; a replica claiming another node id is refused and leaves no trace
// in the control plane's status.
func TestTLSEverywhere(t *testing.T) {
	bin := buildBinary(t)
	// First, what TLS is for: no plaintext on every interface without
	// --insecure-listeners.
	refuse := exec.Command(bin, "all", "--authz-addr", "0.0.0.0:0")
	refuse.Env = append(os.Environ(), "AISECOPS_HOME="+t.TempDir())
	if out, err := refuse.CombinedOutput(); err == nil || !strings.Contains(string(out), "--insecure-listeners") {
		t.Fatalf("plaintext on 0.0.0.0: exit %v, output:\n%s", err, out)
	}

	certs := t.TempDir()
	if out, err := exec.Command(bin, "dev-certs", "--out", certs).CombinedOutput(); err != nil {
		t.Fatalf("dev-certs: %v\n%s", err, out)
	}
	c := func(name string) string { return filepath.Join(certs, name) }
	caPEM, err := os.ReadFile(c("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	https := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	a := freeAddrs(t, 6)
	xdsAddr, xdsHTTP, authzAddr, httpAddr, imposterAuthz, imposterHTTP := a[0], a[1], a[2], a[3], a[4], a[5]
	home := t.TempDir()
	base := append(os.Environ(), "AISECOPS_HOME="+home)
	startProc(t, bin, base, "xds", "--xds-addr", xdsAddr, "--http-addr", xdsHTTP,
		"--xds-tls-cert", c("xds.crt"), "--xds-tls-key", c("xds.key"), "--xds-client-ca", c("ca.crt"),
		"--http-tls-cert", c("http.crt"), "--http-tls-key", c("http.key"))
	waitReadyClient(t, https, "https://"+xdsHTTP+"/readyz")
	replica := func(authz, httpA string, extra ...string) *proc {
		args := append([]string{"serve", "--xds-server", xdsAddr, "--authz-addr", authz, "--http-addr", httpA,
			"--authz-tls-cert", c("authz.crt"), "--authz-tls-key", c("authz.key"), "--authz-client-ca", c("ca.crt"),
			"--http-tls-cert", c("http.crt"), "--http-tls-key", c("http.key"),
			"--xds-server-ca", c("ca.crt"), "--xds-client-cert", c("authz-replica.crt"), "--xds-client-key", c("authz-replica.key")}, extra...)
		p := startProc(t, bin, base, args...)
		waitReadyClient(t, https, "https://"+httpA+"/readyz")
		return p
	}
	good := replica(authzAddr, httpAddr)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(good.logs.String(), "directory updated over xDS") {
		if time.Now().After(deadline) {
			t.Fatal("the replica took no directory from the control plane over mTLS within 20 s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	tok, err := func() ([]byte, error) {
		cmd := exec.Command(bin, "token", "--agent", "demo-agent", "--tool", "db.read")
		cmd.Env = base
		return cmd.Output()
	}()
	if err != nil {
		t.Fatal(err)
	}
	check := func(creds grpc.DialOption) (*envoy_service_auth_v3.CheckResponse, error) {
		conn, err := grpc.NewClient(authzAddr, creds)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return envoy_service_auth_v3.NewAuthorizationClient(conn).Check(ctx, &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
			Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
				Id: fmt.Sprint(time.Now().UnixNano()), Method: "POST", Path: "/query", Host: "db.internal",
				Headers: map[string]string{":method": "POST", ":path": "/query", ":authority": "db.internal", "content-type": "application/json",
					"authorization": "Bearer " + strings.TrimSpace(string(tok)), "x-aisecops-run-id": "run-tls"},
				RawBody: []byte(`{"tool":"db.read","arguments":{"table":"customers","limit":5}}`),
			}},
			ContextExtensions: map[string]string{"tool": "db.read", "tool_class": "read", "base_risk": "0.2", "trust": "internal", "cost": "0.01", "route_version": "it"},
		}})
	}
	envoyCert, err := tls.LoadX509KeyPair(c("envoy.crt"), c("envoy.key"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := check(grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{envoyCert}})))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Envoy's certificate: %v %s", err, resp.GetDeniedResponse().GetBody())
	}
	if _, err := check(grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool}))); err == nil {
		t.Fatal("a Check without a client certificate was answered")
	}
	if _, err := check(grpc.WithTransportCredentials(insecure.NewCredentials())); err == nil {
		t.Fatal("a plaintext Check was answered")
	}

	imposter := replica(imposterAuthz, imposterHTTP, "--node-id", "canary-authz")
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(imposter.logs.String(), "PermissionDenied") {
		if time.Now().After(deadline) {
			t.Fatal("a replica naming a node its certificate does not name was not refused within 20 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var st struct{ Nodes []struct{ ID string } }
	admin, err := os.ReadFile(filepath.Join(home, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+xdsHTTP+"/v1/xds/status", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(admin)))
	r, err := https.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("xDS status: %s", r.Status)
	}
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range st.Nodes {
		ids = append(ids, n.ID)
	}
	if strings.Join(ids, ",") != "aisecops-authz" {
		t.Fatalf("control plane nodes %v, want only aisecops-authz", ids)
	}
}

func waitReadyClient(t *testing.T, c *http.Client, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := c.Get(url)
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
