package resolver

import (
	"sync"
	"time"
)

// cacheKey is (interface, host): the same name may be a different
// container on another bridge, and forgetting must not cross bridges.
type cacheKey struct {
	iface string
	host  string
}

type cacheEntry struct {
	result  Result
	expires time.Time
}

// cache keeps resolved addresses for its own lifetime rather than the
// record TTL: legacy-unicast answers carry TTLs of at most 10 s, and
// asking again every 10 s would cost a round trip for nothing. Staleness
// is handled by Forget on a failed connection instead.
type cache struct {
	mu      sync.Mutex
	ttl     time.Duration
	now     func() time.Time
	entries map[cacheKey]cacheEntry
}

func newCache(ttl time.Duration, now func() time.Time) *cache {
	return &cache{ttl: ttl, now: now, entries: map[cacheKey]cacheEntry{}}
}

// get returns the freshest unexpired entry for host on any bridge. The
// map is tiny (a few bridges, a few hosts), so a scan is cheaper than a
// second index.
func (c *cache) get(host string) (Result, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var best cacheEntry
	found := false
	for k, e := range c.entries {
		if k.host != host {
			continue
		}
		if !now.Before(e.expires) {
			delete(c.entries, k)
			continue
		}
		if !found || e.expires.After(best.expires) {
			best, found = e, true
		}
	}
	return best.result, found
}

func (c *cache) put(r Result) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[cacheKey{iface: r.Interface, host: r.Host}] = cacheEntry{result: r, expires: c.now().Add(c.ttl)}
}

// forget drops host on every bridge, or on one when iface is set.
func (c *cache) forget(host, iface string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.entries {
		if k.host == host && (iface == "" || k.iface == iface) {
			delete(c.entries, k)
		}
	}
}
