package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func plainADS(t testing.TB, addr string) envoy_service_discovery_v3.AggregatedDiscoveryServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return envoy_service_discovery_v3.NewAggregatedDiscoveryServiceClient(cc)
}

// TestManyShortStreamsKeepBoundedNodes: 3,000 short streams, each a new node
// id, leave at most MaxNodes nodes behind (before, every one was kept for the
// life of the process).
func TestManyShortStreamsKeepBoundedNodes(t *testing.T) {
	t.Parallel()
	const streams, maxNodes = 3000, 256
	p := startPlane(t, Options{MaxNodes: maxNodes})
	if err := p.Apply(context.Background(), example(t)); err != nil {
		t.Fatal(err)
	}
	ads := plainADS(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range streams {
		sctx, scancel := context.WithCancel(ctx)
		st, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(listenerRequest(fmt.Sprintf("short-%04d", i), "", "")); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		scancel()
	}
	nodes := p.Status().Nodes
	if len(nodes) > maxNodes {
		t.Fatalf("%d nodes kept after %d short streams, want at most %d", len(nodes), streams, maxNodes)
	}
	// The newest nodes are the ones kept.
	kept := map[string]bool{}
	for _, n := range nodes {
		kept[n.ID] = true
	}
	if !kept[fmt.Sprintf("short-%04d", streams-1)] {
		t.Error("the newest node was evicted")
	}
	t.Logf("%d streams, %d nodes kept", streams, len(nodes))
}

// TestIdleNodesExpire: a node with no open stream is forgotten once not seen
// for NodeTTL; a node with a stream open is kept however long it is idle.
func TestIdleNodesExpire(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	p := startPlane(t, Options{NodeTTL: time.Minute, Now: clock})
	if err := p.Apply(context.Background(), example(t)); err != nil {
		t.Fatal(err)
	}
	ads := plainADS(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	open := func(node string) context.CancelFunc {
		sctx, scancel := context.WithCancel(ctx)
		st, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(listenerRequest(node, "", "")); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		return scancel
	}
	closeGone := open("gone")
	defer open("staying")()
	closeGone()
	eventually(t, 5*time.Second, func() error {
		for _, n := range p.Status().Nodes {
			if n.ID == "gone" && n.Streams != 0 {
				return fmt.Errorf("stream of %q still counted", n.ID)
			}
		}
		return nil
	})
	if ids := strings.Join(nodeIDs(p), ","); ids != "gone,staying" {
		t.Fatalf("nodes %s", ids)
	}
	advance(2 * time.Minute)
	if ids := strings.Join(nodeIDs(p), ","); ids != "staying" {
		t.Fatalf("after the TTL: nodes %s, want staying only", ids)
	}
}

// TestNackDetailTruncated: a NACK with a 3 MiB detail is stored (and logged)
// cut to MaxNackDetail bytes.
func TestNackDetailTruncated(t *testing.T) {
	t.Parallel()
	p := startPlane(t, Options{})
	if err := p.Apply(context.Background(), example(t)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := plainADS(t, p.addr).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(listenerRequest("nacker", "", "")); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	nack := listenerRequest("", "", resp.GetNonce())
	nack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: strings.Repeat("é", 3<<20/2)}
	if err := st.Send(nack); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		if n := p.Status().Nodes; len(n) != 1 || len(n[0].Nacks) != 1 {
			return fmt.Errorf("NACK not recorded: %+v", n)
		}
		return nil
	})
	d := p.Status().Nodes[0].Nacks[0].Detail
	if len(d) > MaxNackDetail || !strings.HasPrefix(d, "éé") || !strings.Contains(d, "truncated from 3145728 bytes") {
		t.Fatalf("stored detail is %d bytes (limit %d): %.80q…", len(d), MaxNackDetail, d)
	}
}

// TestUnknownTypeURLRefused: a stream cannot grow its own state with
// invented type URLs.
func TestUnknownTypeURLRefused(t *testing.T) {
	t.Parallel()
	p := startPlane(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := plainADS(t, p.addr).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := listenerRequest("typer", "", "")
	r.TypeUrl = "type.googleapis.com/invented.Type0001"
	if err := st.Send(r); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	if len(p.Status().Nodes) != 0 {
		t.Fatal("node state kept for a refused stream")
	}
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "short", strings.Repeat("x", MaxNackDetail), strings.Repeat("x", MaxNackDetail+1), strings.Repeat("€", 2000)} {
		got := truncate(s, MaxNackDetail)
		if len(got) > MaxNackDetail {
			t.Errorf("truncate(%d bytes) = %d bytes", len(s), len(got))
		}
		if len(s) <= MaxNackDetail && got != s {
			t.Errorf("short string changed")
		}
		if !strings.HasPrefix(s, strings.SplitN(got, "…[", 2)[0]) {
			t.Errorf("not a prefix cut on a rune boundary")
		}
	}
}
