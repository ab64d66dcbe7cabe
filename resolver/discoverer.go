// Package resolver finds .local datastores with mDNS on the node's
// internal bridges and connects to them from the right bridge. It offers a
// Discoverer (name to address), a Dialer (connections with the bridge's
// source address and device) and New, a containerd remotes.Resolver that
// pulls from .local registries through them.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sync/singleflight"

	"github.com/localds/localds/internal/mdns"
)

// Defaults a containerd user on an edge node would expect: a live
// responder answers in milliseconds, so two seconds is a generous wait,
// and two minutes of caching spares almost every pull a question.
const (
	DefaultTimeout  = 2 * time.Second
	DefaultCacheTTL = 2 * time.Minute
	// DefaultConflictWindow: Avahi on a bridge answers a legacy query in
	// p50 0.9 ms, p99 3.7-4.1 ms (BenchmarkResolveLatency without the
	// window), so a claimant answering first is followed by the real
	// datastore well within 10 ms; a resolution then costs p50 ~12 ms.
	// Its p99 is ~14 ms on an idle machine; on a loaded one the wake-up
	// after any sleep adds up to 15 ms whatever the window's length.
	DefaultConflictWindow = 10 * time.Millisecond
)

// Options configure a Discoverer. The zero value asks on every up Linux
// bridge with the defaults above.
type Options struct {
	// Interfaces are glob patterns (path.Match) of interface names to ask
	// on; empty means every Linux bridge that is up and has IPv4.
	Interfaces []string
	// Timeout bounds one resolution when the caller's context has no
	// earlier deadline.
	Timeout time.Duration
	// CacheTTL is the longest an answer is reused (shorter when the
	// record's TTL is); negative disables the cache.
	CacheTTL time.Duration
	// ConflictWindow is how long a bridge is listened to after its first
	// valid answer for other addresses claiming the name; 0 means
	// DefaultConflictWindow, negative disables the check.
	ConflictWindow time.Duration
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
}

// Result is a resolved .local host.
type Result struct {
	Host      string        // canonical name, e.g. "ds.local."
	Addr      netip.Addr    // the datastore's IPv4 address
	Interface string        // the bridge it answered on
	Source    netip.Addr    // the bridge's address localds dials from
	Service   string        // "A", or the DNS-SD type that named it, e.g. "_workstation._tcp"
	Port      uint16        // the service's SRV port; 0 for an A answer
	TTL       time.Duration // the record's TTL as answered; the cache keeps it min(TTL, CacheTTL)
	Elapsed   time.Duration // time the resolution took: to the first valid answer and the conflict window
	Cached    bool          // served from the cache without asking
}

// Discoverer resolves .local names on internal bridges. It is safe for
// concurrent use; concurrent resolutions of one name share one query.
type Discoverer struct {
	opts      Options
	cache     *cache
	flight    singleflight.Group
	conflicts atomic.Uint64
	watchers  watchers
	recent    recentLog
}

// NewDiscoverer returns a Discoverer with opts, defaults filled in.
func NewDiscoverer(opts Options) *Discoverer {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.CacheTTL == 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ConflictWindow == 0 {
		opts.ConflictWindow = DefaultConflictWindow
	}
	return &Discoverer{opts: opts, cache: newCache(opts.CacheTTL, opts.Now)}
}

// Conflicts counts the resolutions refused because more than one address
// claimed a name on one bridge, for the daemon's metrics.
func (d *Discoverer) Conflicts() uint64 { return d.conflicts.Load() }

// Resolve returns the IPv4 address of host (a .local name, port ignored),
// from the cache or by asking on every selected bridge at once. The bridge
// that answers first is used, after listening there for ConflictWindow:
// when two addresses claim the name on one bridge it returns an error
// wrapping errdefs.ErrConflict that names every address and bridge. When
// nothing answers it returns an error wrapping errdefs.ErrNotFound that
// names the bridges asked.
func (d *Discoverer) Resolve(ctx context.Context, host string) (Result, error) {
	name, err := CanonicalHost(host)
	if err != nil {
		return Result{}, fmt.Errorf("resolve: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if r, ok := d.cache.get(name); ok {
		r.Cached = true
		r.Elapsed = 0
		return r, nil
	}
	ch := d.flight.DoChan(name, func() (any, error) {
		// Detached from the first caller's cancellation so that one
		// impatient caller does not fail the others sharing the query.
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.opts.Timeout)
		defer cancel()
		r, err := d.query(qctx, name)
		if err == nil {
			d.recent.add(r, d.opts.Now())
		}
		return r, err
	})
	select {
	case <-ctx.Done():
		return Result{}, fmt.Errorf("resolve %s: %w", name, ctx.Err())
	case res := <-ch:
		if res.Err != nil {
			return Result{}, res.Err
		}
		return res.Val.(Result), nil
	}
}

// Forget drops what the cache knows of host, so the next Resolve asks
// again. Callers use it when a connection to the cached address fails.
func (d *Discoverer) Forget(host string) {
	if name, err := CanonicalHost(host); err == nil {
		d.cache.forget(name, "")
	}
}

