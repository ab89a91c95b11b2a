package agentsync_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/aisecops/aisecops-envoy/xds/agentsync"
	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/server"
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

func writeBudget(t *testing.T, path string, calls string) {
	t.Helper()
	body := strings.Replace(string(config.Example()), "max_tool_calls: 50", "max_tool_calls: "+calls, 1)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, ch <-chan []config.Agent) config.Agent {
	t.Helper()
	select {
	case a := <-ch:
		if len(a) != 1 {
			t.Fatalf("agents %+v", a)
		}
		return a[0]
	case <-time.After(20 * time.Second):
		t.Fatal("no agents update")
	}
	return config.Agent{}
}

// TestBudgetChangeReachesSubscriber: a budget edited in the file reaches a
// running subscriber; a refused update is NACKed (once, on the server) and the
// subscriber survives a control-plane restart.
func TestBudgetChangeReachesSubscriber(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := t.TempDir() + "/routes.yaml"
	writeBudget(t, path, "50")
	s, addr, stop := startPlane(t, "127.0.0.1:0")
	if err := s.LoadFile(ctx, path); err != nil {
		t.Fatal(err)
	}
	ch := make(chan []config.Agent, 10)
	refuse := errors.New("replica refuses 13 tool calls")
	apply := func(a []config.Agent) error {
		if a[0].Budgets.MaxToolCalls == 13 {
			return refuse
		}
		ch <- a
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
