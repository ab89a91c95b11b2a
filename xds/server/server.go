// Package server owns the ADS control plane: it turns the routes file into
// snapshots (xds/translate), validates and reference-checks them before any
// push, serves them per node over go-control-plane's snapshot cache, rolls new
// versions out make-before-break and by rollout group, records ACKs and NACKs
// (bounded: nodes expire, details are cut), binds each stream's node id to its
// client certificate when given a trust domain, and keeps the last good
// snapshot when a file is invalid. It must not import authz code, and it never
// sends a resource that failed validation.
package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	envoy_config_cluster_v3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_config_route_v3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/aisecops/aisecops-envoy/xds/config"
	"github.com/aisecops/aisecops-envoy/xds/translate"
)

// DefaultGroup is the rollout group of every node not named in Options.Groups.
const DefaultGroup = "default"

// Options configure a Server. Logger and Registerer are required in spirit;
// nil gives a discarding logger and no metrics registration.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
	// Translate is the base translation (Envoy flavour options).
	Translate translate.Options
	// GRPCListener is the listener (dial target) of gRPC-flavour snapshots, served
	// to nodes whose user agent is gRPC; default translate.ListenerName.
	GRPCListener string
	// Groups maps a rollout group name to the node ids in it.
	Groups map[string][]string
	// StagedRollout holds a new file version as a candidate until Stage or
	// Promote; without it a valid file goes to every node at once.
	StagedRollout bool
	// AckTimeout bounds each make-before-break wait for ACKs; default 10s. A node
	// that never ACKs delays a rollout by at most this much per step.
	AckTimeout time.Duration
	// Drain is how long the old clusters stay after the switched routes are
	// ACKed, for requests already routed to them; default 1s. An ACK says a
	// client accepted the routes, not that its in-flight requests have moved.
	Drain time.Duration
	// TrustDomain, when set, binds every stream to its client certificate: the
	// stream must come over mTLS, and its node id must be one the certificate
	// names as the URI SAN spiffe://<TrustDomain>/envoy/<node id>
	// (NodeSPIFFEID). A stream naming another node ends with PermissionDenied
	// before it touches that node's state. Empty: any node id (plaintext on
	// loopback, for development).
	TrustDomain string
	// NodeTTL is how long a node with no open stream is remembered (its ACKs
	// and NACKs in Status); default 15m.
	NodeTTL time.Duration
	// MaxNodes bounds the nodes remembered; default 4096. When every one has a
	// stream open, a new node is refused (ResourceExhausted).
	MaxNodes int
}

// bundle is one version of the file translated for both consumer flavours.
type bundle struct {
	version string // the Envoy flavour's content hash
	byFl    map[translate.Flavour]*translate.Resources
}

// Server is the ADS control plane.
type Server struct {
	log     *slog.Logger
	now     func() time.Time
	opts    Options
	cache   cachev3.SnapshotCache
	xds     serverv3.Server
	metrics *metrics
	nodeGrp map[string]string

	pushMu sync.Mutex // serialises rollouts

	mu        sync.Mutex
	current   map[string]*translate.Resources // cache key → what it serves
	def       *bundle                         // what the default group serves
	staged    map[string]*bundle              // group → staged version
	candidate *bundle
	lastErr   string
	lastErrAt time.Time
	lastGood  time.Time
	rejected  uint64
	file      string

	tracker *tracker
}

