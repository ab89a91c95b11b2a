package agentsync_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/aisecops/aisecops-envoy/xds/agentsync"
	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/server"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

func startPlane(t *testing.T, addr string) (*server.Server, string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.New(ctx, server.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	for i := 0; ; i++ { // the port of a just-stopped server can take a moment to free
		lis, err = net.Listen("tcp", addr)
		if err == nil || i > 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	stop := func() { g.Stop(); cancel() }
	t.Cleanup(stop)
	return s, lis.Addr().String(), stop
}

// writeExample writes the bundled example with each old→new replacement made.
func writeExample(t *testing.T, path string, oldNew ...string) {
	t.Helper()
	body := strings.NewReplacer(oldNew...).Replace(string(config.Example()))
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeBudget(t *testing.T, path string, calls string) {
	t.Helper()
	writeExample(t, path, "max_tool_calls: 50", "max_tool_calls: "+calls)
}

type update struct {
	dir     *config.File
	version string
}

func nextDir(t *testing.T, ch <-chan update) update {
	t.Helper()
	select {
	case u := <-ch:
		return u
	case <-time.After(20 * time.Second):
		t.Fatal("no directory update")
	}
	return update{}
}

func next(t *testing.T, ch <-chan update) config.Agent {
	t.Helper()
	u := nextDir(t, ch)
	if len(u.dir.Agents) != 1 {
		t.Fatalf("agents %+v", u.dir.Agents)
	}
	return u.dir.Agents[0]
}

// TestBudgetChangeReachesSubscriber: a budget edited in the file reaches a
// running subscriber; a refused update is NACKed (once, on the server) and the
// subscriber survives a control-plane restart.
//
// Not parallel: it listens again on its first port after a restart, and a
// parallel test's listener could take that port in between.
func TestBudgetChangeReachesSubscriber(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := t.TempDir() + "/routes.yaml"
	writeBudget(t, path, "50")
	s, addr, stop := startPlane(t, "127.0.0.1:0")
	if err := s.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	ch := make(chan update, 10)
	refuse := errors.New("replica refuses 13 tool calls")
	apply := func(d *config.File, version string) error {
		if d.Agents[0].Budgets.MaxToolCalls == 13 {
			return refuse
		}
		ch <- update{d, version}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- agentsync.Subscribe(ctx, addr, "authz-1", apply, slog.New(slog.DiscardHandler)) }()

	if got := next(t, ch); got.ID != "demo-agent" || got.Budgets.MaxToolCalls != 50 || got.Budgets.MaxCost != 1.0 {
		t.Fatalf("first: %+v", got)
	}
	writeBudget(t, path, "7")
	if err := s.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	if got := next(t, ch); got.Budgets.MaxToolCalls != 7 {
		t.Fatalf("after edit: %+v", got)
	}

	writeBudget(t, path, "13")
	if err := s.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := s.Status()
		if len(st.Nodes) == 1 && len(st.Nodes[0].Nacks) == 1 {
			if !strings.Contains(st.Nodes[0].Nacks[0].Detail, "13 tool calls") {
				t.Fatalf("nack %+v", st.Nodes[0].Nacks[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no NACK recorded: %+v", st.Nodes)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Restart the control plane on the same address with a new budget.
	stop()
	writeBudget(t, path, "21")
	s2, _, _ := startPlane(t, addr)
	if err := s2.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	if got := next(t, ch); got.Budgets.MaxToolCalls != 21 {
		t.Fatalf("after restart: %+v", got)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v", err)
	}
}

func sendEmail(t *testing.T, d *config.File) config.Tool {
	t.Helper()
	tl, ok := d.Tool("send_email")
	if !ok {
		t.Fatalf("send_email missing from the directory: %+v", d.Tools)
	}
	return tl
}

// TestToolChangeReachesSubscriber: a narrowed destination allowlist — a setting
// no Envoy route carries — reaches a running subscriber, in the same update
// (one resource, one version) as a budget edited with it.
func TestToolChangeReachesSubscriber(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := t.TempDir() + "/routes.yaml"
	writeExample(t, path)
	s, addr, _ := startPlane(t, "127.0.0.1:0")
	if err := s.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	ch := make(chan update, 10)
	go func() {
		_ = agentsync.Subscribe(ctx, addr, "authz-1", func(d *config.File, v string) error {
			ch <- update{d, v}
			return nil
		}, slog.New(slog.DiscardHandler))
	}()

	first := nextDir(t, ch)
	if got := sendEmail(t, first.dir); !slices.Equal(got.Destinations, []string{"example.com"}) || !slices.Equal(got.DestinationArgs, []string{"to", "cc", "bcc"}) {
		t.Fatalf("first send_email %+v", got)
	}
	if len(first.dir.Tools) != 6 || first.version == "" {
		t.Fatalf("first: %d tools, version %q", len(first.dir.Tools), first.version)
	}

	writeExample(t, path, "destinations: [example.com]", "destinations: [billing.example.com]", "max_tool_calls: 50", "max_tool_calls: 9")
	if err := s.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	for {
		u := nextDir(t, ch)
		if u.version == first.version {
			continue // a resend of the version already applied
		}
		if got := sendEmail(t, u.dir); !slices.Equal(got.Destinations, []string{"billing.example.com"}) {
			t.Fatalf("after narrowing: send_email %+v", got)
		}
		if a := u.dir.Agents[0]; a.Budgets.MaxToolCalls != 9 {
			t.Fatalf("the budget edited with the tool is not in the same update: %+v", a)
		}
		break
	}
}

// TestInvalidDirectoryNACKedLastGoodKept: a control plane that sends a
// directory with an invalid tool (here go-control-plane's own server, since ours
// refuses to build one) gets a NACK naming the field and carrying the last good
// version, the callback never sees it, and the next good version applies.
func TestInvalidDirectoryNACKedLastGoodKept(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	snapshots := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, gcplog.LoggerFuncs{})
	nacks := make(chan *envoy_service_discovery_v3.DiscoveryRequest, 1)
	callbacks := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *envoy_service_discovery_v3.DiscoveryRequest) error {
		if r.GetErrorDetail() != nil {
			select {
			case nacks <- r:
			default:
			}
		}
		return nil
	}}
	g := grpc.NewServer()
	envoy_service_discovery_v3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, snapshots, callbacks))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)

	f, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	push := func(version string, f *config.File) {
		t.Helper()
		rt, err := translate.DirectoryResource(f)
		if err != nil {
			t.Fatal(err)
		}
		snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{resource.RuntimeType: {rt}})
		if err != nil {
			t.Fatal(err)
		}
		if err := snapshots.SetSnapshot(ctx, "authz-1", snap); err != nil {
			t.Fatal(err)
		}
	}
	push("v1", f)

	ch := make(chan update, 100)
	go func() {
		_ = agentsync.Subscribe(ctx, lis.Addr().String(), "authz-1", func(d *config.File, v string) error {
			ch <- update{d, v}
			return nil
		}, slog.New(slog.DiscardHandler))
	}()
	if u := nextDir(t, ch); u.version != "v1" {
		t.Fatalf("first version %q", u.version)
	}

	bad := *f
	bad.Tools = slices.Clone(f.Tools)
	bad.Tools[2].Destinations = nil // send_email keeps destination_args: an allowlist of nothing is refused
	bad.Tools[3].Class = "root"
	push("v2", &bad)
	select {
	case r := <-nacks:
		if r.GetVersionInfo() != "v1" {
			t.Errorf("NACK carries version %q, want the last good v1", r.GetVersionInfo())
		}
		for _, w := range []string{"tools[2].destinations", "tools[3].class"} {
			if !strings.Contains(r.GetErrorDetail().GetMessage(), w) {
				t.Errorf("NACK detail %q does not name %s", r.GetErrorDetail().GetMessage(), w)
			}
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the invalid directory was not NACKed")
	}

	// go-control-plane resends a NACKed version until the next snapshot (issue
	// #962); none of those resends may reach the callback.
	good := *f
	good.Tools = slices.Clone(f.Tools)
	good.Tools[2].Destinations = []string{"billing.example.com"}
	push("v3", &good)
	u := nextDir(t, ch)
	if u.version != "v3" {
		t.Fatalf("after the NACK the callback got version %q, want v3", u.version)
	}
	if got := sendEmail(t, u.dir); !slices.Equal(got.Destinations, []string{"billing.example.com"}) {
		t.Fatalf("v3 send_email %+v", got)
	}
}
