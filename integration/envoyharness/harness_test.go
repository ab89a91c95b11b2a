package envoyharness

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_extensions_filters_http_ext_authz_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

// allowAll is an authz client that allows every request: the harness's own
// proxying is under test here, not a decision.
type allowAll struct{}

func (allowAll) Check(context.Context, *envoy_service_auth_v3.CheckRequest, ...grpc.CallOption) (*envoy_service_auth_v3.CheckResponse, error) {
	return &envoy_service_auth_v3.CheckResponse{}, nil
}

// sseUpstream sends one event, then holds the stream open until release is
// closed or the request is cancelled.
func sseUpstream(t *testing.T, release <-chan struct{}) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func harnessWithTimeout(t *testing.T, upstream string, timeout *durationpb.Duration) string {
	t.Helper()
	h, err := New(Config{
		Routes: &envoy_config_route_v3.RouteConfiguration{VirtualHosts: []*envoy_config_route_v3.VirtualHost{{
			Name: "all", Domains: []string{"*"},
			Routes: []*envoy_config_route_v3.Route{{
				Match: &envoy_config_route_v3.RouteMatch{PathSpecifier: &envoy_config_route_v3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &envoy_config_route_v3.Route_Route{Route: &envoy_config_route_v3.RouteAction{
					ClusterSpecifier: &envoy_config_route_v3.RouteAction_Cluster{Cluster: "up"},
					Timeout:          timeout,
				}},
			}},
		}}},
		ExtAuthz:  &envoy_extensions_filters_http_ext_authz_v3.ExtAuthz{},
		Authz:     allowAll{},
		Upstreams: map[string]string{"up": upstream},
	})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(h)
	t.Cleanup(front.Close)
	return front.URL
}

// TestResponseIsStreamed: as with Envoy, an event the upstream flushed reaches
// the client while the upstream response is still open (an MCP server's SSE
// stream), and the route timeout then cuts the response rather than ending it
// cleanly.
func TestResponseIsStreamed(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	front := harnessWithTimeout(t, sseUpstream(t, release), durationpb.New(2*time.Second))

	start := time.Now()
	resp, err := http.Get(front + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("first event after %v: the response was buffered, not streamed", d)
	}
	rest, err := io.ReadAll(br)
	if err == nil {
		t.Fatalf("the route timeout ended the stream cleanly (%q); Envoy resets it", rest)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("stream cut after %v, before the 2 s route timeout", d)
	}
}

// TestRouteTimeoutBeforeHeaders: an upstream that does not answer within the
// route timeout is a 504, as Envoy answers it.
func TestRouteTimeoutBeforeHeaders(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	front := harnessWithTimeout(t, slow.URL, durationpb.New(200*time.Millisecond))
	resp, err := http.Post(front+"/q", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
}
