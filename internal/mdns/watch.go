package mdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// maxWatchPackets bounds what one Watch reads, whatever a hostile
// neighbour sends; the caller starts a new one when it still needs it.
const maxWatchPackets = 1 << 20

// Claim is one A record multicast on a link: a responder says host is at
// Addr (or, with TTL 0, that it no longer is: a goodbye, RFC 6762 §10.1).
type Claim struct {
	Host string // canonical, "name.local."
	Addr netip.Addr
	TTL  time.Duration
}

// Watch listens to the multicast responses on link until ctx ends and
// calls fn with each A record in them whose address is on the link and
// not the node's own. A querier sees only the unicast answers to its own
// questions; announcements and goodbyes go to the group, so a cache that
// wants to honour them listens here.
func Watch(ctx context.Context, link Link, fn func(Claim)) error {
	conn, err := listenIface(ctx, &net.Interface{Index: link.Index, Name: link.Name})
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, MaxPacket+1)
	for n := 0; n < maxWatchPackets; n++ {
		size, cm, src, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return ctx.Err()
			}
			return fmt.Errorf("watch %s: %w", link.Name, err)
		}
		if cm != nil && cm.IfIndex != 0 && cm.IfIndex != link.Index {
			continue
		}
		from, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		for _, c := range parseClaims(buf[:size], unmap(from.AddrPort()), link) {
			fn(c)
		}
	}
	return fmt.Errorf("watch %s: stopped after %d packets", link.Name, maxWatchPackets)
}

// parseClaims returns the A records of one multicast response from an
// on-link mDNS responder. Everything in pkt is untrusted.
func parseClaims(pkt []byte, from netip.AddrPort, link Link) []Claim {
	if len(pkt) > MaxPacket || from.Port() != Port || !link.Subnet.Contains(from.Addr()) {
		return nil
	}
	var m dns.Msg
	if m.Unpack(pkt) != nil || !m.Response || m.Opcode != dns.OpcodeQuery || m.Rcode != dns.RcodeSuccess {
		return nil
	}
	var out []Claim
	for _, rr := range append(append([]dns.RR{}, m.Answer...), m.Extra...) {
		a, ok := rr.(*dns.A)
		if !ok || a.Hdr.Class&^CacheFlush != dns.ClassINET || !strings.HasSuffix(strings.ToLower(a.Hdr.Name), LocalSuffix+".") {
			continue
		}
		addr, ok := netip.AddrFromSlice(a.A.To4())
		if !ok || !usableIn(addr, link.Subnet) || link.isOwn(addr) {
			continue
		}
		out = append(out, Claim{Host: strings.ToLower(a.Hdr.Name), Addr: addr, TTL: time.Duration(a.Hdr.Ttl) * time.Second})
	}
	return out
}