// New builds a Server. Call Apply or LoadFile before nodes connect, or they
// wait until the first good file.
func New(ctx context.Context, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AckTimeout == 0 {
		opts.AckTimeout = 10 * time.Second
	}
	if opts.Drain == 0 {
		opts.Drain = time.Second
	}
	if opts.GRPCListener == "" {
		opts.GRPCListener = translate.ListenerName
	}
	if opts.NodeTTL <= 0 {
		opts.NodeTTL = 15 * time.Minute
	}
	if opts.MaxNodes <= 0 {
		opts.MaxNodes = 4096
	}
	s := &Server{
		log:     opts.Logger.With("component", "xds"),
		now:     opts.Now,
		opts:    opts,
		nodeGrp: map[string]string{},
		current: map[string]*translate.Resources{},
		staged:  map[string]*bundle{},
	}
	for g, ids := range opts.Groups {
		if g == "" || g == DefaultGroup || strings.Contains(g, "/") {
			return nil, fmt.Errorf("xds: bad rollout group name %q", g)
		}
		for _, id := range ids {
			if prev, ok := s.nodeGrp[id]; ok {
				return nil, fmt.Errorf("xds: node %q is in groups %q and %q", id, prev, g)
			}
			s.nodeGrp[id] = g
		}
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.tracker = newTracker(s)
	s.cache = cachev3.NewSnapshotCache(true, nodeHash{s}, cacheLogger(s.log))
	s.xds = serverv3.NewServer(ctx, s.cache, s.tracker.callbacks())
	return s, nil
}

// Register adds the ADS service to g.
func (s *Server) Register(g *grpc.Server) {
	envoy_service_discovery_v3.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// nodeHash keys the snapshot cache by rollout group and consumer flavour, so a
// node with an id we have never seen gets the default snapshot.
type nodeHash struct{ s *Server }

func (h nodeHash) ID(n *envoy_config_core_v3.Node) string {
	return h.s.groupOf(n.GetId()) + "/" + flavourOf(n).String()
}

func (s *Server) groupOf(id string) string {
	if g, ok := s.nodeGrp[id]; ok {
		return g
	}
	return DefaultGroup
}

// flavourOf serves gRPC's own xDS client the proxyless shape; everyone else
// (Envoy, authz replicas) the Envoy shape.
func flavourOf(n *envoy_config_core_v3.Node) translate.Flavour {
	if strings.HasPrefix(n.GetUserAgentName(), "gRPC") {
		return translate.FlavourGRPC
	}
	return translate.FlavourEnvoy
}

func (s *Server) groups() []string {
	gs := []string{DefaultGroup}
	for g := range s.opts.Groups {
		gs = append(gs, g)
	}
	slices.Sort(gs[1:])
	return gs
}

var flavours = []translate.Flavour{translate.FlavourEnvoy, translate.FlavourGRPC}

// Build translates and checks f for every flavour; nothing it rejects is pushed.
func (s *Server) Build(f *config.File) (*bundle, error) {
	b := &bundle{byFl: map[translate.Flavour]*translate.Resources{}}
	for _, fl := range flavours {
		o := s.opts.Translate
		o.Flavour = fl
		if fl == translate.FlavourGRPC {
			o.ListenerName = s.opts.GRPCListener
		}
		res, err := translate.Translate(f, o)
		if err != nil {
			return nil, err
		}
		if err := res.Validate(); err != nil {
			return nil, fmt.Errorf("%s resources: %w", fl, err)
		}
		b.byFl[fl] = res
	}
	b.version = b.byFl[translate.FlavourEnvoy].Version
	return b, nil
}

// Apply validates f and rolls it out (or, with StagedRollout, holds it as the
// candidate). An invalid f changes nothing that is served.
func (s *Server) Apply(ctx context.Context, f *config.File) error {
	b, err := s.Build(f)
	if err != nil {
		s.reject(err)
		return err
	}
	s.mu.Lock()
	s.lastGood = s.now()
	s.lastErr = ""
	first := s.def == nil
	same := s.def != nil && s.def.version == b.version && len(s.staged) == 0
	s.candidate = b
	s.mu.Unlock()
	s.metrics.valid.Set(1)
	if same {
		return nil
	}
	if s.opts.StagedRollout && !first {
		s.log.Info("xds: new version staged as candidate", "version", b.version)
		return nil
	}
	return s.Promote(ctx)
}

func (s *Server) reject(err error) {
	s.mu.Lock()
	s.lastErr = err.Error()
	s.lastErrAt = s.now()
	s.rejected++
	serving := ""
	if s.def != nil {
		serving = s.def.version
	}
	s.mu.Unlock()
	s.metrics.rejected.Inc()
	s.metrics.valid.Set(0)
	s.log.Error("xds: configuration rejected; keeping the last good snapshot", "serving", serving, "error", err)
}

// LoadFile reads, validates and applies the routes file at path.
func (s *Server) LoadFile(ctx context.Context, path string) error {
	s.mu.Lock()
	s.file = path
	s.mu.Unlock()
	data, err := os.ReadFile(path)
	if err != nil {
		err = fmt.Errorf("xds: %w", err)
		s.reject(err)
		return err
	}
	f, err := config.Parse(path, data)
	if err != nil {
		s.reject(err)
		return err
	}
	return s.Apply(ctx, f)
}

// WatchFile loads path and reloads it on every change until ctx ends. It
// watches the directory so editors' rename-into-place and Kubernetes ConfigMap
// symlink swaps are seen.
func (s *Server) WatchFile(ctx context.Context, path string) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("xds: watch: %w", err)
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("xds: watch %s: %w", path, err)
	}
	var last [32]byte
	load := func() {
		data, err := os.ReadFile(path)
		if err == nil {
			sum := sha256.Sum256(data)
			if sum == last {
				return
			}
			last = sum
		}
		_ = s.LoadFile(ctx, path) // recorded in Status, log and metrics
	}
	load()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Base(ev.Name) == filepath.Base(path) || ev.Has(fsnotify.Create) {
				load()
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("xds: file watcher", "error", err)
		}
	}
}

