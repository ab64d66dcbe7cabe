package mdns

import (
	"crypto/rand"
	"encoding/binary"

	"context"
	"errors"
	"fmt"
	"github.com/miekg/dns"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

const (
	// maxRepliesPerSecond bounds what a query flood makes one interface
	// send; maxRepliesPerSource bounds what one querier's address gets,
	// so one flooding neighbour cannot use up the others' answers.
	maxRepliesPerSecond = 2000
	maxRepliesPerSource = 20
	// maxSources bounds the per-source table of one second.
	maxSources = 4096
	// maxReadErrors consecutive read errors close the socket; the
	// supervisor reopens it on its next poll.
	maxReadErrors = 50
)

// linkZone is what one interface answers with: the zone, and the subnets
// its unicast replies are limited to.
type linkZone struct {
	zone    Zone
	subnets []netip.Prefix
}

// ifaceResponder answers mDNS on one interface from its own socket, bound
// to the interface (SO_BINDTODEVICE) so that it hears only that link.
type ifaceResponder struct {
	name    string
	index   int
	host    string // the name answered for, "name.local."
	conn    *ipv4.PacketConn
	zone    atomic.Pointer[linkZone]
	done    chan struct{}
	limit   rateLimit
	sources sourceLimit

	// owned is set once probing found the name free on this link; until
	// then nothing is answered and packets go to probeEvents.
	owned       atomic.Bool
	probeEvents chan probeEvent
	probeCancel context.CancelFunc // supervisor goroutine only
}

// probeEvent is a packet that matters to the probe in progress.
type probeEvent struct {
	verdict verdict
	from    netip.Addr
	what    string
}

// listenIface opens the mDNS socket of ifi: UDP port 5353 on the wildcard
// address, SO_REUSEADDR/SO_REUSEPORT so an Avahi on the same host can
// share the port, bound to the device, member of 224.0.0.251 on that
// interface only, and with IP_MULTICAST_ALL off so that memberships of
// other sockets do not leak other links' queries in.
func listenIface(ctx context.Context, ifi *net.Interface) (*ipv4.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			s := int(fd)
			if serr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				serr = fmt.Errorf("SO_REUSEADDR: %w", serr)
				return
			}
			if serr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				serr = fmt.Errorf("SO_REUSEPORT: %w", serr)
				return
			}
			if serr = unix.BindToDevice(s, ifi.Name); serr != nil {
				serr = fmt.Errorf("SO_BINDTODEVICE %s: %w", ifi.Name, serr)
				return
			}
			if serr = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0); serr != nil {
				serr = fmt.Errorf("IP_MULTICAST_ALL: %w", serr)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", Port))
	if err != nil {
		return nil, fmt.Errorf("listen on udp port %d for %s: %w", Port, ifi.Name, err)
	}
	p := ipv4.NewPacketConn(pc)
	setup := []struct {
		what string
		fn   func() error
	}{
		{"join 224.0.0.251", func() error { return p.JoinGroup(ifi, &net.UDPAddr{IP: Group.Addr().AsSlice()}) }},
		{"control messages", func() error { return p.SetControlMessage(ipv4.FlagInterface|ipv4.FlagDst, true) }},
		{"multicast interface", func() error { return p.SetMulticastInterface(ifi) }},
		{"multicast TTL", func() error { return p.SetMulticastTTL(255) }},
		{"unicast TTL", func() error { return p.SetTTL(255) }}, // RFC 6762 §11
	}
	for _, s := range setup {
		if err := s.fn(); err != nil {
			p.Close()
			return nil, fmt.Errorf("mdns socket on %s: %s: %w", ifi.Name, s.what, err)
		}
	}
	return p, nil
}

