package mdns

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/net/ipv4"
)

// Retransmission of one-shot queries: the first resend comes quickly
// because a lost packet on a bridge is rare and costs the whole wait,
// then the interval doubles up to a ceiling (RFC 6762 §5.2 spirit).
const (
	firstRetransmit = 50 * time.Millisecond
	maxRetransmit   = 1 * time.Second
	// maxPackets bounds how many packets one query reads, whatever a
	// hostile network sends, so the loop ends even before the timeout.
	maxPackets = 4096
)

// Link is one interface and one of its IPv4 addresses to ask on. Queries
// leave from Addr, bound to the device, and answers are only believed if
// they lie inside Subnet and name none of the node's own addresses (Addr
// and Own): a neighbour must not make the node dial itself.
type Link struct {
	Name   string
	Index  int
	Addr   netip.Addr
	Subnet netip.Prefix
	Own    []netip.Addr // the interface's other addresses, refused like Addr
}

// QueryOptions tune one Query.
type QueryOptions struct {
	// Window is how long to keep listening after the first valid answer
	// for answers naming other addresses; 0 returns at the first answer.
	Window time.Duration
	// OnFirst, if set, is called once when the first valid answer arrives,
	// so a caller asking on several links knows this one will finish
	// within Window.
	OnFirst func()
}

// Observation is what one Query heard: every distinct address claimed for
// the host on the link, in order of arrival. More than one is a conflict
// for the caller to judge.
type Observation struct {
	Answers []Answer
}

// Query asks on one link until a valid answer for host (a canonical .local
// name, see CanonicalHost) arrives, then listens opts.Window longer for
// other answers; it fails when ctx ends before any answer. The socket is
// bound to the link's address and device, so it works without any route
// (the multicast interface is set explicitly) and answers can only arrive
// through that link.
func Query(ctx context.Context, link Link, host string, opts QueryOptions) (Observation, error) {
	var obs Observation
	conn, err := listenOn(ctx, link)
	if err != nil {
		return obs, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	ids, err := randomIDs()
	if err != nil {
		return obs, err
	}
	qs := questions(host, ids)
	packets := make([][]byte, len(qs))
	for i, q := range qs {
		if packets[i], err = q.pack(); err != nil {
			return obs, fmt.Errorf("build query: %w", err)
		}
	}
	dst := net.UDPAddrFromAddrPort(Group)
	send := func() error {
		var sent int
		var lastErr error
		for _, p := range packets {
			if _, err := conn.WriteToUDP(p, dst); err != nil {
				lastErr = err
				continue
			}
			sent++
		}
		if sent == 0 {
			return fmt.Errorf("send query on %s: %w", link.Name, lastErr)
		}
		return nil
	}
	if err := send(); err != nil {
		return obs, err
	}

	logger := log.G(ctx).WithField("interface", link.Name)
	buf := make([]byte, MaxPacket) // a jumbo frame; mDNS answers fit easily
	interval := firstRetransmit
	next := time.Now().Add(interval)
	var windowEnd time.Time // set at the first answer
	for n := 0; n < maxPackets; n++ {
		if ctx.Err() != nil {
			return obs.orErr(ctx.Err())
		}
		deadline := next
		if !windowEnd.IsZero() {
			deadline = windowEnd
		}
		conn.SetReadDeadline(deadline)
		size, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return obs.orErr(ctx.Err())
			}
			if !isTimeout(err) {
				return obs.orErr(fmt.Errorf("read on %s: %w", link.Name, err))
			}
			if !windowEnd.IsZero() {
				return obs, nil // the window is over
			}
			if err := send(); err != nil {
				return obs, err
			}
			interval = min(interval*2, maxRetransmit)
			next = time.Now().Add(interval)
			continue
		}
		a, err := parseAnswerOn(buf[:size], unmap(from), qs, host, link)
		if err != nil {
			logger.WithError(err).WithField("from", from).Debug("ignored mDNS packet")
			continue
		}
		obs.add(a)
		if windowEnd.IsZero() {
			if opts.Window <= 0 {
				return obs, nil
			}
			windowEnd = time.Now().Add(opts.Window)
			if opts.OnFirst != nil {
				opts.OnFirst()
			}
		}
	}
	return obs.orErr(fmt.Errorf("gave up on %s after %d packets without a valid answer", link.Name, maxPackets))
}

// add records a, once per address; the first answer for an address wins.
func (o *Observation) add(a Answer) {
	for _, seen := range o.Answers {
		if seen.Addr == a.Addr {
			return
		}
	}
	o.Answers = append(o.Answers, a)
}

// orErr returns what was heard if anything was, else err: once an answer
// arrived, a cancelled window still yields it.
func (o Observation) orErr(err error) (Observation, error) {
	if len(o.Answers) > 0 {
		return o, nil
	}
	return o, err
}

// listenOn opens the query socket of a link: bound to its address (the
// source of queries, where unicast answers return) and to the device, so
// neither the query nor a spoofed answer can use another interface.
func listenOn(ctx context.Context, link Link) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: BindToDevice(link.Name)}
	pc, err := lc.ListenPacket(ctx, "udp4", netip.AddrPortFrom(link.Addr, 0).String())
	if err != nil {
		return nil, fmt.Errorf("open mDNS socket on %s: %w", link.Name, err)
	}
	conn := pc.(*net.UDPConn)
	p := ipv4.NewPacketConn(conn)
	ifi := &net.Interface{Index: link.Index, Name: link.Name}
	// Without a multicast interface the kernel would need a route for
	// 224.0.0.251, and a namespace without a default route has none.
	if err := p.SetMulticastInterface(ifi); err != nil {
		conn.Close()
		return nil, fmt.Errorf("set multicast interface %s: %w", link.Name, err)
	}
	// 255 as RFC 6762 §11 asks; responders that check it would drop less.
	if err := p.SetMulticastTTL(255); err != nil {
		conn.Close()
		return nil, fmt.Errorf("set multicast TTL on %s: %w", link.Name, err)
	}
	if err := p.SetMulticastLoopback(false); err != nil {
		conn.Close()
		return nil, fmt.Errorf("disable multicast loopback on %s: %w", link.Name, err)
	}
	return conn, nil
}

// BindToDevice is a net.Dialer or net.ListenConfig Control function that
// sets SO_BINDTODEVICE, so the socket only sends and receives through the
// named interface. The resolver's dialer uses it too: a connection to a
// datastore must leave through the bridge its answer came from.
func BindToDevice(ifname string) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.BindToDevice(int(fd), ifname)
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("bind to device %s: %w", ifname, serr)
		}
		return nil
	}
}

// randomIDs returns distinct non-zero message IDs: unpredictable, so an
// off-path sender cannot guess which answers we would accept.
func randomIDs() ([4]uint16, error) {
	var ids [4]uint16
	var b [2]byte
	for i := 0; i < len(ids); {
		if _, err := rand.Read(b[:]); err != nil {
			return ids, fmt.Errorf("random query ID: %w", err)
		}
		id := binary.BigEndian.Uint16(b[:])
		if id == 0 || slices.Contains(ids[:i], id) {
			continue
		}
		ids[i] = id
		i++
	}
	return ids, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
