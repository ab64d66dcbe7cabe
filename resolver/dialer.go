package resolver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/containerd/log"

	"github.com/localds/localds/internal/mdns"
)

// DefaultDialTimeout bounds one TCP connect to a datastore. On a bridge a
// live peer answers within a millisecond; a peer that moved away answers
// never, and every second waited is a second the pull stalls before
// re-resolving.
const DefaultDialTimeout = 3 * time.Second

// Dialer connects to .local hosts through the bridge they were found on,
// from that bridge's address and bound to its device; other hosts are
// dialed normally. Its DialContext fits http.Transport, so an HTTPS
// client still verifies the certificate against the .local name: only the
// TCP destination changes, never the URL host.
type Dialer struct {
	discoverer *Discoverer
	timeout    time.Duration
	fallback   net.Dialer
}

// NewDialer returns a Dialer resolving through d.
func NewDialer(d *Discoverer) *Dialer {
	return &Dialer{
		discoverer: d,
		timeout:    DefaultDialTimeout,
		fallback:   net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
	}
}

// DialContext dials address ("host:port"). For a .local host a failed
// connect means the cached address may be stale (the datastore restarted
// elsewhere): the dialer forgets it, resolves again at once and, if the
// answer is a new address, dials that, so an address change costs one
// round of mDNS, not a pull.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil || !IsLocal(host) {
		return d.fallback.DialContext(ctx, network, address)
	}
	if network != "tcp" && network != "tcp4" {
		return nil, fmt.Errorf("dial %s %s: .local hosts are reached over tcp4 only", network, address)
	}
	res, err := d.discoverer.Resolve(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	conn, err := d.dialVia(ctx, res, port)
	if err == nil {
		return conn, nil
	}
	// The cached address may be stale: ask again at once. Only a new
	// address is worth a second dial; the same one would fail the same way.
	d.discoverer.Forget(host)
	res2, rerr := d.discoverer.Resolve(ctx, host)
	if rerr != nil {
		return nil, fmt.Errorf("dial %s at %s: %w; resolving again: %w", address, res.Addr, err, rerr)
	}
	if res2.Addr == res.Addr && res2.Interface == res.Interface {
		return nil, fmt.Errorf("dial %s at %s: %w", address, res.Addr, err)
	}
	log.G(ctx).WithError(err).WithFields(log.Fields{"host": host, "old": res.Addr, "new": res2.Addr, "interface": res2.Interface}).
		Info(".local host moved; dialing its new address")
	conn, err2 := d.dialVia(ctx, res2, port)
	if err2 != nil {
		d.discoverer.Forget(host)
		return nil, fmt.Errorf("dial %s at %s: %w", address, res2.Addr, err2)
	}
	return conn, nil
}

// dialVia connects to res.Addr:port from the bridge it was found on.
func (d *Dialer) dialVia(ctx context.Context, res Result, port string) (net.Conn, error) {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", port, err)
	}
	nd := net.Dialer{
		Timeout:   d.timeout,
		KeepAlive: 30 * time.Second,
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(res.Source, 0)),
		Control:   mdns.BindToDevice(res.Interface),
	}
	conn, err := nd.DialContext(ctx, "tcp4", netip.AddrPortFrom(res.Addr, uint16(p)).String())
	if err != nil {
		return nil, fmt.Errorf("connect via %s from %s: %w", res.Interface, res.Source, err)
	}
	return conn, nil
}