// serve reads queries until the socket is closed.
func (ir *ifaceResponder) serve(ctx context.Context) {
	defer close(ir.done)
	logger := log.G(ctx).WithField("interface", ir.name)
	buf := make([]byte, MaxPacket+1)
	errs := 0
	for {
		n, cm, src, err := ir.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if errs++; errs >= maxReadErrors {
				logger.WithError(err).Warn("mdns: too many read errors, closing socket")
				ir.conn.Close()
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		errs = 0
		if cm != nil && cm.IfIndex != 0 && cm.IfIndex != ir.index {
			continue // not from our link
		}
		from, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		ap := unmap(from.AddrPort())
		lz := ir.zone.Load()
		if lz == nil {
			continue
		}
		ours := hostRecords(ir.host, lz.subnets)
		v, what := judgeProbe(buf[:n], ir.host, ours)
		if !ir.owned.Load() {
			if v != noConflict {
				select {
				case ir.probeEvents <- probeEvent{verdict: v, from: ap.Addr(), what: what}:
				default: // the prober has enough to decide
				}
			}
			continue // nothing is answered before the name is ours
		}
		if v == conflict {
			// A non-probing host claims our name: defend it by answering
			// at once (below, as for any query) and saying so; resolvers
			// that hear both refuse the name (a conflict), never us alone.
			logger.WithFields(log.Fields{"from": ap.String(), "records": what, "host": ir.host}).
				Warn("mdns: another host claims our name; announcing ours again")
			if ir.sources.allow(ap.Addr(), time.Now()) {
				if err := ir.sendAnnouncement(lz, HostTTL); err != nil {
					logger.WithError(err).Debug("mdns: defence not sent")
				}
			}
			continue
		}
		replies, err := Respond(lz.zone, lz.subnets, buf[:n], ap)
		if err != nil {
			logger.WithError(err).WithField("from", ap.String()).Debug("mdns: query ignored")
			continue
		}
		for _, rep := range replies {
			if !ir.sources.allow(ap.Addr(), time.Now()) {
				logger.WithField("from", ap.String()).Debug("mdns: per-source reply limit reached")
				break
			}
			if err := ir.send(rep); err != nil {
				logger.WithError(err).WithField("to", rep.To.String()).Debug("mdns: reply not sent")
			}
		}
	}
}

// send packs and sends one reply, within the rate limit.
func (ir *ifaceResponder) send(rep Reply) error {
	if !ir.limit.allow(time.Now()) {
		return errors.New("rate limit reached")
	}
	b, err := rep.Msg.Pack()
	if err != nil {
		return fmt.Errorf("pack reply: %w", err)
	}
	dst := net.UDPAddrFromAddrPort(rep.To)
	var cm *ipv4.ControlMessage
	if rep.To.Addr().IsMulticast() {
		cm = &ipv4.ControlMessage{IfIndex: ir.index}
	}
	if _, err := ir.conn.WriteTo(b, cm, dst); err != nil {
		return fmt.Errorf("send to %s: %w", rep.To, err)
	}
	return nil
}

// sendAnnouncement multicasts the zone's records, or its goodbye with ttl 0.
func (ir *ifaceResponder) sendAnnouncement(lz *linkZone, ttl uint32) error {
	if lz == nil {
		return nil
	}
	m := lz.zone.Announcement(ttl)
	if m == nil {
		return nil
	}
	return ir.send(Reply{Msg: m, To: Group})
}

// close says goodbye on the link and stops the reader.
func (ir *ifaceResponder) close(ctx context.Context) {
	if ir.probeCancel != nil {
		ir.probeCancel()
	}
	if ir.owned.Load() { // never a goodbye for a name we did not hold
		if err := ir.sendAnnouncement(ir.zone.Load(), 0); err != nil {
			log.G(ctx).WithError(err).WithField("interface", ir.name).Debug("mdns: goodbye not sent")
		}
	}
	ir.conn.Close()
	select {
	case <-ir.done:
	case <-time.After(2 * time.Second):
		log.G(ctx).WithField("interface", ir.name).Warn("mdns: reader did not stop")
	}
}

// sourceLimit allows each querier address at most maxRepliesPerSource
// replies per one-second window; the table is cleared every window and
// holds at most maxSources addresses (more are refused until the next).
type sourceLimit struct {
	mu     sync.Mutex
	window time.Time
	counts map[netip.Addr]int
}

func (l *sourceLimit) allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.counts == nil || now.Sub(l.window) >= time.Second {
		l.window, l.counts = now, map[netip.Addr]int{}
	}
	n, ok := l.counts[src]
	if !ok && len(l.counts) >= maxSources {
		return false
	}
	l.counts[src] = n + 1
	return n < maxRepliesPerSource
}

