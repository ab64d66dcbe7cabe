package resolver_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// The test binary doubles as two small peers that integration tests start
// inside an app namespace (re-executing os.Args[0] with one of these
// variables set): a TCP echo server that tells the client which addresses
// the connection used, and a hostile mDNS responder.
const (
	envEcho  = "LOCALDS_TEST_ECHO_LISTEN"
	envDecoy = "LOCALDS_TEST_DECOY_IFACE"
	// peerLifetime bounds a peer that the test forgot to stop.
	peerLifetime = 5 * time.Minute
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(envEcho) != "":
		os.Exit(runEcho(os.Getenv(envEcho)))
	case os.Getenv(envDecoy) != "":
		os.Exit(runDecoy(os.Getenv(envDecoy)))
	case os.Getenv(envClaim) != "":
		os.Exit(runClaim(os.Getenv(envClaim)))
	case os.Getenv(envTLS) != "":
		os.Exit(runTLS(os.Getenv(envTLS)))
	}
	os.Exit(m.Run())
}

// runEcho answers every connection with "remote=<client> local=<server>".
func runEcho(addr string) int {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 1
	}
	fmt.Println("echo listening on", ln.Addr())
	time.AfterFunc(peerLifetime, func() { os.Exit(0) })
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		fmt.Fprintf(c, "remote=%s local=%s\n", c.RemoteAddr(), c.LocalAddr())
		c.Close()
	}
}

// runDecoy is a hostile responder on ifname: to every question it sends
// answers that each break exactly one acceptance rule, for the asked name,
// so a resolver that skips any rule takes the bait.
func runDecoy(ifname string) int {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		fmt.Fprintln(os.Stderr, "decoy:", err)
		return 1
	}
	addrs, err := ifi.Addrs()
	if err != nil || len(addrs) == 0 {
		fmt.Fprintln(os.Stderr, "decoy: no address on", ifname, err)
		return 1
	}
	own := addrs[0].(*net.IPNet).IP.To4()
	// Share port 5353 with the avahi-daemon of the same namespace, as
	// mDNS stacks do; multicast questions reach both.
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
		fmt.Fprintln(os.Stderr, "decoy:", err)
		return 1
	}
	conn := pc.(*net.UDPConn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "decoy:", err)
		return 1
	}
	p := ipv4.NewPacketConn(conn)
	if err := p.JoinGroup(ifi, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251)}); err != nil {
		fmt.Fprintln(os.Stderr, "decoy: join:", err)
		return 1
	}
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: own})
	if err != nil {
		fmt.Fprintln(os.Stderr, "decoy:", err)
		return 1
	}
	fmt.Println("decoy listening on", ifname, own)
	time.AfterFunc(peerLifetime, func() { os.Exit(0) })
	buf := make([]byte, 9000)
	for {
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			return 1
		}
		var q dns.Msg
		if q.Unpack(buf[:n]) != nil || q.Response || len(q.Question) == 0 {
			continue
		}
		// Only the host questions matter here; the real name is the one
		// the query asks for, in whatever form the querier used.
		name := q.Question[0].Name
		if q.Question[0].Qtype != dns.TypeA {
			continue
		}
		inSubnet := net.IPv4(own[0], own[1], own[2], 77)
		reply := func(id uint16, rrs ...dns.RR) []byte {
			m := new(dns.Msg)
			m.Id, m.Response, m.Authoritative = id, true, true
			m.Answer = rrs
			b, _ := m.Pack()
			return b
		}
		a := func(n string, ip net.IP) dns.RR {
			return &dns.A{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 10}, A: ip}
		}
		bait := [][]byte{
			reply(q.Id, a(name, net.IPv4(192, 0, 2, 66))),                         // outside the bridge subnet
			reply(q.Id, a("x"+name, inSubnet)),                                    // a name that contains the wanted one
			reply(q.Id, a(name[:len(name)-len(".local.")]+"-2.local.", inSubnet)), // a similar name
			reply(q.Id+1, a(name, inSubnet)),                                      // another ID
			reply(q.Id, &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 10}, AAAA: net.ParseIP("fd00::77")}),
			reply(q.Id, a(name, inSubnet))[:20], // truncated
		}
		for _, b := range bait {
			conn.WriteToUDP(b, from)
		}
		other.WriteToUDP(reply(q.Id, a(name, inSubnet)), from) // right answer, wrong source port
		fmt.Println("decoy answered", name, "from", from)
	}
}
