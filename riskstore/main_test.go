package riskstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/aisecops/aisecops-envoy/internal/redistest"
)

// One single node and one three-master cluster serve the whole package; tests
// isolate themselves with their own key prefix. Started on first use, so a run
// of Memory-only tests does not start any.
var shared struct {
	mu      sync.Mutex
	dir     string
	node    *redistest.Server
	cluster *redistest.Cluster
}

func TestMain(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	if shared.node != nil {
		shared.node.Kill()
	}
	if shared.cluster != nil {
		shared.cluster.Kill()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	shared.mu.Unlock()
	os.Exit(code)
}

func sharedDir(t testing.TB) string {
	if shared.dir == "" {
		d, err := os.MkdirTemp("", "riskstore-redis-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = d
	}
	return shared.dir
}

func sharedNode(t testing.TB) *redistest.Server {
	t.Helper()
	bin := redistest.Require(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.node == nil {
		dir, err := os.MkdirTemp(sharedDir(t), "node-")
		if err != nil {
			t.Fatal(err)
		}
		if shared.node, err = redistest.NewServer(bin, dir); err != nil {
			t.Fatal(err)
		}
	}
	return shared.node
}

func sharedCluster(t testing.TB) *redistest.Cluster {
	t.Helper()
	bin := redistest.Require(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster == nil {
		dir, err := os.MkdirTemp(sharedDir(t), "cluster-")
		if err != nil {
			t.Fatal(err)
		}
		if shared.cluster, err = redistest.NewCluster(bin, dir, 3); err != nil {
			t.Fatal(err)
		}
	}
	return shared.cluster
}

// uniquePrefix isolates one test's keys (runs and approvals) on a shared server.
func uniquePrefix(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}

// fakeClock is the store clock for approval expiry.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fullStore is everything both implementations offer.
type fullStore interface {
	Store
	Approvals
	Nonces
	Ping(context.Context) error
}

type storeKind struct {
	name string
	open func(t *testing.T, now func() time.Time) fullStore
}

func newRedisStore(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = uniquePrefix(t)
	}
	if opts.OpTimeout == 0 {
		// Generous: -race and two shared cores make loopback calls slow at times.
		opts.OpTimeout = time.Second
	}
	r, err := NewRedis(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// storeKinds are the implementations the conformance suite holds to the same answers.
func storeKinds() []storeKind {
	return []storeKind{
		{"memory", func(_ *testing.T, now func() time.Time) fullStore { return NewMemory(now) }},
		{"redis", func(t *testing.T, now func() time.Time) fullStore {
			return newRedisStore(t, RedisOptions{URL: "redis://" + sharedNode(t).Addr(), Now: now})
		}},
		{"cluster", func(t *testing.T, now func() time.Time) fullStore {
			return newRedisStore(t, RedisOptions{ClusterNodes: sharedCluster(t).Addrs(), Now: now})
		}},
	}
}
