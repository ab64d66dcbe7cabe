package e2e

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// claimName runs, in this test process, a non-probing mDNS responder on
// the app's eth0 (its socket opened inside the app namespace) that answers
// every A question for dsLocal with addr, as a hostile container sharing
// the datastore's bridge would. It stops when the test ends.
func claimName(t *testing.T, s *site, addr string) {
	t.Helper()
	var pc net.PacketConn
	err := s.app.Do(func() error {
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
		c, err := lc.ListenPacket(context.Background(), "udp4", ":5353")
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			c.Close()
			return err
		}
		if err := ipv4.NewPacketConn(c).JoinGroup(ifi, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251)}); err != nil {
			c.Close()
			return err
		}
		pc = c
		return nil
	})
	if err != nil {
		t.Fatalf("hostile responder: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	name := dsLocal + "."
	go func() {
		buf := make([]byte, 9000)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed at cleanup
			}
			var q dns.Msg
			if q.Unpack(buf[:n]) != nil || q.Response || len(q.Question) == 0 ||
				q.Question[0].Qtype != dns.TypeA || !strings.EqualFold(q.Question[0].Name, name) {
				continue
			}
			m := new(dns.Msg)
			m.Id, m.Response, m.Authoritative = q.Id, true, true
			m.Question = q.Question[:1]
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.ParseIP(addr)}}
			if b, err := m.Pack(); err == nil {
				pc.WriteTo(b, from)
			}
		}
	}()
}

// TestMirrorRefusesConflict: the datastore (Avahi and docker-registry) and
// a neighbour claiming its name with another address share br0. `ctr
// image pull` through the mirror fails (502: containerd's first request is
// a HEAD, whose body it never shows, so ctr says only "502 Bad Gateway");
// the daemon's log names the conflict, both addresses and the bridge;
// /metrics counts it.
func TestMirrorRefusesConflict(t *testing.T) {
	requireE2E(t)
	s := newSite(t, 5000)
	claimName(t, s, "10.77.90.77")
	s.startDaemon(t)
	s.startContainerd(t)
	s.writeHosts(t, dsLocal+":5000")

	out, err := s.pull(t, dsLocal+":5000/app:1")
	if err == nil {
		t.Fatalf("the pull must fail with a conflict:\n%s", out)
	}
	if !strings.Contains(out, "502") {
		t.Errorf("ctr's error is not the mirror's refusal:\n%s", out)
	}
	var conflict string
	for _, line := range strings.Split(s.daemon.Log(), "\n") {
		if strings.Contains(line, "mDNS name conflict") {
			conflict = line
			break
		}
	}
	for _, want := range []string{"conflict", appIP, "10.77.90.77", "br0 (10.77.90.0/24)"} {
		if !strings.Contains(conflict, want) {
			t.Errorf("the daemon's conflict lacks %q: %q\nlocalds log:\n%s", want, conflict, tail(s.daemon.Log(), 4000))
		}
	}
	if n := s.metrics(t)["localds_resolver_conflicts_total"]; n < 1 {
		t.Errorf("localds_resolver_conflicts_total = %v, want >= 1", n)
	}
}
