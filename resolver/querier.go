package resolver

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
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

// queryBridge asks on one bridge until a valid answer for host arrives or
// ctx ends. The socket is bound to the bridge's address and device, so it
// works without any route (the multicast interface is set explicitly) and
// answers can only arrive through that bridge.
func queryBridge(ctx context.Context, br Bridge, host string) (answer, error) {
	conn, err := listenOn(ctx, br)
	if err != nil {
		return answer{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	ids, err := randomIDs()
	if err != nil {
		return answer{}, err
	}
	qs := questions(host, ids)
	packets := make([][]byte, len(qs))
	for i, q := range qs {
		if packets[i], err = q.pack(); err != nil {
			return answer{}, fmt.Errorf("build query: %w", err)
		}
	}
	dst := net.UDPAddrFromAddrPort(mdnsGroup)
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
			return fmt.Errorf("send query on %s: %w", br.Name, lastErr)
		}
		return nil
	}
	if err := send(); err != nil {
		return answer{}, err
	}

	logger := log.G(ctx).WithField("interface", br.Name)
	buf := make([]byte, 9000) // a jumbo frame; mDNS answers fit easily
	interval := firstRetransmit
	next := time.Now().Add(interval)
	for n := 0; n < maxPackets; n++ {
		if ctx.Err() != nil {
			return answer{}, ctx.Err()
		}
		conn.SetReadDeadline(next)
		size, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return answer{}, ctx.Err()
			}
			if !isTimeout(err) {
				return answer{}, fmt.Errorf("read on %s: %w", br.Name, err)
			}
			if err := send(); err != nil {
				return answer{}, err
			}
			interval = min(interval*2, maxRetransmit)
			next = time.Now().Add(interval)
			continue
		}
		a, err := parseAnswer(buf[:size], unmap(from), qs, host, br.Prefix)
		if err != nil {
			logger.WithError(err).WithField("from", from).Debug("ignored mDNS packet")
			continue
		}
		return a, nil
	}
	return answer{}, fmt.Errorf("gave up on %s after %d packets without a valid answer", br.Name, maxPackets)
}

// listenOn opens the query socket of a bridge: bound to its address (the
// source of queries, where unicast answers return) and to the device, so
// neither the query nor a spoofed answer can use another interface.
func listenOn(ctx context.Context, br Bridge) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: bindToDevice(br.Name)}
	pc, err := lc.ListenPacket(ctx, "udp4", netip.AddrPortFrom(br.Addr, 0).String())
	if err != nil {
		return nil, fmt.Errorf("open mDNS socket on %s: %w", br.Name, err)
	}
	conn := pc.(*net.UDPConn)
	p := ipv4.NewPacketConn(conn)
	ifi := &net.Interface{Index: br.Index, Name: br.Name}
	// Without a multicast interface the kernel would need a route for
	// 224.0.0.251, and a namespace without a default route has none.
	if err := p.SetMulticastInterface(ifi); err != nil {
		conn.Close()
		return nil, fmt.Errorf("set multicast interface %s: %w", br.Name, err)
	}
	// 255 as RFC 6762 §11 asks; responders that check it would drop less.
	if err := p.SetMulticastTTL(255); err != nil {
		conn.Close()
		return nil, fmt.Errorf("set multicast TTL on %s: %w", br.Name, err)
	}
	if err := p.SetMulticastLoopback(false); err != nil {
		conn.Close()
		return nil, fmt.Errorf("disable multicast loopback on %s: %w", br.Name, err)
	}
	return conn, nil
}

// bindToDevice sets SO_BINDTODEVICE so the socket only sends and receives
// through the named interface.
func bindToDevice(ifname string) func(network, address string, c syscall.RawConn) error {
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
		if id == 0 || contains(ids[:i], id) {
			continue
		}
		ids[i] = id
		i++
	}
	return ids, nil
}

func contains(ids []uint16, id uint16) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
