package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	envoy_config_listener_v3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	envoy_extensions_filters_network_http_connection_manager_v3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

const target = "tools.test"

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("XDS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// backend is a real gRPC server that answers any method and names itself in a
// response header, so a test can see where the xDS client routed an RPC.
func backend(t testing.TB, name string) uint32 {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, st grpc.ServerStream) error {
		if err := st.SendHeader(metadata.Pairs("backend", name)); err != nil {
			return err
		}
		var in emptypb.Empty
		if err := st.RecvMsg(&in); err != nil {
			return err
		}
		return st.SendMsg(&emptypb.Empty{})
	}))
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return uint32(lis.Addr().(*net.TCPAddr).Port)
}

func tool(name, prefix string, port uint32) config.Tool {
	return config.Tool{Name: name, Class: config.ClassRead, BaseRisk: 0.2, Trust: config.TrustInternal, Cost: 0.01,
		Match:    config.Match{Host: target, PathPrefix: prefix},
		Upstream: config.Upstream{Address: "127.0.0.1", Port: port}}
}

func file(tools ...config.Tool) *config.File {
	f := &config.File{
		Listener: config.Listener{Address: "0.0.0.0", Port: 10000},
		Authz:    config.Authz{Address: "127.0.0.1:9191", Timeout: config.Duration(250 * time.Millisecond), MaxRequestBytes: 1 << 20},
		Tools:    tools,
		Agents: []config.Agent{{ID: "demo-agent", AllowedTools: []string{tools[0].Name},
			Budgets:    config.Budgets{MaxToolCalls: 50},
			Thresholds: config.Thresholds{Approval: 1.5, Halt: 2}}},
	}
	if err := f.Validate(); err != nil {
		panic(err)
	}
	return f
}

type plane struct {
	*Server
	addr string
	reg  *prometheus.Registry
}

func startPlane(t testing.TB, opts Options) *plane {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	opts.Logger = testLogger(t)
	opts.GRPCListener = target
	if opts.AckTimeout == 0 {
		opts.AckTimeout = 5 * time.Second
	}
	s, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return &plane{Server: s, addr: lis.Addr().String(), reg: reg}
}

// xdsClient dials xds:///tools.test through gRPC-Go's own xDS client, with a
// programmatic bootstrap (the env-var bootstrap is read once per process).
func xdsClient(t testing.TB, cpAddr, nodeID string) *grpc.ClientConn {
	t.Helper()
	bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":%q}}`, cpAddr, nodeID)
	rb, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func call(ctx context.Context, cc *grpc.ClientConn, method string) (string, error) {
	var hdr metadata.MD
	err := cc.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&hdr))
	if err != nil {
		return "", err
	}
	return strings.Join(hdr.Get("backend"), ","), nil
}

