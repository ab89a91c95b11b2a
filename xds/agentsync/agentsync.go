// Package agentsync owns an authz replica's subscription to the directory
// resource (translate.DirectoryResourceName, an RTDS Runtime carrying every tool
// and agent of the routes file) over the control plane's ADS stream: it decodes
// and validates each update, hands it to a callback, ACKs what applied and NACKs
// what did not (with the error), and reconnects with backoff, so the replica
// keeps its last good directory while the control plane is away or sends one it
// refuses. It imports no authz code.
package agentsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	envoy_service_runtime_v3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

// UserAgent identifies agentsync nodes to the control plane.
const UserAgent = "aisecops-agentsync"

// Apply takes a validated directory — a config.File with only Tools and Agents
// set — and the xDS version it arrived with. An error NACKs that version; the
// replica is then expected to keep deciding with what it had.
type Apply func(dir *config.File, version string) error

// Subscribe runs until ctx ends, keeping apply fed with the directory the
// control plane at addr serves to nodeID. It returns ctx's error.
func Subscribe(ctx context.Context, addr, nodeID string, apply Apply, logger *slog.Logger) error {
	return SubscribeWith(ctx, addr, nodeID, apply, logger, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// SubscribeWith is Subscribe with explicit dial options (TLS credentials).
func SubscribeWith(ctx context.Context, addr, nodeID string, apply Apply, logger *slog.Logger, dial ...grpc.DialOption) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	log := logger.With("component", "agentsync", "xds", addr, "node", nodeID)
	cc, err := grpc.NewClient(addr, dial...)
	if err != nil {
		return fmt.Errorf("agentsync: %w", err)
	}
	defer cc.Close()
	backoff := 100 * time.Millisecond
	for {
		got, err := stream(ctx, cc, nodeID, apply, log)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if got {
			backoff = 100 * time.Millisecond
		}
		log.Warn("agentsync: stream ended; keeping the last good directory", "error", err, "retry_in", backoff)
		// Jitter so replicas do not reconnect in lockstep after a restart.
		d := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// stream runs one ADS stream; got reports whether any response arrived.
func stream(ctx context.Context, cc *grpc.ClientConn, nodeID string, apply Apply, log *slog.Logger) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads, err := envoy_service_discovery_v3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	node := &envoy_config_core_v3.Node{Id: nodeID, UserAgentName: UserAgent}
	req := &envoy_service_discovery_v3.DiscoveryRequest{
		Node:          node,
		TypeUrl:       translate.RuntimeTypeURL,
		ResourceNames: []string{translate.DirectoryResourceName},
	}
	var acked string
	for {
		if err := ads.Send(req); err != nil {
			return got, err
		}
		resp, err := ads.Recv()
		if err != nil {
			return got, err
		}
		got = true
		req = &envoy_service_discovery_v3.DiscoveryRequest{
			Node:          node,
			TypeUrl:       translate.RuntimeTypeURL,
			ResourceNames: []string{translate.DirectoryResourceName},
			ResponseNonce: resp.GetNonce(),
		}
		if err := applyResponse(resp, apply); err != nil {
			log.Error("agentsync: NACK", "version", resp.GetVersionInfo(), "error", err)
			req.VersionInfo = acked
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			continue
		}
		acked = resp.GetVersionInfo()
		req.VersionInfo = acked
		log.Info("agentsync: directory applied", "version", acked)
	}
}

func applyResponse(resp *envoy_service_discovery_v3.DiscoveryResponse, apply Apply) error {
	if resp.GetTypeUrl() != translate.RuntimeTypeURL {
		return fmt.Errorf("unexpected type %q", resp.GetTypeUrl())
	}
	var found *envoy_service_runtime_v3.Runtime
	for _, a := range resp.GetResources() {
		rt := &envoy_service_runtime_v3.Runtime{}
		if err := a.UnmarshalTo(rt); err != nil {
			return fmt.Errorf("resource: %w", err)
		}
		if rt.GetName() == translate.DirectoryResourceName {
			found = rt
		}
	}
	if found == nil {
		return errors.New("no " + translate.DirectoryResourceName + " resource in the response")
	}
	dir, err := translate.DecodeDirectory(found)
	if err != nil {
		return err
	}
	return apply(dir, resp.GetVersionInfo())
}
