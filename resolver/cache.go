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

// cache keeps resolved addresses for min(record TTL, its own lifetime):
// legacy-unicast answers carry TTLs of at most 10 s, so a datastore found
// through Avahi is asked again every 10 s, one round trip. Staleness
// within that is handled by Forget on a failed connection, and by the
// bridge's watcher, which evicts on a goodbye or another address's claim.
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
	ttl := c.ttl
	if r.TTL > 0 {
		ttl = min(ttl, r.TTL)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[cacheKey{iface: r.Interface, host: r.Host}] = cacheEntry{result: r, expires: c.now().Add(ttl)}
}

// lookup returns the unexpired entry for host on iface.
func (c *cache) lookup(host, iface string) (Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[cacheKey{iface: iface, host: host}]
	if !ok || !c.now().Before(e.expires) {
		return Result{}, false
	}
	return e.result, true
}

// holds reports whether any unexpired entry is on iface.
func (c *cache) holds(iface string) bool {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if k.iface == iface && now.Before(e.expires) {
			return true
		}
	}
	return false
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