// eventually retries f until it returns nil or the deadline passes.
func eventually(t testing.TB, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestGRPCClientRoutesByPushedConfig(t *testing.T) {
	t.Parallel()
	a, b := backend(t, "A"), backend(t, "B")
	p := startPlane(t, Options{})
	if err := p.Apply(context.Background(), file(tool("general", "/", a), tool("special", "/svc.Special/", b))); err != nil {
		t.Fatal(err)
	}
	cc := xdsClient(t, p.addr, "grpc-route-test")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tests := map[string]string{"/svc.Special/Do": "B", "/svc.Other/Do": "A", "/svc.Specialist/Do": "A"}
	for method, want := range tests {
		got, err := call(ctx, cc, method)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if got != want {
			t.Errorf("%s went to %q, want %q", method, got, want)
		}
	}
	st := p.Status()
	if len(st.Nodes) != 1 || st.Nodes[0].ID != "grpc-route-test" || st.Nodes[0].Flavour != "grpc" || st.Nodes[0].Group != DefaultGroup {
		t.Fatalf("nodes %+v", st.Nodes)
	}
	if n := value(p.metrics.nacks.WithLabelValues(resource.ListenerType)); n != 0 {
		t.Fatalf("nacks %v", n)
	}
	if got := st.Nodes[0].Acked[resource.RouteType]; got == "" {
		t.Fatal("no route ACK recorded")
	}
}

// TestGRPCClientFollowsUpdatesWithoutFailures moves a route to a new cluster
// (make-before-break) and then changes an endpoint, while RPCs run in a loop;
// not one may fail.
func TestGRPCClientFollowsUpdatesWithoutFailures(t *testing.T) {
	t.Parallel()
	a, b, c := backend(t, "A"), backend(t, "B"), backend(t, "C")
	t.Logf("backends A=%d B=%d C=%d", a, b, c)
	p := startPlane(t, Options{})
	ctx := context.Background()
	if err := p.Apply(ctx, file(tool("svc", "/", a))); err != nil {
		t.Fatal(err)
	}
	cc := xdsClient(t, p.addr, "grpc-update-test")
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if got, err := call(cctx, cc, "/svc.X/Do"); err != nil || got != "A" {
		t.Fatalf("first call: %q %v", got, err)
	}

	var calls, failures atomic.Int64
	var last, firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, err := call(cctx, cc, "/svc.X/Do")
			calls.Add(1)
			if err != nil {
				if failures.Add(1) == 1 {
					firstErr.Store(err.Error())
				}
				continue
			}
			last.Store(got)
		}
	}()
	waitFor := func(want string) {
		eventually(t, 20*time.Second, func() error {
			if got, _ := last.Load().(string); got != want {
				return fmt.Errorf("still routed to %q, want %q", got, want)
			}
			return nil
		})
	}
	// 1. The route moves to a new cluster (upstream B).
	if err := p.Apply(ctx, file(tool("svc", "/", b))); err != nil {
		t.Fatal(err)
	}
	waitFor("B")
	// 2. Another move, to C, then the endpoint is the only change back... the
	// cluster name follows the upstream, so each is make-before-break.
	if err := p.Apply(ctx, file(tool("svc", "/", c))); err != nil {
		t.Fatal(err)
	}
	waitFor("C")
	close(stop)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d RPCs failed during updates; first: %v", f, calls.Load(), firstErr.Load())
	}
	t.Logf("%d RPCs, 0 failed, across two cluster moves", calls.Load())
	if n := len(p.Status().Nodes[0].Nacks); n != 0 {
		t.Fatalf("nacks: %+v", p.Status().Nodes[0].Nacks)
	}
}

// TestNACKRecordedOnceAndNotResent pushes a listener gRPC rejects (the
// ext_authz filter, unknown to gRPC, not marked optional) and checks that the
// NACK is recorded once and the rejected version is not sent again.
func TestNACKRecordedOnceAndNotResent(t *testing.T) {
	t.Parallel()
	a := backend(t, "A")
	p := startPlane(t, Options{})
	ctx := context.Background()
	good := file(tool("svc", "/", a))
	if err := p.Apply(ctx, good); err != nil {
		t.Fatal(err)
	}
	cc := xdsClient(t, p.addr, "grpc-nack-test")
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := call(cctx, cc, "/svc.X/Do"); err != nil {
		t.Fatal(err)
	}

	b, err := p.Build(good)
	if err != nil {
		t.Fatal(err)
	}
	bad := mandatoryExtAuthz(t, b.byFl[translate.FlavourGRPC])
	if err := p.set(ctx, DefaultGroup+"/grpc", bad); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if n := value(p.metrics.nacks.WithLabelValues(resource.ListenerType)); n != 1 {
			return fmt.Errorf("nacks = %v", n)
		}
		return nil
	})
	before := p.tracker.responses("grpc-nack-test")
	time.Sleep(time.Second) // the observation window the loop would show up in
	if after := p.tracker.responses("grpc-nack-test"); after != before {
		t.Fatalf("%d responses sent in 1s after the NACK; the rejected version is being resent", after-before)
	}
	if n := value(p.metrics.nacks.WithLabelValues(resource.ListenerType)); n != 1 {
		t.Fatalf("nacks = %v, want 1", n)
	}
	st := p.Status()
	if len(st.Nodes[0].Nacks) != 1 || st.Nodes[0].Nacks[0].Version != bad.Version || !strings.Contains(st.Nodes[0].Nacks[0].Detail, "ext_authz") {
		t.Fatalf("nack status %+v", st.Nodes[0].Nacks)
	}
	// The client keeps working on its last good config, and takes the next one.
	if _, err := call(cctx, cc, "/svc.X/Do"); err != nil {
		t.Fatal(err)
	}
	if err := p.set(ctx, DefaultGroup+"/grpc", b.byFl[translate.FlavourGRPC]); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if got := p.Status().Nodes[0].Acked[resource.ListenerType]; got != b.byFl[translate.FlavourGRPC].Version {
			return fmt.Errorf("listener acked %q", got)
		}
		return nil
	})
}