// Stage sends the candidate version to the nodes of one rollout group only.
func (s *Server) Stage(ctx context.Context, group string) error {
	if _, ok := s.opts.Groups[group]; !ok {
		return fmt.Errorf("xds: unknown rollout group %q", group)
	}
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	s.mu.Lock()
	c := s.candidate
	s.mu.Unlock()
	if c == nil {
		return errors.New("xds: no candidate version to stage")
	}
	if err := s.pushGroup(ctx, group, c); err != nil {
		return err
	}
	s.mu.Lock()
	s.staged[group] = c
	s.mu.Unlock()
	s.log.Info("xds: version staged", "group", group, "version", c.version)
	return nil
}

// Promote sends the candidate version to every node and clears staging.
func (s *Server) Promote(ctx context.Context) error {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	s.mu.Lock()
	c := s.candidate
	s.mu.Unlock()
	if c == nil {
		return errors.New("xds: no candidate version to promote")
	}
	var errs []error
	for _, g := range s.groups() {
		errs = append(errs, s.pushGroup(ctx, g, c))
	}
	s.mu.Lock()
	s.def = c
	clear(s.staged)
	s.mu.Unlock()
	s.log.Info("xds: version promoted", "version", c.version)
	return errors.Join(errs...)
}

func (s *Server) pushGroup(ctx context.Context, group string, b *bundle) error {
	var errs []error
	for _, fl := range flavours {
		errs = append(errs, s.transition(ctx, group+"/"+fl.String(), b.byFl[fl]))
	}
	return errors.Join(errs...)
}

// transition moves one cache key to next make-before-break: new clusters are
// added (and ACKed) while the routes still point at the old ones, then the
// routes switch while the old clusters remain (and are ACKed), and only then
// are the old clusters removed. Each wait is bounded by AckTimeout.
func (s *Server) transition(ctx context.Context, key string, next *translate.Resources) error {
	s.mu.Lock()
	prev := s.current[key]
	s.mu.Unlock()
	if prev != nil && prev.Version == next.Version {
		return nil
	}
	if prev != nil {
		added, removed := clusterDiff(prev, next)
		if len(added) > 0 {
			step := compose(prev, next, false)
			if err := s.set(ctx, key, step); err != nil {
				return err
			}
			s.tracker.waitAcks(ctx, key, step.Version, s.opts.AckTimeout, []string{resource.RouteType, resource.ClusterType, resource.EndpointType}, false)
		}
		if len(removed) > 0 {
			step := compose(prev, next, true)
			if err := s.set(ctx, key, step); err != nil {
				return err
			}
			s.tracker.waitAcks(ctx, key, step.Version, s.opts.AckTimeout, []string{resource.RouteType, resource.ClusterType, resource.EndpointType}, false)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(s.opts.Drain):
			}
		}
	}
	return s.set(ctx, key, next)
}

