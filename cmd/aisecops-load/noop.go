package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"

	envoy_service_auth_v3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// noopServer is the floor: an ext_authz server that answers every Check OK
// once gRPC has decoded it, served exactly as `aisecops serve` serves the
// real one (a default grpc.Server). Whatever the real server costs above it
// is the cost of deciding.
type noopServer struct {
	envoy_service_auth_v3.UnimplementedAuthorizationServer
}

// ok is shared: the floor should not even pay for building its answer.
var ok = &envoy_service_auth_v3.CheckResponse{
	Status:       &rpcstatus.Status{Code: int32(codes.OK)},
	HttpResponse: &envoy_service_auth_v3.CheckResponse_OkResponse{OkResponse: &envoy_service_auth_v3.OkHttpResponse{}},
}

func (noopServer) Check(_ context.Context, req *envoy_service_auth_v3.CheckRequest) (*envoy_service_auth_v3.CheckResponse, error) {
	if req.GetAttributes().GetRequest().GetHttp() == nil {
		return nil, fmt.Errorf("no HTTP request in the Check")
	}
	return ok, nil
}

// runNoop serves the floor on --addr until ctx ends, printing the address it
// listens on as its first line of output.
func runNoop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("noop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (loopback)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := loopback(*addr); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	envoy_service_auth_v3.RegisterAuthorizationServer(gs, noopServer{})
	fmt.Fprintln(stdout, "listening", lis.Addr().String())
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	return gs.Serve(lis)
}

// loopback refuses any address but a loopback one: the load and its floor
// never listen on or send to the network.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%s: only loopback addresses are allowed", addr)
	}
	return nil
}
