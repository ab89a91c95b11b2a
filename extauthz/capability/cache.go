package capability

import (
	"crypto/sha256"
	"sync"
	"time"
	"unsafe"
)

// cacheEntry is a verified token: its claims and the time bounds that still have
// to be checked against each request's clock.
type cacheEntry struct {
	claims           *Claims
	expiresAt        time.Time // exp + leeway: invalid from this instant
	notBefore        time.Time // max(nbf, iat) - leeway
	constraintExpiry time.Time // constraints.expiry, zero if none
	gen              uint64    // key-source generation the signature was checked under
}

const cacheShards = 16

// tokenCache maps sha256(raw token) to a verified entry. It is sharded so that
// concurrent Checks rarely contend, and bounded: a full shard evicts one entry
// per insertion (see evictLocked). Expired entries are not swept; they are
// refused on lookup by the time check and are the first evicted.
//
// Keying by the hash of the whole token means an entry is found only by the exact
// bytes that were verified; an entry lives in one Verifier, so it is never valid
// under another configuration.
type tokenCache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.Mutex
	m  map[[32]byte]*cacheEntry
}

func newTokenCache(size int) *tokenCache {
	per := (size + cacheShards - 1) / cacheShards
	c := &tokenCache{perShard: per}
	for i := range c.shards {
		c.shards[i].m = make(map[[32]byte]*cacheEntry)
	}
	return c
}

// cacheKey hashes raw in place: converting a token of up to MaxTokenBytes to a
// []byte would copy it on every request, and sha256 neither keeps nor writes
// its input.
func cacheKey(raw string) [32]byte {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
}

// get returns the entry for key if it was verified under key generation gen.
func (c *tokenCache) get(key [32]byte, gen uint64) (*cacheEntry, bool) {
	s := &c.shards[key[0]%cacheShards]
	s.mu.Lock()
	e, ok := s.m[key]
	if ok && e.gen != gen {
		// Verified under keys that have since changed: the key may be gone.
		delete(s.m, key)
		ok = false
	}
	s.mu.Unlock()
	return e, ok
}

func (c *tokenCache) put(key [32]byte, e *cacheEntry) {
	s := &c.shards[key[0]%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; !ok && len(s.m) >= c.perShard {
		c.evictLocked(s)
	}
	s.m[key] = e
}

// evictLocked makes room for one entry: of a few entries sampled at random it
// drops the one that expires first, since that one has the least use left.
func (c *tokenCache) evictLocked(s *cacheShard) {
	const sample = 8
	var victim [32]byte
	var soonest time.Time
	n := 0
	for k, e := range s.m {
		if n == 0 || e.expiresAt.Before(soonest) {
			victim, soonest = k, e.expiresAt
		}
		if n++; n >= sample {
			break
		}
	}
	if n > 0 {
		delete(s.m, victim)
	}
}

// len is the number of entries, for tests.
func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