func clusterDiff(prev, next *translate.Resources) (added, removed []string) {
	p, n := map[string]bool{}, map[string]bool{}
	for _, c := range prev.Clusters {
		p[c.GetName()] = true
	}
	for _, c := range next.Clusters {
		n[c.GetName()] = true
		if !p[c.GetName()] {
			added = append(added, c.GetName())
		}
	}
	for c := range p {
		if !n[c] {
			removed = append(removed, c)
		}
	}
	return added, removed
}

// compose is an intermediate step: the union of both versions' clusters and
// endpoints (next's where both have one), with the listeners and routes of
// next when switched, else of prev.
func compose(prev, next *translate.Resources, switched bool) *translate.Resources {
	r := &translate.Resources{Runtimes: next.Runtimes, Listeners: prev.Listeners, Routes: prev.Routes}
	if switched {
		r.Listeners, r.Routes = next.Listeners, next.Routes
	} else if len(prev.Listeners) > 0 && prev.Listeners[0].GetApiListener() != nil {
		r.Routes = warmRoutes(prev.Routes, next.Clusters)
	}
	seen := map[string]bool{}
	for _, c := range next.Clusters {
		seen[c.GetName()] = true
		r.Clusters = append(r.Clusters, c)
	}
	for _, c := range prev.Clusters {
		if !seen[c.GetName()] {
			r.Clusters = append(r.Clusters, c)
		}
	}
	seen = map[string]bool{}
	for _, e := range next.Endpoints {
		seen[e.GetClusterName()] = true
		r.Endpoints = append(r.Endpoints, e)
	}
	for _, e := range prev.Endpoints {
		if !seen[e.GetClusterName()] {
			r.Endpoints = append(r.Endpoints, e)
		}
	}
	if err := r.Rehash(); err != nil { // cannot fail for resources that hashed before
		r.Version = prev.Version + "+" + next.Version
	}
	return r
}

// warmRoutes adds, for a gRPC client, a route that no RPC matches to every
// cluster not yet routed to. gRPC asks for a cluster, and builds its balancer,
// only once a route names it; without this the switch to a new cluster races
// gRPC's own picker update and fails RPCs with "unknown cluster selected".
// Envoy subscribes to every cluster, so it gets no such routes.
func warmRoutes(routes []*envoy_config_route_v3.RouteConfiguration, clusters []*envoy_config_cluster_v3.Cluster) []*envoy_config_route_v3.RouteConfiguration {
	out := make([]*envoy_config_route_v3.RouteConfiguration, 0, len(routes))
	for _, rc := range routes {
		used := map[string]bool{}
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				used[rt.GetRoute().GetCluster()] = true
			}
		}
		rc = proto.Clone(rc).(*envoy_config_route_v3.RouteConfiguration)
		for _, c := range clusters {
			if used[c.GetName()] {
				continue
			}
			for _, vh := range rc.VirtualHosts {
				vh.Routes = append(vh.Routes, &envoy_config_route_v3.Route{
					Name:  "aisecops-warm-" + c.GetName(),
					Match: &envoy_config_route_v3.RouteMatch{PathSpecifier: &envoy_config_route_v3.RouteMatch_Prefix{Prefix: "/aisecops.warm.never/" + c.GetName() + "/"}},
					Action: &envoy_config_route_v3.Route_Route{Route: &envoy_config_route_v3.RouteAction{
						ClusterSpecifier: &envoy_config_route_v3.RouteAction_Cluster{Cluster: c.GetName()},
					}},
				})
			}
		}
		out = append(out, rc)
	}
	return out
}