func mandatoryExtAuthz(t testing.TB, r *translate.Resources) *translate.Resources {
	t.Helper()
	bad := *r
	l := proto.Clone(r.Listeners[0]).(*envoy_config_listener_v3.Listener)
	h := &envoy_extensions_filters_network_http_connection_manager_v3.HttpConnectionManager{}
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	h.HttpFilters[0].IsOptional = false
	a, err := anypb.New(h)
	if err != nil {
		t.Fatal(err)
	}
	l.ApiListener.ApiListener = a
	bad.Listeners = []*envoy_config_listener_v3.Listener{l}
	if err := bad.Rehash(); err != nil {
		t.Fatal(err)
	}
	return &bad
}

func TestInvalidFileKeepsLastGoodSnapshot(t *testing.T) {
	t.Parallel()
	p := startPlane(t, Options{})
	ctx := context.Background()
	dir := t.TempDir()
	path := dir + "/routes.yaml"
	if err := os.WriteFile(path, config.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	good := p.Status().Version
	tests := map[string]string{
		"unknown field":  strings.Replace(string(config.Example()), "base_risk: 0.2", "base_rsk: 0.2", 1),
		"bad class":      strings.Replace(string(config.Example()), "class: read", "class: reed", 1),
		"not yaml":       "{{{",
		"duplicate path": strings.Replace(string(config.Example()), "match: {host: db-write.internal, path_prefix: /}", "match: {host: db.internal, path_prefix: /}", 1),
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := p.LoadFile(ctx, path); err == nil {
				t.Fatal("invalid file accepted")
			}
			st := p.Status()
			if st.Version != good || st.LastError == "" {
				t.Fatalf("status %+v", st)
			}
			snap, err := p.cache.GetSnapshot(DefaultGroup + "/envoy")
			if err != nil || snap.GetVersion(resource.ListenerType) != good {
				t.Fatalf("served snapshot changed: %v", err)
			}
		})
	}
	if got := value(p.metrics.rejected.(prometheus.Metric)); got != float64(len(tests)) {
		t.Fatalf("rejected metric %v", got)
	}
}

func TestRolloutGroupsStageAndPromote(t *testing.T) {
	t.Parallel()
	a, b := backend(t, "A"), backend(t, "B")
	p := startPlane(t, Options{Groups: map[string][]string{"canary": {"grpc-canary"}}, StagedRollout: true})
	ctx := context.Background()
	if err := p.Apply(ctx, file(tool("svc", "/", a))); err != nil {
		t.Fatal(err)
	}
	canary := xdsClient(t, p.addr, "grpc-canary")
	other := xdsClient(t, p.addr, "some-node-we-never-heard-of")
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, cc := range []*grpc.ClientConn{canary, other} {
		if got, err := call(cctx, cc, "/svc.X/Do"); err != nil || got != "A" {
			t.Fatalf("%q %v", got, err)
		}
	}
	if err := p.Apply(ctx, file(tool("svc", "/", b))); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.Candidate == "" || st.Candidate == st.Version {
		t.Fatalf("no candidate: %+v", st)
	}
	if err := p.Stage(ctx, "canary"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if got, err := call(cctx, canary, "/svc.X/Do"); err != nil || got != "B" {
			return fmt.Errorf("canary: %q %v", got, err)
		}
		return nil
	})
	if got, err := call(cctx, other, "/svc.X/Do"); err != nil || got != "A" {
		t.Fatalf("default node moved before promotion: %q %v", got, err)
	}
	if err := p.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if got, err := call(cctx, other, "/svc.X/Do"); err != nil || got != "B" {
			return fmt.Errorf("default: %q %v", got, err)
		}
		return nil
	})
	if err := p.Stage(ctx, "nope"); err == nil {
		t.Fatal("unknown group accepted")
	}
}

func value(c prometheus.Metric) float64 {
	m := &dto.Metric{}
	if err := c.Write(m); err != nil {
		return -1
	}
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

func TestWatchFileReloadsOnChange(t *testing.T) {
	t.Parallel()
	p := startPlane(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := t.TempDir() + "/routes.yaml"
	if err := os.WriteFile(path, config.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.WatchFile(ctx, path) }()
	var first string
	eventually(t, 10*time.Second, func() error {
		if first = p.Status().Version; first == "" {
			return fmt.Errorf("not loaded")
		}
		return nil
	})
	edited := strings.Replace(string(config.Example()), "max_tool_calls: 50", "max_tool_calls: 60", 1)
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if v := p.Status().Version; v == first {
			return fmt.Errorf("still %s", v)
		}
		return nil
	})
	if err := os.WriteFile(path, []byte("tools: [oops"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if p.Status().LastError == "" {
			return fmt.Errorf("invalid file not reported")
		}
		return nil
	})
}
