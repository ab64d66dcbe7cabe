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
	// CacheTTL is how long an answer is reused; negative disables the cache.
	CacheTTL time.Duration
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
	Elapsed   time.Duration // time to the first valid answer
	Cached    bool          // served from the cache without asking
}

// Discoverer resolves .local names on internal bridges. It is safe for
// concurrent use; concurrent resolutions of one name share one query.
type Discoverer struct {
	opts   Options
	cache  *cache
	flight singleflight.Group
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
	return &Discoverer{opts: opts, cache: newCache(opts.CacheTTL, opts.Now)}
}

// Resolve returns the IPv4 address of host (a .local name, port ignored),
// from the cache or by asking on every selected bridge at once; the first
// valid answer wins. When nothing answers it returns an error wrapping
// errdefs.ErrNotFound that names the bridges asked.
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
		return d.query(qctx, name)
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

	type reply struct {
		br  Bridge
		ans mdns.Answer
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	replies := make(chan reply, len(bridges))
	for _, br := range bridges {
		go func() {
			a, err := mdns.Query(ctx, mdns.Link{Name: br.Name, Index: br.Index, Addr: br.Addr, Subnet: br.Prefix}, host)
			replies <- reply{br: br, ans: a, err: err}
		}()
	}
	var failures []string
	for range bridges {
		r := <-replies
		if r.err != nil {
			reason := r.err.Error()
			if errors.Is(r.err, context.DeadlineExceeded) {
				reason = "no answer"
			}
			failures = append(failures, fmt.Sprintf("%s: %s", r.br, reason))
			continue
		}
		res := Result{
			Host:      host,
			Addr:      r.ans.Addr,
			Interface: r.br.Name,
			Source:    r.br.Addr,
			Service:   r.ans.Service,
			Port:      r.ans.Port,
			Elapsed:   time.Since(start),
		}
		d.cache.put(res)
		log.G(ctx).WithFields(log.Fields{
			"host": host, "address": res.Addr, "interface": res.Interface,
			"service": res.Service, "elapsed": res.Elapsed,
		}).Debug("resolved .local host")
		return res, nil
	}
	return Result{}, fmt.Errorf("resolve %s: %w: no valid mDNS answer within %s on %s",
		host, errdefs.ErrNotFound, time.Since(start).Round(time.Millisecond), strings.Join(failures, "; "))
}

func (d *Discoverer) describeSelection() string {
	if len(d.opts.Interfaces) == 0 {
		return "no Linux bridge is up with an IPv4 address (choose interfaces with --interface)"
	}
	return fmt.Sprintf("no up interface with an IPv4 address matches %q", d.opts.Interfaces)
}