func (s *Server) set(ctx context.Context, key string, r *translate.Resources) error {
	snap, err := snapshot(r)
	if err != nil {
		return fmt.Errorf("xds: snapshot %s: %w", key, err)
	}
	if err := s.cache.SetSnapshot(ctx, key, snap); err != nil {
		return fmt.Errorf("xds: set snapshot %s: %w", key, err)
	}
	s.mu.Lock()
	s.current[key] = r
	s.mu.Unlock()
	s.metrics.pushes.WithLabelValues(strings.SplitN(key, "/", 2)[0]).Inc()
	s.log.Info("xds: snapshot set", "key", key, "version", r.Version)
	return nil
}

func snapshot(r *translate.Resources) (*cachev3.Snapshot, error) {
	m := map[resource.Type][]types.Resource{}
	for _, x := range r.Listeners {
		m[resource.ListenerType] = append(m[resource.ListenerType], x)
	}
	for _, x := range r.Routes {
		m[resource.RouteType] = append(m[resource.RouteType], x)
	}
	for _, x := range r.Clusters {
		m[resource.ClusterType] = append(m[resource.ClusterType], x)
	}
	for _, x := range r.Endpoints {
		m[resource.EndpointType] = append(m[resource.EndpointType], x)
	}
	for _, x := range r.Runtimes {
		m[resource.RuntimeType] = append(m[resource.RuntimeType], x)
	}
	return cachev3.NewSnapshot(r.Version, m)
}

// Status is what /v1/xds/status shows.
type Status struct {
	File         string            `json:"file,omitempty"`
	Version      string            `json:"version"`
	Candidate    string            `json:"candidate,omitempty"`
	Staged       map[string]string `json:"staged,omitempty"`
	LastGoodAt   time.Time         `json:"last_good_at,omitzero"`
	LastError    string            `json:"last_error,omitempty"`
	LastErrorAt  time.Time         `json:"last_error_at,omitzero"`
	RejectedFile uint64            `json:"rejected_files"`
	Nodes        []NodeStatus      `json:"nodes"`
}

// NodeStatus is one connected (or recently connected) node.
type NodeStatus struct {
	ID       string            `json:"id"`
	Group    string            `json:"group"`
	Flavour  string            `json:"flavour"`
	Streams  int               `json:"streams"`
	LastSeen time.Time         `json:"last_seen"`
	Acked    map[string]string `json:"acked,omitempty"` // type URL → version
	Nacks    []Nack            `json:"nacks,omitempty"`
}

// Nack is one rejected version, recorded once per node and version.
type Nack struct {
	Version string `json:"version"`
	TypeURL string `json:"type_url"`
	// Detail is the client's error message, cut to MaxNackDetail bytes.
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}

// Status reports what is served, what was rejected and why, and each node.
func (s *Server) Status() Status {
	s.mu.Lock()
	st := Status{File: s.file, LastGoodAt: s.lastGood, LastError: s.lastErr, LastErrorAt: s.lastErrAt, RejectedFile: s.rejected}
	if s.def != nil {
		st.Version = s.def.version
	}
	if s.candidate != nil && (s.def == nil || s.candidate.version != s.def.version) {
		st.Candidate = s.candidate.version
	}
	if len(s.staged) > 0 {
		st.Staged = map[string]string{}
		for g, b := range s.staged {
			st.Staged[g] = b.version
		}
	}
	s.mu.Unlock()
	st.Nodes = s.tracker.nodes()
	return st
}

func cacheLogger(l *slog.Logger) gcplog.Logger {
	// The ADS cache logs every request it defers; that is routine, so only its
	// errors are raised above debug.
	return gcplog.LoggerFuncs{
		DebugFunc: func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		InfoFunc:  func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		WarnFunc:  func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { l.Error(fmt.Sprintf(f, a...)) },
	}
}
