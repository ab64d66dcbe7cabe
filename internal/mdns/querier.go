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
// they lie inside Subnet.
type Link struct {
	Name   string
	Index  int
	Addr   netip.Addr
	Subnet netip.Prefix
}

// Query asks on one link until a valid answer for host (a canonical .local
// name, see CanonicalHost) arrives or ctx ends. The socket is bound to the
// link's address and device, so it works without any route (the multicast
// interface is set explicitly) and answers can only arrive through that
// link.
func Query(ctx context.Context, link Link, host string) (Answer, error) {
	conn, err := listenOn(ctx, link)
	if err != nil {
		return Answer{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	ids, err := randomIDs()
	if err != nil {
		return Answer{}, err
	}
	qs := questions(host, ids)
	packets := make([][]byte, len(qs))
	for i, q := range qs {
		if packets[i], err = q.pack(); err != nil {
			return Answer{}, fmt.Errorf("build query: %w", err)
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
		return Answer{}, err
	}

	logger := log.G(ctx).WithField("interface", link.Name)
	buf := make([]byte, MaxPacket) // a jumbo frame; mDNS answers fit easily
	interval := firstRetransmit
	next := time.Now().Add(interval)
	for n := 0; n < maxPackets; n++ {
		if ctx.Err() != nil {
			return Answer{}, ctx.Err()
		}
		conn.SetReadDeadline(next)
		size, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return Answer{}, ctx.Err()
			}
			if !isTimeout(err) {
				return Answer{}, fmt.Errorf("read on %s: %w", link.Name, err)
			}
			if err := send(); err != nil {
				return Answer{}, err
			}
			interval = min(interval*2, maxRetransmit)
			next = time.Now().Add(interval)
			continue
		}
		a, err := parseAnswer(buf[:size], unmap(from), qs, host, link.Subnet)
		if err != nil {
			logger.WithError(err).WithField("from", from).Debug("ignored mDNS packet")
			continue
		}
		return a, nil
	}
	return Answer{}, fmt.Errorf("gave up on %s after %d packets without a valid answer", link.Name, maxPackets)
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
