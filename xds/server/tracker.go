package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Bounds on what a client can make the tracker keep. Every string a client
// sends is either checked against a fixed set (type URLs), bounded (node ids,
// NACK details), or not kept at all.
const (
	// MaxNackDetail bounds a NACK's error detail as stored, shown and logged.
	// Envoy's own details name the resource and the field; 1 KiB holds them.
	MaxNackDetail = 1024
	// maxNodeID bounds a node id; longer ids are refused.
	maxNodeID = 256
	// nacksKept is how many NACKs each node keeps (the newest).
	nacksKept = 20
)

// knownTypes are the type URLs a stream may subscribe to; any other ends the
// stream, so a client cannot grow a stream's state with invented types.
var knownTypes = []string{
	resource.ListenerType, resource.RouteType, resource.ScopedRouteType, resource.VirtualHostType,
	resource.ClusterType, resource.EndpointType, resource.SecretType, resource.RuntimeType,
	resource.ExtensionConfigType,
}

// tracker follows every SotW ADS stream: what was sent under which nonce, what
// each node ACKed or NACKed, and whether it subscribes by wildcard. It is how
// rollouts wait for ACKs and how a NACKed version is held back. With a trust
// domain it also binds each stream's node id to the client's certificate.
//
// Node state is bounded: a node with no open stream is forgotten once not seen
// for NodeTTL, and at most MaxNodes are kept (the least recently seen node
// without a stream goes first; a new node is refused when every kept node has
// a stream open).
type tracker struct {
	s         *Server
	mu        sync.Mutex
	streams   map[int64]*streamState
	delta     map[int64]*deltaState // incremental streams, tracked only for identity
	nodes_    map[string]*nodeState
	lastSweep time.Time
	changed   chan struct{}
}

type streamState struct {
	peer  string
	node  string
	bound bool     // node is set (and counted in its nodeState.streams)
	ids   []string // node ids the client certificate names (with a trust domain)
	key   string
	types map[string]*typeState
}

type deltaState struct {
	peer    string
	ids     []string
	checked bool
}

type typeState struct {
	wildcard    bool
	lastNonce   string
	lastVersion string
	acked       string
	nacked      string
}

type nodeState struct {
	group, flavour string
	acked          map[string]string
	version        string // last ACKed version, for the version gauge
	nacks          []Nack
	responses      int
	streams        int // open streams naming this node
	lastSeen       time.Time
}

func newTracker(s *Server) *tracker {
	return &tracker{s: s, streams: map[int64]*streamState{}, delta: map[int64]*deltaState{}, nodes_: map[string]*nodeState{}, changed: make(chan struct{})}
}

func (t *tracker) notify() {
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *tracker) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			st := &streamState{peer: peerAddr(ctx), types: map[string]*typeState{}}
			if td := t.s.opts.TrustDomain; td != "" {
				ids, err := certNodeIDs(ctx, td)
				if err != nil {
					return t.refuse(st.peer, "certificate", "", err)
				}
				st.ids = ids
			}
			t.mu.Lock()
			t.streams[id] = st
			t.mu.Unlock()
			return nil
		},
		StreamClosedFunc: func(id int64, _ *envoy_config_core_v3.Node) {
			t.mu.Lock()
			if st := t.streams[id]; st != nil && st.bound {
				if ns := t.nodes_[st.node]; ns != nil {
					ns.streams--
					ns.lastSeen = t.s.now()
				}
			}
			delete(t.streams, id)
			t.notify()
			t.mu.Unlock()
		},
		StreamRequestFunc:  t.onRequest,
		StreamResponseFunc: t.onResponse,
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			td := t.s.opts.TrustDomain
			if td == "" {
				return nil
			}
			ids, err := certNodeIDs(ctx, td)
			if err != nil {
				return t.refuse(peerAddr(ctx), "certificate", "", err)
			}
			t.mu.Lock()
			t.delta[id] = &deltaState{peer: peerAddr(ctx), ids: ids}
			t.mu.Unlock()
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *envoy_config_core_v3.Node) {
			t.mu.Lock()
			delete(t.delta, id)
			t.mu.Unlock()
		},
		StreamDeltaRequestFunc: t.onDeltaRequest,
	}
}

// refuse logs and counts a refused stream and returns the status that ends it.
func (t *tracker) refuse(peer, reason, node string, err error) error {
	t.s.metrics.refused.WithLabelValues(reason).Inc()
	t.s.log.Warn("xds: stream refused", "reason", reason, "node", truncate(node, 64), "peer", peer, "error", err)
	code := codes.PermissionDenied
	switch reason {
	case "node_id", "type_url":
		code = codes.InvalidArgument
	case "too_many_nodes":
		code = codes.ResourceExhausted
	}
	return status.Error(code, "xds: "+err.Error())
}

