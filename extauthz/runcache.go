package extauthz

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/aisecops/aisecops-envoy/riskstore"
)

// runCache keeps, per run, the state this replica last read or committed, so
// the next Check of the run decides without reading the store: one round trip
// per allowed Check (the versioned commit), none per deny decided on a state
// the store then confirms. The commit refuses a decision taken on a stale
// version and returns the current state, so a stale entry costs a re-decision,
// never a wrong commit. Entries live briefly (idle) and the cache is bounded,
// far under the run TTL, so an expired-and-restarted run is never mistaken for
// the old one.
type runCache struct {
	seed   maphash.Seed
	shards [16]cacheShard
	idle   time.Duration
	max    int // per shard
}

type cacheShard struct {
	mu   sync.Mutex
	runs map[riskstore.RunRef]cachedRun
}

type cachedRun struct {
	state riskstore.State
	at    time.Time
}

func newRunCache(entries int, idle time.Duration) *runCache {
	c := &runCache{seed: maphash.MakeSeed(), idle: idle, max: max(entries/16, 1)}
	for i := range c.shards {
		c.shards[i].runs = make(map[riskstore.RunRef]cachedRun)
	}
	return c
}

func (c *runCache) shard(run riskstore.RunRef) *cacheShard {
	return &c.shards[maphash.Comparable(c.seed, run)%uint64(len(c.shards))]
}

// get returns a copy of the cached state of run, if fresh.
func (c *runCache) get(run riskstore.RunRef, now time.Time) (riskstore.State, bool) {
	if c == nil {
		return riskstore.State{}, false
	}
	sh := c.shard(run)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.runs[run]
	if !ok || now.Sub(e.at) > c.idle || e.at.After(now.Add(c.idle)) {
		delete(sh.runs, run)
		return riskstore.State{}, false
	}
	return e.state, true
}

// put records st as the latest known state of run. st.Facts is kept as it
// is: states are values whose slices nobody modifies.
func (c *runCache) put(run riskstore.RunRef, st riskstore.State, now time.Time) {
	if c == nil {
		return
	}
	st.Prior = nil
	sh := c.shard(run)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.runs[run]; !ok && len(sh.runs) >= c.max {
		for k, e := range sh.runs { // evict expired entries, else an arbitrary one
			if now.Sub(e.at) > c.idle || len(sh.runs) >= c.max {
				delete(sh.runs, k)
			}
			if len(sh.runs) < c.max {
				break
			}
		}
	}
	sh.runs[run] = cachedRun{state: st, at: now}
}

// drop forgets run.
func (c *runCache) drop(run riskstore.RunRef) {
	if c == nil {
		return
	}
	sh := c.shard(run)
	sh.mu.Lock()
	delete(sh.runs, run)
	sh.mu.Unlock()
}
