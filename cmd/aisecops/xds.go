package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aisecops/aisecops-envoy/extauthz"
)

// startXDS starts the control plane. TODO(issue 5): wired when xds/server lands.
func startXDS(ctx context.Context, o *options, log *slog.Logger, reg *prometheus.Registry, start func(string, func() error)) (func(), error) {
	return func() {}, nil
}

// subscribeAgents takes agent budgets from the control plane over xDS.
func subscribeAgents(ctx context.Context, o *options, dir *extauthz.Directory, log *slog.Logger) error {
	<-ctx.Done()
	return nil
}