func (d *Discoverer) query(ctx context.Context, host string) (Result, error) {
	start := time.Now()
	bridges, err := ListBridges(d.opts.Interfaces)
	if err != nil {
		return Result{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(bridges) == 0 {
		return Result{}, fmt.Errorf("resolve %s: %w: no interface to ask on: %s", host, errdefs.ErrNotFound, d.describeSelection())
	}
	heard, failures := d.askAll(ctx, host, bridges)
	if len(heard) == 0 {
		return Result{}, fmt.Errorf("resolve %s: %w: no valid mDNS answer within %s on %s",
			host, errdefs.ErrNotFound, time.Since(start).Round(time.Millisecond), strings.Join(failures, "; "))
	}
	if err := d.checkConflicts(ctx, host, heard); err != nil {
		return Result{}, err
	}
	first := heard[0]
	a := first.obs.Answers[0]
	res := Result{
		Host:      host,
		Addr:      a.Addr,
		Interface: first.br.Name,
		Source:    first.br.Addr,
		Service:   a.Service,
		Port:      a.Port,
		TTL:       a.TTL,
		Elapsed:   time.Since(start),
	}
	d.cache.put(res)
	d.watch(first.br, bridges)
	log.G(ctx).WithFields(log.Fields{
		"host": host, "address": res.Addr, "interface": res.Interface,
		"service": res.Service, "ttl": res.TTL, "elapsed": res.Elapsed,
	}).Debug("resolved .local host")
	return res, nil
}

// heardOn is what one bridge heard for a host.
type heardOn struct {
	br  Bridge
	obs mdns.Observation
}

// askAll asks on every bridge at once and returns what the bridges that
// answered heard, in order of their first answer. It returns as soon as
// one bridge has answered and every bridge that answered before then has
// finished its conflict window; a bridge silent until then is not waited
// for (a datastore answers in about a millisecond).
func (d *Discoverer) askAll(ctx context.Context, host string, bridges []Bridge) (heard []heardOn, failures []string) {
	type reply struct {
		br  Bridge
		obs mdns.Observation
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	replies := make(chan reply, len(bridges))
	firsts := make(chan struct{}, len(bridges))
	for _, br := range bridges {
		go func() {
			link := mdns.Link{Name: br.Name, Index: br.Index, Addr: br.Addr, Subnet: br.Prefix, Own: ownAddrs(bridges, br)}
			opts := mdns.QueryOptions{Window: d.opts.ConflictWindow, OnFirst: func() { firsts <- struct{}{} }}
			obs, err := mdns.Query(ctx, link, host, opts)
			replies <- reply{br: br, obs: obs, err: err}
		}()
	}
	started, finished := 0, 0 // bridges past their first answer; of those, done
	for range bridges {
		var r reply
		for got := false; !got; {
			select {
			case <-firsts:
				started++
			case r = <-replies:
				got = true
			}
		}
		// A bridge's first is sent before its reply: count every first
		// already in, so that the one of r is never counted after r.
		for drained := false; !drained; {
			select {
			case <-firsts:
				started++
			default:
				drained = true
			}
		}
		if len(r.obs.Answers) == 0 {
			reason := "no answer"
			if r.err != nil && !errors.Is(r.err, context.DeadlineExceeded) && !errors.Is(r.err, context.Canceled) {
				reason = r.err.Error()
			}
			failures = append(failures, fmt.Sprintf("%s: %s", r.br, reason))
			continue
		}
		heard = append(heard, heardOn{br: r.br, obs: r.obs})
		finished++
		if finished >= started {
			break
		}
	}
	return heard, failures
}

// checkConflicts fails when any bridge heard more than one address for
// host: two responders claim the name there, and nothing tells which is
// the datastore. One address per bridge on several bridges is a datastore
// attached to each of them, not a conflict.
func (d *Discoverer) checkConflicts(ctx context.Context, host string, heard []heardOn) error {
	var claims []string
	for _, h := range heard {
		if len(h.obs.Answers) < 2 {
			continue
		}
		addrs := make([]string, 0, len(h.obs.Answers))
		for _, a := range h.obs.Answers {
			addrs = append(addrs, a.Addr.String())
		}
		claims = append(claims, fmt.Sprintf("%s on %s", strings.Join(addrs, " and "), h.br))
		d.cache.forget(host, h.br.Name)
	}
	if len(claims) == 0 {
		return nil
	}
	d.conflicts.Add(1)
	err := fmt.Errorf("resolve %s: %w: more than one address claims the name: %s; refusing to choose "+
		"(another container on that bridge may be posing as the datastore)", host, errdefs.ErrConflict, strings.Join(claims, "; "))
	log.G(ctx).WithError(err).Warn("mDNS name conflict")
	return err
}

// ownAddrs lists the node's other addresses on br's interface.
func ownAddrs(bridges []Bridge, br Bridge) []netip.Addr {
	var own []netip.Addr
	for _, b := range bridges {
		if b.Name == br.Name && b.Addr != br.Addr {
			own = append(own, b.Addr)
		}
	}
	return own
}

func (d *Discoverer) describeSelection() string {
	if len(d.opts.Interfaces) == 0 {
		return "no Linux bridge is up with an IPv4 address (choose interfaces with --interface)"
	}
	return fmt.Sprintf("no up interface with an IPv4 address matches %q", d.opts.Interfaces)
}
