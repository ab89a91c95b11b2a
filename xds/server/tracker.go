package server

import (
	"context"
	"slices"
	"sync"
	"time"

	envoy_config_core_v3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy_service_discovery_v3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

// tracker follows every SotW ADS stream: what was sent under which nonce, what
// each node ACKed or NACKed, and whether it subscribes by wildcard. It is how
// rollouts wait for ACKs and how a NACKed version is held back.
type tracker struct {
	s       *Server
	mu      sync.Mutex
	streams map[int64]*streamState
	nacked  map[[2]string]bool // (node, version) already recorded
	nodes_  map[string]*nodeState
	changed chan struct{}
}

type streamState struct {
	node  string
	key   string
	types map[string]*typeState
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
}

func newTracker(s *Server) *tracker {
	return &tracker{s: s, streams: map[int64]*streamState{}, nacked: map[[2]string]bool{}, nodes_: map[string]*nodeState{}, changed: make(chan struct{})}
}

func (t *tracker) notify() {
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *tracker) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, _ string) error {
			t.mu.Lock()
			t.streams[id] = &streamState{types: map[string]*typeState{}}
			t.mu.Unlock()
			return nil
		},
		StreamClosedFunc: func(id int64, _ *envoy_config_core_v3.Node) {
			t.mu.Lock()
			delete(t.streams, id)
			t.notify()
			t.mu.Unlock()
		},
		StreamRequestFunc:  t.onRequest,
		StreamResponseFunc: t.onResponse,
	}
}

func (t *tracker) node(id string, n *envoy_config_core_v3.Node) *nodeState {
	ns := t.nodes_[id]
	if ns == nil {
		ns = &nodeState{group: t.s.groupOf(id), flavour: flavourOf(n).String(), acked: map[string]string{}}
		t.nodes_[id] = ns
	}
	return ns
}

func (t *tracker) onRequest(id int64, req *envoy_service_discovery_v3.DiscoveryRequest) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		st = &streamState{types: map[string]*typeState{}}
		t.streams[id] = st
	}
	nodeID := req.GetNode().GetId()
	st.node = nodeID
	st.key = nodeHash{t.s}.ID(req.GetNode())
	ns := t.node(nodeID, req.GetNode())
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
		key := [2]string{nodeID, v}
		if !t.nacked[key] {
			t.nacked[key] = true
			detail := req.GetErrorDetail().GetMessage()
			ns.nacks = append(ns.nacks, Nack{Version: v, TypeURL: req.GetTypeUrl(), Detail: detail, At: t.s.now()})
			if len(ns.nacks) > 20 {
				ns.nacks = ns.nacks[len(ns.nacks)-20:]
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
	if ns := t.nodes_[st.node]; ns != nil {
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
	streams := map[string]int{}
	for _, st := range t.streams {
		streams[st.node]++
	}
	out := make([]NodeStatus, 0, len(t.nodes_))
	for id, ns := range t.nodes_ {
		n := NodeStatus{ID: id, Group: ns.group, Flavour: ns.flavour, Streams: streams[id], Nacks: slices.Clone(ns.nacks)}
		if len(ns.acked) > 0 {
			n.Acked = map[string]string{}
			for k, v := range ns.acked {
				n.Acked[k] = v
			}
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}
