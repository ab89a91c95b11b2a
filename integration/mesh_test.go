package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The CheckRequests a mesh sends when aisecops is its external authorizer
// (DESIGN §7c, deploy/istio, deploy/envoy-gateway). Both are Envoy's ext_authz
// filter, configured by the mesh's control plane rather than ours, so neither
// carries context_extensions: the authz service resolves the route from its
// routes file by host and path.
//
// Istio (envoyExtAuthzGrpc provider, AuthorizationPolicy action CUSTOM;
// pilot/pkg/security/authz/builder/extauthz.go builds the filter): gRPC,
// transport v3, with_request_body {max_request_bytes, allow_partial_message,
// pack_as_bytes} from includeRequestBodyInCheck, failure_mode_allow from
// failOpen, no per-route CheckSettings. The policy is enforced where the
// request is received (the egress gateway), over mTLS from the agent's
// sidecar, so attributes.source.principal is the agent's SPIFFE id and
// destination.principal the gateway's. With packAsBytes the body is raw_body.
//
// Envoy Gateway (SecurityPolicy extAuth.grpc; internal/xds/translator/
// extauth.go at v1.9.1): gRPC, transport v3, with_request_body
// {max_request_bytes} only (allow_partial_message and pack_as_bytes left
// false, so the body is the UTF-8 string field), failure_mode_allow from
// failOpen (default false), all headers (no allowed_headers unless
// headersToExtAuth), per-route CheckSettings with context_extensions only when
// the policy sets contextExtensions (ours does not). The agent's connection to
// the Gateway is not mTLS, so source.principal is empty.
type meshShape struct {
	name string
	// check builds the Check the mesh would send for method host path body.
	check func(id, method, host, path, token string, body []byte) *envoy_service_auth_v3.CheckRequest
}

func meshHeaders(id, method, host, path, token string, body []byte) map[string]string {
	h := map[string]string{
		":method": method, ":path": path, ":authority": host, ":scheme": "http",
		"content-type": "application/json", "content-length": fmt.Sprint(len(body)),
		"authorization": "Bearer " + token, "x-aisecops-run-id": "run-" + id,
		"x-request-id": id, "x-forwarded-proto": "http", "user-agent": "agent/1.0",
	}
	if host == llmHost {
		// On a model route authorization is the provider's key; the
		// capability token travels in x-aisecops-token.
		h["authorization"] = "Bearer sk-provider-key"
		h["x-aisecops-token"] = token
	}
	return h
}

// llmHost is the bundled routes file's model route.
const llmHost = "api.openai.com"

func meshShapes() []meshShape {
	now := timestamppb.Now()
	addr := func(ip string, port uint32) *envoy_config_core_v3.Address {
		return &envoy_config_core_v3.Address{Address: &envoy_config_core_v3.Address_SocketAddress{SocketAddress: &envoy_config_core_v3.SocketAddress{
			Address: ip, PortSpecifier: &envoy_config_core_v3.SocketAddress_PortValue{PortValue: port}}}}
	}
	return []meshShape{
		{"istio egress gateway", func(id, method, host, path, token string, body []byte) *envoy_service_auth_v3.CheckRequest {
			h := meshHeaders(id, method, host, path, token, body)
			h["x-forwarded-client-cert"] = "By=spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account;URI=spiffe://cluster.local/ns/agents/sa/demo-agent"
			h["x-envoy-attempt-count"] = "1"
			return &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
				Source:      &envoy_service_auth_v3.AttributeContext_Peer{Address: addr("10.8.1.17", 48123), Principal: "spiffe://cluster.local/ns/agents/sa/demo-agent"},
				Destination: &envoy_service_auth_v3.AttributeContext_Peer{Address: addr("10.8.2.4", 8080), Principal: "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"},
				Request: &envoy_service_auth_v3.AttributeContext_Request{Time: now, Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
					Id: id, Method: method, Path: path, Host: host, Scheme: "http", Protocol: "HTTP/1.1",
					Headers: h, Size: int64(len(body)), RawBody: body,
				}},
				// No ContextExtensions: Istio sets no per-route check settings.
			}}
		}},
		{"envoy gateway", func(id, method, host, path, token string, body []byte) *envoy_service_auth_v3.CheckRequest {
			return &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
				Source:      &envoy_service_auth_v3.AttributeContext_Peer{Address: addr("10.8.1.17", 48123)},
				Destination: &envoy_service_auth_v3.AttributeContext_Peer{Address: addr("10.8.3.9", 10000)},
				Request: &envoy_service_auth_v3.AttributeContext_Request{Time: now, Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
					Id: id, Method: method, Path: path, Host: host, Scheme: "http", Protocol: "HTTP/1.1",
					Headers: meshHeaders(id, method, host, path, token, body), Size: int64(len(body)),
					Body: string(body), // pack_as_bytes false
				}},
				ContextExtensions: map[string]string{}, // per-route CheckSettings with none set
			}}
		}},
	}
}

// meshCall is one tool call of the bundled routes file, as an agent makes it.
type meshCall struct {
	tool, method, host, path, body string
}