// checkNode is the identity rule: with a trust domain, a stream may only name
// a node its client certificate names.
// It returns the refusal reason with the error.
func (t *tracker) checkNode(ids []string, nodeID string) (string, error) {
	if len(nodeID) > maxNodeID {
		return "node_id", fmt.Errorf("node id longer than %d bytes", maxNodeID)
	}
	if t.s.opts.TrustDomain != "" && !slices.Contains(ids, nodeID) {
		return "node_identity", fmt.Errorf("node id %q is not the identity of this client's certificate (%s)", truncate(nodeID, 64), strings.Join(ids, ", "))
	}
	return "", nil
}

// node returns the state of node id, creating it within the bounds.
func (t *tracker) node(id string, n *envoy_config_core_v3.Node) (*nodeState, error) {
	now := t.s.now()
	ns := t.nodes_[id]
	if ns == nil {
		t.sweep(now, true)
		if len(t.nodes_) >= t.s.opts.MaxNodes {
			return nil, fmt.Errorf("%d nodes have streams open; no room for node %q", len(t.nodes_), truncate(id, 64))
		}
		ns = &nodeState{group: t.s.groupOf(id), flavour: flavourOf(n).String(), acked: map[string]string{}}
		t.nodes_[id] = ns
	}
	ns.lastSeen = now
	return ns, nil
}

// sweep forgets nodes with no open stream not seen for NodeTTL; with room, it
// also makes room for one more node by forgetting the least recently seen
// nodes without a stream. Expiry alone runs at most once per NodeTTL/8.
func (t *tracker) sweep(now time.Time, room bool) {
	ttl := t.s.opts.NodeTTL
	if now.Sub(t.lastSweep) >= ttl/8 || (room && len(t.nodes_) >= t.s.opts.MaxNodes) {
		t.lastSweep = now
		for id, ns := range t.nodes_ {
			if ns.streams <= 0 && now.Sub(ns.lastSeen) > ttl {
				t.forget(id, ns)
			}
		}
	}
	for room && len(t.nodes_) >= t.s.opts.MaxNodes {
		var oldest string
		var on *nodeState
		for id, ns := range t.nodes_ {
			if ns.streams <= 0 && (on == nil || ns.lastSeen.Before(on.lastSeen)) {
				oldest, on = id, ns
			}
		}
		if on == nil {
			return
		}
		t.forget(oldest, on)
	}
}

func (t *tracker) forget(id string, ns *nodeState) {
	delete(t.nodes_, id)
	if ns.version != "" {
		t.s.metrics.version.DeleteLabelValues(id, ns.version)
	}
}

func (t *tracker) onRequest(id int64, req *envoy_service_discovery_v3.DiscoveryRequest) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		if t.s.opts.TrustDomain != "" {
			return status.Error(codes.PermissionDenied, "xds: stream not opened")
		}
		st = &streamState{types: map[string]*typeState{}}
		t.streams[id] = st
	}
	nodeID := req.GetNode().GetId()
	if reason, err := t.checkNode(st.ids, nodeID); err != nil {
		return t.refuse(st.peer, reason, nodeID, err)
	}
	if !slices.Contains(knownTypes, req.GetTypeUrl()) {
		return t.refuse(st.peer, "type_url", nodeID, fmt.Errorf("unknown type URL %q", truncate(req.GetTypeUrl(), 128)))
	}
	ns, err := t.node(nodeID, req.GetNode())
	if err != nil {
		return t.refuse(st.peer, "too_many_nodes", nodeID, err)
	}
	if !st.bound || st.node != nodeID {
		if st.bound {
			if old := t.nodes_[st.node]; old != nil {
				old.streams--
				old.lastSeen = t.s.now()
			}
		}
		st.node, st.bound = nodeID, true
		ns.streams++
	}
	st.key = nodeHash{t.s}.ID(req.GetNode())
	ts := st.types[req.GetTypeUrl()]
	if ts == nil {
		ts = &typeState{}
		st.types[req.GetTypeUrl()] = ts
	}
	names := req.GetResourceNames()
	ts.wildcard = len(names) == 0 || slices.Contains(names, "*")
	if req.GetResponseNonce() == "" || req.GetResponseNonce() != ts.lastNonce {
		return nil // first request, or stale nonce (the server ignores those too)
	}
	defer t.notify()
	if req.GetErrorDetail() != nil {
		v := ts.lastVersion
		ts.nacked = v
		if !slices.ContainsFunc(ns.nacks, func(n Nack) bool { return n.Version == v }) {
			detail := truncate(req.GetErrorDetail().GetMessage(), MaxNackDetail)
			ns.nacks = append(ns.nacks, Nack{Version: v, TypeURL: req.GetTypeUrl(), Detail: detail, At: t.s.now()})
			if len(ns.nacks) > nacksKept {
				ns.nacks = slices.Clone(ns.nacks[len(ns.nacks)-nacksKept:])
			}
			t.s.metrics.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
			t.s.log.Warn("xds: NACK", "node", nodeID, "type", req.GetTypeUrl(), "version", v, "detail", detail)
		}
		// Hold the rejected version: the snapshot cache answers any request whose
		// version differs from the snapshot's, so a NACK (which carries the last
		// good version) would be answered with the same bad version at once, in a
		// loop (go-control-plane #962). Presenting the rejected version makes the
		// cache wait for the next snapshot instead.
		req.VersionInfo = v
		return nil
	}
	if req.GetVersionInfo() == ts.lastVersion {
		ts.acked = ts.lastVersion
		ns.acked[req.GetTypeUrl()] = ts.acked
		t.s.metrics.acks.WithLabelValues(req.GetTypeUrl()).Inc()
		if ns.version != ts.acked {
			if ns.version != "" {
				t.s.metrics.version.DeleteLabelValues(nodeID, ns.version)
			}
			ns.version = ts.acked
			t.s.metrics.version.WithLabelValues(nodeID, ns.version).Set(1)
		}
	}
	return nil
}

