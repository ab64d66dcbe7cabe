package resolver

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/localds/localds/internal/mdns"
)

// watchCheck is how often a watcher looks whether the cache still holds
// anything on its bridge; it stops when not.
const watchCheck = time.Second

// watchers are the Discoverer's listeners to multicast responses, one per
// bridge with cached answers: a goodbye (TTL 0) for a cached address
// evicts it, and a claim of the name by another address evicts it too,
// so the next Resolve asks again and sees the conflict if both still
// answer. They only ever evict: nothing heard here is believed as an
// address.
type watchers struct {
	mu      sync.Mutex
	running map[string]bool
}

// watch starts the watcher of br unless it runs or the cache is off.
func (d *Discoverer) watch(br Bridge, own []Bridge) {
	if d.opts.CacheTTL <= 0 {
		return
	}
	w := &d.watchers
	w.mu.Lock()
	if w.running == nil {
		w.running = map[string]bool{}
	}
	if w.running[br.Name] {
		w.mu.Unlock()
		return
	}
	w.running[br.Name] = true
	w.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	link := mdns.Link{Name: br.Name, Index: br.Index, Addr: br.Addr, Subnet: br.Prefix, Own: ownAddrs(own, br)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := mdns.Watch(ctx, link, func(c mdns.Claim) { d.heard(ctx, br.Name, c) })
		if err != nil && ctx.Err() == nil {
			log.G(ctx).WithError(err).WithField("interface", br.Name).Debug("mDNS watcher stopped; cached answers expire by TTL alone")
		}
	}()
	go func() {
		defer func() {
			cancel()
			<-done
			w.mu.Lock()
			delete(w.running, br.Name)
			w.mu.Unlock()
		}()
		t := time.NewTicker(watchCheck)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if !d.cache.holds(br.Name) {
					return
				}
			}
		}
	}()
}

// heard acts on one multicast claim on iface.
func (d *Discoverer) heard(ctx context.Context, iface string, c mdns.Claim) {
	res, ok := d.cache.lookup(c.Host, iface)
	if !ok {
		return
	}
	fields := log.Fields{"host": c.Host, "interface": iface, "cached": res.Addr, "claimed": c.Addr}
	switch {
	case c.TTL == 0 && c.Addr == res.Addr:
		d.cache.forget(c.Host, iface)
		log.G(ctx).WithFields(fields).Info("mDNS goodbye: forgot the cached address")
	case c.TTL > 0 && c.Addr != res.Addr:
		d.cache.forget(c.Host, iface)
		log.G(ctx).WithFields(fields).Warn("another address claims a cached .local name: forgot it; the next resolution checks for a conflict")
	}
}