// rateLimit allows at most maxRepliesPerSecond sends per one-second window.
type rateLimit struct {
	mu     sync.Mutex
	window time.Time
	count  int
}

func (l *rateLimit) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= time.Second {
		l.window, l.count = now, 0
	}
	l.count++
	return l.count <= maxRepliesPerSecond
}

// ifaceAddrs returns the IPv4 addresses of ifi with their prefix lengths.
func ifaceAddrs(ifi *net.Interface) ([]netip.Prefix, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", ifi.Name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP.To4())
		if !ok || ip.IsLoopback() || ip.IsUnspecified() {
			continue
		}
		ones, bits := ipn.Mask.Size()
		if bits != 32 {
			continue
		}
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// probeAndAnnounce probes for the name on the link with lz's addresses
// (RFC 6762 §8.1, §8.2), then answers there and announces twice. It
// returns a *ConflictError when another host holds the name, nil when
// done or cancelled (the addresses changed: a new probe starts).
func (ir *ifaceResponder) probeAndAnnounce(ctx context.Context, lz *linkZone) error {
	logger := log.G(ctx).WithFields(log.Fields{"interface": ir.name, "host": ir.host})
	ours := hostRecords(ir.host, lz.subnets)
	probe := probeMsg(ir.host, ours)
	if !sleepCtx(ctx, randDuration(probeJitter)) {
		return nil
	}
	for round := 0; ; round++ {
		if round == maxProbeRounds {
			return fmt.Errorf("mdns: gave up probing for %s on %s after %d simultaneous probes lost", ir.host, ir.name, round)
		}
		lost := false
		for i := 0; i < probeCount && !lost; i++ {
			if err := ir.sendRaw(probe); err != nil {
				logger.WithError(err).Debug("mdns: probe not sent")
			}
			timer := time.NewTimer(probeInterval)
		wait:
			for {
				select {
				case <-ctx.Done():
					timer.Stop()
					return nil
				case ev := <-ir.probeEvents:
					if ev.verdict == conflict {
						timer.Stop()
						return &ConflictError{Host: ir.host, Interface: ir.name, From: ev.from, Records: ev.what}
					}
					logger.WithFields(log.Fields{"from": ev.from, "records": ev.what}).
						Info("mdns: lost a simultaneous probe; probing again in a second")
					lost = true
					timer.Stop()
					break wait
				case <-timer.C:
					break wait
				}
			}
		}
		if !lost {
			break
		}
		if !sleepCtx(ctx, probeDefer) {
			return nil
		}
	}
	ir.owned.Store(true)
	log.G(ctx).WithFields(log.Fields{"interface": ir.name, "host": ir.host, "addresses": fmt.Sprint(lz.subnets)}).
		Info("mdns: answering")
	for i := 0; i < 2; i++ {
		if i > 0 && !sleepCtx(ctx, time.Second) {
			return nil
		}
		if err := ir.sendAnnouncement(lz, HostTTL); err != nil {
			logger.WithError(err).Debug("mdns: announcement not sent")
		}
	}
	return nil
}

// sendRaw multicasts m on the link, outside the reply limits (our own
// probes, a handful per change).
func (ir *ifaceResponder) sendRaw(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	_, err = ir.conn.WriteTo(b, &ipv4.ControlMessage{IfIndex: ir.index}, net.UDPAddrFromAddrPort(Group))
	return err
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func randDuration(max time.Duration) time.Duration {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return max / 2
	}
	return time.Duration(binary.BigEndian.Uint64(b[:]) % uint64(max))
}