// bundledCalls is one ordinary call to every route of the bundled routes file
// (xds/config/example.yaml), each one the bundled policies allow demo-agent.
var bundledCalls = []meshCall{
	{"db.read", "POST", "db.internal", "/query", `{"tool":"db.read","arguments":{"table":"customers","limit":5}}`},
	{"db.write", "POST", "db-write.internal", "/rows", `{"tool":"db.write","arguments":{"table":"tickets","values":{"status":"closed"}}}`},
	{"send_email", "POST", "mail.example.com", "/send", `{"tool":"send_email","arguments":{"to":"ops@example.com","subject":"status","body":"all green"}}`},
	{"shell.exec", "POST", "shell.internal", "/run", `{"tool":"shell.exec","arguments":{"command":"uptime"}}`},
	{"docs.search", "POST", "mcp.internal", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"query":"runbook"}}}`},
	{"llm.openai", "POST", llmHost, "/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"summarise the runbook"}]}`},
}

// TestMeshChecksResolveFromRoutesFile replays the Checks Istio's and Envoy
// Gateway's ext_authz send (no context extensions) against the real binary
// serving the bundled routes file: each route's call resolves to its tool and
// is allowed with a token for that tool; an unmatched host or path, and
// extensions that disagree with the file, are denied route_unconfigured.
func TestMeshChecksResolveFromRoutesFile(t *testing.T) {
	bin := buildBinary(t)
	home := t.TempDir()
	a := freeAddrs(t, 2)
	authzAddr, httpAddr := a[0], a[1]
	env := append(os.Environ(), "AISECOPS_HOME="+home)
	startProc(t, bin, env, "serve", "--authz-addr", authzAddr, "--http-addr", httpAddr)
	waitReady(t, "http://"+httpAddr+"/readyz")

	mint := func(t *testing.T, tool string) string {
		t.Helper()
		cmd := exec.Command(bin, "token", "--agent", "demo-agent", "--tool", tool)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("aisecops token --tool %s: %v", tool, err)
		}
		return strings.TrimSpace(string(out))
	}

	conn, err := grpc.NewClient(authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := envoy_service_auth_v3.NewAuthorizationClient(conn)
	var n atomic.Int64
	check := func(t *testing.T, req *envoy_service_auth_v3.CheckRequest) (*envoy_service_auth_v3.CheckResponse, verdict) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.Check(ctx, req)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		var v verdict
		if d := resp.GetDeniedResponse(); d != nil {
			if err := json.Unmarshal([]byte(d.GetBody()), &v); err != nil {
				t.Fatalf("denied body is not a decision: %v\n%s", err, d.GetBody())
			}
		}
		return resp, v
	}
	id := func() string { return fmt.Sprintf("mesh-%d", n.Add(1)) }

	for _, shape := range meshShapes() {
		t.Run(shape.name, func(t *testing.T) {
			for _, c := range bundledCalls {
				t.Run(c.tool, func(t *testing.T) {
					// Dry run: the answer names the tool the file resolved.
					// Tokens for writes, sends and exec are single use: one per call.
					token := mint(t, c.tool)
					req := shape.check(id(), c.method, c.host, c.path, token, []byte(c.body))
					req.Attributes.Request.Http.Headers["x-aisecops-dry-run"] = "true"
					if _, v := check(t, req); v.Trace == nil || v.Trace.Tool != c.tool {
						t.Fatalf("dry run resolved %+v, want tool %s", v.Trace, c.tool)
					}
					// The real call is allowed with a token for that tool.
					resp, v := check(t, shape.check(id(), c.method, c.host, c.path, token, []byte(c.body)))
					if resp.GetOkResponse() == nil {
						t.Fatalf("denied %v: %s", v.codes(), resp.GetDeniedResponse().GetBody())
					}
				})
			}
			t.Run("token for another tool", func(t *testing.T) {
				// db.read's token on db.write's host: the file, not the caller, says which tool this is.
				resp, v := check(t, shape.check(id(), "POST", "db-write.internal", "/rows", mint(t, "db.read"), []byte(bundledCalls[0].body)))
				if resp.GetOkResponse() != nil || !contains(v.codes(), "tool_mismatch") {
					t.Fatalf("want tool_mismatch, got %v", v.codes())
				}
			})
			for name, hp := range map[string][2]string{
				"unknown host":                {"unknown.internal", "/query"},
				"path outside the route":      {"mcp.internal", "/admin"},
				"path leaving the route (..)": {"mcp.internal", "/mcp/../admin"},
			} {
				t.Run(name, func(t *testing.T) {
					resp, v := check(t, shape.check(id(), "POST", hp[0], hp[1], mint(t, "docs.search"), []byte(bundledCalls[4].body)))
					if resp.GetOkResponse() != nil || !contains(v.codes(), "route_unconfigured") {
						t.Fatalf("%s%s: want route_unconfigured, got %v", hp[0], hp[1], v.codes())
					}
				})
			}
			t.Run("extensions that disagree with the file", func(t *testing.T) {
				req := shape.check(id(), "POST", "db.internal", "/query", mint(t, "db.write"), []byte(bundledCalls[1].body))
				req.Attributes.ContextExtensions = map[string]string{"tool": "db.write", "tool_class": "write",
					"base_risk": "0.5", "trust": "internal", "cost": "0.01", "route_version": "mesh"}
				resp, v := check(t, req)
				if resp.GetOkResponse() != nil || !contains(v.codes(), "route_unconfigured") {
					t.Fatalf("want route_unconfigured, got %v", v.codes())
				}
			})
		})
	}

	// Every decision above is in the audit log with the tool the file chose.
	data, err := os.ReadFile(filepath.Join(home, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range bundledCalls {
		if !strings.Contains(string(data), `"tool":"`+c.tool+`"`) {
			t.Errorf("audit log has no decision for %s", c.tool)
		}
	}
}
