package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aisecops/aisecops-envoy/extauthz"
	"github.com/aisecops/aisecops-envoy/extauthz/httpapi"
	"github.com/aisecops/aisecops-envoy/xds/agentsync"
	"github.com/aisecops/aisecops-envoy/xds/config"
	xdsserver "github.com/aisecops/aisecops-envoy/xds/server"
)

// parseGroups reads --rollout-groups "canary=node-a,node-b;beta=node-c".
func parseGroups(s string) (map[string][]string, error) {
	groups := map[string][]string{}
	for _, g := range strings.Split(s, ";") {
		if strings.TrimSpace(g) == "" {
			continue
		}
		name, nodes, ok := strings.Cut(g, "=")
		if !ok || strings.TrimSpace(name) == "" || strings.TrimSpace(nodes) == "" {
			return nil, fmt.Errorf("--rollout-groups: %q is not name=node,node", g)
		}
		for _, n := range strings.Split(nodes, ",") {
			groups[strings.TrimSpace(name)] = append(groups[strings.TrimSpace(name)], strings.TrimSpace(n))
		}
	}
	return groups, nil
}

// startXDS starts the control plane on --xds-addr, serving the routes file
// (watched for changes) or the bundled example, and returns its HTTP handlers.
func startXDS(ctx context.Context, o *options, log *slog.Logger, reg *prometheus.Registry, start func(string, func() error)) ([]httpapi.Route, error) {
	groups, err := parseGroups(o.rolloutGroups)
	if err != nil {
		return nil, err
	}
	srv, err := xdsserver.New(ctx, xdsserver.Options{Logger: log, Registerer: reg, Groups: groups, StagedRollout: o.stagedRollout,
		TrustDomain: o.xdsTrustDomain(), NodeTTL: o.listen.xdsNodeTTL, MaxNodes: o.listen.xdsMaxNodes})
	if err != nil {
		return nil, err
	}
	if o.config == "" {
		f, err := config.Parse("example.yaml (bundled)", config.Example())
		if err != nil {
			return nil, err
		}
		if err := srv.Apply(ctx, f); err != nil {
			return nil, err
		}
	} else {
		if err := srv.LoadFile(ctx, o.config); err != nil {
			return nil, err // an invalid file at start has no last good snapshot to keep
		}
		start("xds-watch", func() error { return srv.WatchFile(ctx, o.config) })
	}
	gs, err := o.xdsGRPCServer(log)
	if err != nil {
		return nil, err
	}
	srv.Register(gs)
	if err := serveGRPC(ctx, "xDS control plane", o.xdsAddr, o.listen.grpcMaxConns, gs, log, start, nil); err != nil {
		return nil, err
	}
	status := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(srv.Status())
	}
	rollout := func(f func(r *http.Request) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if err := f(r); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			status(w, r)
		}
	}
	return []httpapi.Route{
		{Pattern: "GET /v1/xds/status", Role: httpapi.RoleOperator, Handler: http.HandlerFunc(status)},
		{Pattern: "POST /v1/xds/stage/{group}", Role: httpapi.RoleAdmin, Handler: rollout(func(r *http.Request) error {
			return srv.Stage(r.Context(), r.PathValue("group"))
		})},
		{Pattern: "POST /v1/xds/promote", Role: httpapi.RoleAdmin, Handler: rollout(func(r *http.Request) error { return srv.Promote(r.Context()) })},
	}, nil
}

// subscribeAgents takes the tools and agents (the whole directory) from the
// control plane over xDS, replacing both at once with each update; until the
// first one arrives the local file (or the bundled example) decides.
func subscribeAgents(ctx context.Context, o *options, dir *extauthz.Directory, log *slog.Logger) error {
	dial, err := o.xdsDialOption(log)
	if err != nil {
		return err
	}
	err = agentsync.SubscribeWith(ctx, o.xdsServer, o.nodeID, func(f *config.File, version string) error {
		dir.Set(f, "xds-"+version)
		log.Info("directory updated over xDS", "version", version, "tools", len(f.Tools), "agents", len(f.Agents))
		return nil
	}, log, dial)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
