package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver collects the spans an OTLP exporter sends, over gRPC and HTTP.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.add(req)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) add(req *collectortrace.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var msg collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &msg); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&msg)
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Write(out)
}

// TestChecksAreTraced: with the standard OTEL_* variables pointing at an OTLP
// receiver, every Check is a span parented to the agent's traceparent, with a
// child per stage and the decision's attributes, and no argument value.
func TestChecksAreTraced(t *testing.T) {
	bin := buildBinary(t)
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		t.Run(protocol, func(t *testing.T) {
			rcv := &otlpReceiver{}
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			endpoint := "http://" + lis.Addr().String()
			if protocol == "grpc" {
				gs := grpc.NewServer()
				collectortrace.RegisterTraceServiceServer(gs, rcv)
				go gs.Serve(lis)
				defer gs.Stop()
			} else {
				hs := &http.Server{Handler: rcv}
				go hs.Serve(lis)
				defer hs.Close()
			}
			home := t.TempDir()
			a := freeAddrs(t, 2)
			env := append(os.Environ(), "AISECOPS_HOME="+home, "AISECOPS_AUTHZ_ADDR="+a[0], "AISECOPS_HTTP_ADDR="+a[1],
				"OTEL_EXPORTER_OTLP_ENDPOINT="+endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL="+protocol, "OTEL_EXPORTER_OTLP_INSECURE=true")
			p := startProc(t, bin, env, "serve")
			waitReady(t, "http://"+a[1]+"/readyz")
			tokCmd := exec.Command(bin, "token", "--agent", "demo-agent", "--tool", "db.read")
			tokCmd.Env = env
			tok, err := tokCmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			conn, err := grpc.NewClient(a[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
			const secretArg = "customers-table-secret-value"
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := envoy_service_auth_v3.NewAuthorizationClient(conn).Check(ctx, &envoy_service_auth_v3.CheckRequest{Attributes: &envoy_service_auth_v3.AttributeContext{
				Request: &envoy_service_auth_v3.AttributeContext_Request{Http: &envoy_service_auth_v3.AttributeContext_HttpRequest{
					Id: "trace-1", Method: "POST", Path: "/query", Host: "db.internal",
					Headers: map[string]string{":method": "POST", ":path": "/query", ":authority": "db.internal", "content-type": "application/json",
						"authorization": "Bearer " + strings.TrimSpace(string(tok)), "traceparent": fmt.Sprintf("00-%s-%s-01", traceID, parentID)},
					RawBody: []byte(`{"tool":"db.read","arguments":{"table":"` + secretArg + `"}}`),
				}},
			}})
			if err != nil || resp.GetOkResponse() == nil {
				t.Fatalf("Check: %v %v", resp, err)
			}
			p.stop(t) // flushes the exporter
			rcv.mu.Lock()
			defer rcv.mu.Unlock()
			var check *tracepb.Span
			stages := map[string]bool{}
			for _, s := range rcv.spans {
				if fmt.Sprintf("%x", s.GetTraceId()) != traceID {
					t.Errorf("span %s in trace %x, want the agent's %s", s.GetName(), s.GetTraceId(), traceID)
				}
				if strings.Contains(s.String(), secretArg) {
					t.Errorf("span %s carries an argument value", s.GetName())
				}
				switch name := s.GetName(); {
				case name == "aisecops.check":
					check = s
				case strings.HasPrefix(name, "aisecops.stage."):
					stages[strings.TrimPrefix(name, "aisecops.stage.")] = true
				}
			}
			if check == nil || fmt.Sprintf("%x", check.GetParentSpanId()) != parentID {
				t.Fatalf("no check span parented to the traceparent: %v", rcv.spans)
			}
			attrs := map[string]string{}
			for _, kv := range check.GetAttributes() {
				attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
			}
			if attrs["aisecops.decision"] != "allow" || attrs["aisecops.tool"] != "db.read" || attrs["aisecops.agent"] != "demo-agent" {
				t.Errorf("check span attributes %v", attrs)
			}
			if audit, _ := os.ReadFile(home + "/audit.jsonl"); !strings.Contains(string(audit), `"otel_trace_id":"`+traceID+`"`) {
				t.Error("the audit record does not carry the trace id")
			}
			for _, st := range []string{"plan", "token", "egress", "run_state", "risk", "policy", "enforce"} {
				if !stages[st] {
					t.Errorf("no span for stage %s (got %v)", st, stages)
				}
			}
		})
	}
}