// onDeltaRequest applies the identity rule to incremental streams, which the
// tracker does not otherwise follow. Only the first request must carry the
// node; any later one that names a node is checked again.
func (t *tracker) onDeltaRequest(id int64, req *envoy_service_discovery_v3.DeltaDiscoveryRequest) error {
	if t.s.opts.TrustDomain == "" {
		return nil
	}
	t.mu.Lock()
	ds := t.delta[id]
	t.mu.Unlock()
	if ds == nil {
		return status.Error(codes.PermissionDenied, "xds: stream not opened")
	}
	if req.GetNode() == nil && ds.checked {
		return nil
	}
	nodeID := req.GetNode().GetId()
	if reason, err := t.checkNode(ds.ids, nodeID); err != nil {
		return t.refuse(ds.peer, reason, nodeID, err)
	}
	ds.checked = true
	return nil
}

func (t *tracker) onResponse(_ context.Context, id int64, req *envoy_service_discovery_v3.DiscoveryRequest, resp *envoy_service_discovery_v3.DiscoveryResponse) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		return
	}
	ts := st.types[resp.GetTypeUrl()]
	if ts == nil {
		ts = &typeState{}
		st.types[resp.GetTypeUrl()] = ts
	}
	ts.lastNonce = resp.GetNonce()
	ts.lastVersion = resp.GetVersionInfo()
	if ns := t.nodes_[st.node]; ns != nil && st.bound {
		ns.responses++
	}
}

// responses counts DiscoveryResponses sent to a node (tests use it to prove a
// NACKed version is not resent).
func (t *tracker) responses(node string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ns := t.nodes_[node]; ns != nil {
		return ns.responses
	}
	return 0
}

// waitAcks waits until every stream of key subscribed to each of typeURLs has
// ACKed or NACKed version, or timeout. With cdsWildcardOnly only streams whose
// cluster subscription is a wildcard (Envoy) are waited for: a gRPC client asks
// for a cluster only once a route names it, so it cannot ACK one before.
func (t *tracker) waitAcks(ctx context.Context, key, version string, timeout time.Duration, typeURLs []string, cdsWildcardOnly bool) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		t.mu.Lock()
		done := true
		var waiting string
		for _, st := range t.streams {
			if st.key != key {
				continue
			}
			if cdsWildcardOnly {
				if c := st.types[resource.ClusterType]; c == nil || !c.wildcard {
					continue
				}
			}
			for _, tu := range typeURLs {
				ts := st.types[tu]
				if ts == nil {
					continue
				}
				if ts.acked != version && ts.nacked != version {
					done, waiting = false, st.node
				}
			}
		}
		ch := t.changed
		t.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.s.log.Warn("xds: make-before-break step not ACKed in time; continuing", "key", key, "version", version, "waiting_for", waiting)
			return
		}
	}
}

func (t *tracker) nodes() []NodeStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(t.s.now(), false)
	out := make([]NodeStatus, 0, len(t.nodes_))
	for id, ns := range t.nodes_ {
		n := NodeStatus{ID: id, Group: ns.group, Flavour: ns.flavour, Streams: max(ns.streams, 0), Nacks: slices.Clone(ns.nacks), LastSeen: ns.lastSeen}
		if len(ns.acked) > 0 {
			n.Acked = map[string]string{}
			for k, v := range ns.acked {
				n.Acked[k] = v
			}
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// truncate cuts s to at most n bytes (on a rune boundary), saying how much
// was cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	suffix := fmt.Sprintf("…[truncated from %d bytes]", len(s))
	cut := max(n-len(suffix), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + suffix
}
