package tokens

import (
	"sync"
	"time"
)

// sweepEvery is how often, at most, a full cache scans for expired entries before it evicts a
// live one: the scan is linear, so a cache full of live entries must not pay it on every insert.
const sweepEvery = time.Second

// cache is a bounded map from a SHA-256 digest to a value with a deadline. A full cache first
// drops expired entries, then arbitrary ones (Go's map iteration order is randomised). It is
// safe for concurrent use; reads take a shared lock only.
type cache[V any] struct {
	mu        sync.RWMutex
	size      int
	entries   map[[32]byte]cacheEntry[V]
	lastSweep time.Time
}

type cacheEntry[V any] struct {
	v     V
	until time.Time
}

func newCache[V any](size int) *cache[V] {
	return &cache[V]{size: size, entries: make(map[[32]byte]cacheEntry[V], min(size, 1024))}
}

// get returns the value for k while now is before its deadline.
func (c *cache[V]) get(k [32]byte, now time.Time) (V, bool) {
	c.mu.RLock()
	e, ok := c.entries[k]
	c.mu.RUnlock()
	if !ok || !now.Before(e.until) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// put stores v for k until the deadline; a deadline not after now stores nothing.
func (c *cache[V]) put(k [32]byte, v V, until, now time.Time) {
	if !now.Before(until) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[k]; !ok && len(c.entries) >= c.size {
		c.evict(now)
	}
	c.entries[k] = cacheEntry[V]{v, until}
}

// evict makes room for one entry. Callers hold c.mu.
func (c *cache[V]) evict(now time.Time) {
	if d := now.Sub(c.lastSweep); d >= sweepEvery || d < 0 {
		c.lastSweep = now
		for k, e := range c.entries {
			if !now.Before(e.until) {
				delete(c.entries, k)
			}
		}
	}
	for k := range c.entries {
		if len(c.entries) < c.size {
			break
		}
		delete(c.entries, k)
	}
}

func (c *cache[V]) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
