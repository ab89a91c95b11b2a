package server

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/aisecops/aisecops-envoy/xds/config"
)

func thousandTools(port uint32, cost float64) *config.File {
	tools := make([]config.Tool, 1000)
	for i := range tools {
		tools[i] = tool(fmt.Sprintf("tool-%04d", i), fmt.Sprintf("/svc%04d.S/", i), port)
		// 1,000 distinct upstreams (all loopback) so there are 1,000 clusters too.
		tools[i].Upstream.Address = fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
		tools[i].Cost = cost
	}
	return file(tools...)
}

// BenchmarkDeliver1000Tools measures one routes file of 1,000 tools (1,000
// routes, clusters and endpoints) being translated for both flavours,
// validated, reference-checked, set as a snapshot and taken up by a fresh
// gRPC-Go xDS client: the time until that client has ACKed the listener,
// routes, every cluster and every endpoint of the new version.
func BenchmarkDeliver1000Tools(b *testing.B) {
	lis, err := net.Listen("tcp", "0.0.0.0:0") // reachable on every 127/8 address
	if err != nil {
		b.Fatal(err)
	}
	lis.Close()
	port := uint32(lis.Addr().(*net.TCPAddr).Port)
	p := startPlane(b, Options{AckTimeout: time.Second, Drain: time.Millisecond})
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		f := thousandTools(port, float64(i)/1000)
		if err := p.Apply(ctx, f); err != nil {
			b.Fatal(err)
		}
		node := fmt.Sprintf("bench-%d", i)
		cc := xdsClient(b, p.addr, node)
		cc.Connect()
		p.mu.Lock()
		want := p.current[DefaultGroup+"/grpc"].Version
		p.mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var acked map[string]string
			for _, n := range p.Status().Nodes {
				if n.ID == node {
					acked = n.Acked
				}
			}
			if acked[resource.ListenerType] == want && acked[resource.RouteType] == want &&
				acked[resource.ClusterType] == want && acked[resource.EndpointType] == want {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("not delivered: %v", acked)
			}
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		cc.Close()
		b.StartTimer()
	}
}

// BenchmarkBuild1000Tools is the control-plane share of the above: translate
// both flavours, validate every resource (Anys included) and reference-check.
func BenchmarkBuild1000Tools(b *testing.B) {
	p := startPlane(b, Options{})
	f := thousandTools(1, 0.5)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Build(f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdate1000Tools: a connected gRPC xDS client that already has the
// 1,000 tools receives a new version in which every route changed; timed from
// the file model to the client's ACK of listener and routes at the new version.
func BenchmarkUpdate1000Tools(b *testing.B) {
	lis, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		b.Fatal(err)
	}
	lis.Close()
	port := uint32(lis.Addr().(*net.TCPAddr).Port)
	p := startPlane(b, Options{})
	ctx := context.Background()
	if err := p.Apply(ctx, thousandTools(port, 0)); err != nil {
		b.Fatal(err)
	}
	cc := xdsClient(b, p.addr, "bench-update")
	cc.Connect()
	b.ReportAllocs()
	for i := 1; b.Loop(); i++ {
		if err := p.Apply(ctx, thousandTools(port, float64(i)/1000)); err != nil {
			b.Fatal(err)
		}
		p.mu.Lock()
		want := p.current[DefaultGroup+"/grpc"].Version
		p.mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var acked map[string]string
			for _, n := range p.Status().Nodes {
				if n.ID == "bench-update" {
					acked = n.Acked
				}
			}
			if acked[resource.ListenerType] == want && acked[resource.RouteType] == want {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("not delivered: %v", acked)
			}
			time.Sleep(time.Millisecond)
		}
	}
}
