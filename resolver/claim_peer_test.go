package resolver_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// envClaim starts the claimant peer: "IFACE NAME ADDR TTL". It is a
// non-probing responder, as a hostile neighbour would be: it answers A
// questions for NAME with ADDR and TTL seconds, at once, by unicast to a
// legacy querier; and a question for "bye-NAME" makes it multicast a
// goodbye (TTL 0) for NAME, so a test decides when the goodbye is sent.
const envClaim = "LOCALDS_TEST_CLAIM"

func runClaim(spec string) int {
	f := strings.Fields(spec)
	if len(f) != 4 {
		fmt.Fprintln(os.Stderr, "claim: want IFACE NAME ADDR TTL, got", spec)
		return 2
	}
	ifname, name, addr := f[0], dns.Fqdn(strings.ToLower(f[1])), net.ParseIP(f[2]).To4()
	ttl, err := strconv.Atoi(f[3])
	if err != nil || addr == nil {
		fmt.Fprintln(os.Stderr, "claim: bad address or TTL in", spec)
		return 2
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		fmt.Fprintln(os.Stderr, "claim:", err)
		return 1
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", ":5353")
	if err != nil {
		fmt.Fprintln(os.Stderr, "claim:", err)
		return 1
	}
	conn := pc.(*net.UDPConn)
	p := ipv4.NewPacketConn(conn)
	if err := p.JoinGroup(ifi, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251)}); err != nil {
		fmt.Fprintln(os.Stderr, "claim: join:", err)
		return 1
	}
	if err := p.SetMulticastInterface(ifi); err != nil {
		fmt.Fprintln(os.Stderr, "claim: multicast interface:", err)
		return 1
	}
	fmt.Println("claim listening on", ifname, "for", name, "with", addr)
	time.AfterFunc(peerLifetime, func() { os.Exit(0) })
	a := func(ttl uint32) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: addr}
	}
	buf := make([]byte, 9000)
	for {
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			return 1
		}
		var q dns.Msg
		if q.Unpack(buf[:n]) != nil || q.Response || len(q.Question) == 0 || q.Question[0].Qtype != dns.TypeA {
			continue
		}
		switch strings.ToLower(q.Question[0].Name) {
		case name:
			m := new(dns.Msg)
			m.Id, m.Response, m.Authoritative = q.Id, true, true
			m.Question = q.Question[:1]
			m.Answer = []dns.RR{a(uint32(ttl))}
			b, _ := m.Pack()
			conn.WriteToUDP(b, from)
			fmt.Println("claim answered", name, "to", from)
		case "bye-" + name:
			m := new(dns.Msg)
			m.Response, m.Authoritative = true, true
			m.Answer = []dns.RR{a(0)}
			b, _ := m.Pack()
			conn.WriteToUDP(b, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
			fmt.Println("claim said goodbye for", name)
		}
	}
}
