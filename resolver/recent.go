package resolver

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// maxRecent bounds the resolutions remembered for operators: a node has
// a few datastores on a few bridges, and the log must not grow with the
// names a neighbour makes us ask for.
const maxRecent = 64

// Resolution is a host the Discoverer found on the network (not from its
// cache), for an operator's view of which datastores were used lately.
type Resolution struct {
	Host      string     `json:"host"`
	Addr      netip.Addr `json:"addr"`
	Interface string     `json:"interface"`
	Service   string     `json:"service"`
	Last      time.Time  `json:"last"`  // when it last answered
	Count     int        `json:"count"` // network resolutions since the Discoverer started
}

// recentLog keeps the latest resolution per (bridge, host), at most
// maxRecent of them, evicting the oldest.
type recentLog struct {
	mu      sync.Mutex
	entries map[cacheKey]*Resolution
}

func (l *recentLog) add(r Result, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.entries == nil {
		l.entries = map[cacheKey]*Resolution{}
	}
	k := cacheKey{iface: r.Interface, host: r.Host}
	e, ok := l.entries[k]
	if !ok {
		if len(l.entries) >= maxRecent {
			l.evictOldest()
		}
		e = &Resolution{Host: r.Host, Interface: r.Interface}
		l.entries[k] = e
	}
	e.Addr, e.Service, e.Last = r.Addr, r.Service, at
	e.Count++
}

func (l *recentLog) evictOldest() {
	var oldest cacheKey
	var at time.Time
	for k, e := range l.entries {
		if at.IsZero() || e.Last.Before(at) {
			oldest, at = k, e.Last
		}
	}
	delete(l.entries, oldest)
}

// list is the log, most recent first.
func (l *recentLog) list() []Resolution {
	l.mu.Lock()
	out := make([]Resolution, 0, len(l.entries))
	for _, e := range l.entries {
		out = append(out, *e)
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b Resolution) int { return b.Last.Compare(a.Last) })
	return out
}

// Recent lists the hosts this Discoverer resolved on the network (at most
// 64, one per bridge and host, most recent first): what `localds status`
// shows as the datastores resolved lately.
func (d *Discoverer) Recent() []Resolution { return d.recent.list() }
