package dsserver

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/localds/localds/internal/mdns"
)

var (
	testMAC    = net.HardwareAddr{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	querier    = netip.MustParseAddrPort("10.77.1.1:40123")
	mdnsPeer   = netip.MustParseAddrPort("10.77.1.1:5353")
	offLink    = netip.MustParseAddrPort("192.0.2.9:40123")
	testAddrs  = []netip.Prefix{netip.MustParsePrefix("10.77.1.2/24"), netip.MustParsePrefix("172.30.0.2/16")}
	testHTTP   = Service{Type: "_http._tcp", Port: 8080, TXT: []string{"path=/"}}
	testHTTPS  = Service{Type: "_https._tcp", Port: 8443}
	hostFQDN   = "ds-1.local."
	wsInstance = `ds-1\ [aa:bb:cc:dd:ee:ff]._workstation._tcp.local.`
)

func testZone(t testing.TB, services ...Service) *zone {
	t.Helper()
	z, err := newZone(hostFQDN, testMAC, testAddrs, services)
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// handle answers one packet from z the way the responder does on the
// interface z was built for.
func handle(z *zone, pkt []byte, from netip.AddrPort) ([]mdns.Reply, error) {
	return mdns.Respond(z, z.addrs, pkt, from)
}

// query packs the one-shot question the localds resolver sends.
func query(t testing.TB, id uint16, name string, qtype uint16, qu bool) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.Id = id
	cls := uint16(dns.ClassINET)
	if qu {
		cls |= mdns.CacheFlush
	}
	m.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: cls}}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// roundTrip sends the reply through the wire format, as the querier sees it.
func roundTrip(t testing.TB, r mdns.Reply) *dns.Msg {
	t.Helper()
	b, err := r.Msg.Pack()
	if err != nil {
		t.Fatalf("pack reply: %v", err)
	}
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack reply: %v", err)
	}
	return &m
}

// one asks z and wants exactly one reply.
func one(t *testing.T, z *zone, pkt []byte, from netip.AddrPort) mdns.Reply {
	t.Helper()
	rs, err := handle(z, pkt, from)
	if err != nil || len(rs) != 1 {
		t.Fatalf("want one reply, got %d (err %v)", len(rs), err)
	}
	return rs[0]
}

func TestLegacyUnicastA(t *testing.T) {
	z := testZone(t, testHTTP)
	r := one(t, z, query(t, 0x1234, "DS-1.Local.", dns.TypeA, true), querier)
	if r.To != querier {
		t.Fatalf("reply to %v, want the querier %v", r.To, querier)
	}
	m := roundTrip(t, r)
	if !m.Response || m.Id != 0x1234 || !m.Authoritative {
		t.Fatalf("header: response=%v id=%#x aa=%v", m.Response, m.Id, m.Authoritative)
	}
	if len(m.Question) != 1 || m.Question[0].Name != "DS-1.Local." {
		t.Fatalf("question not repeated: %v", m.Question)
	}
	if len(m.Answer) != 1 {
		t.Fatalf("answers: %v", m.Answer)
	}
	a := m.Answer[0].(*dns.A)
	if !a.A.Equal(net.ParseIP("10.77.1.2")) || a.Hdr.Ttl > mdns.LegacyTTL || a.Hdr.Class != dns.ClassINET || a.Hdr.Name != hostFQDN {
		t.Fatalf("A record %v: want 10.77.1.2 only (the querier's subnet), TTL <= 10, no cache-flush bit", a)
	}
	// Also without the QU bit: a port other than 5353 makes it legacy.
	r = one(t, z, query(t, 7, hostFQDN, dns.TypeA, false), querier)
	if m := roundTrip(t, r); r.To != querier || m.Id != 7 {
		t.Fatalf("legacy without QU: to %v id %d", r.To, m.Id)
	}
}

func TestLegacyUnicastBrowse(t *testing.T) {
	z := testZone(t, testHTTP)
	for _, tc := range []struct {
		service, instance string
		port              uint16
	}{
		{"_workstation._tcp.local.", wsInstance, workstationPort},
		{"_http._tcp.local.", "ds-1._http._tcp.local.", 8080},
	} {
		m := roundTrip(t, one(t, z, query(t, 42, tc.service, dns.TypePTR, true), querier))
		if m.Id != 42 || len(m.Answer) != 1 {
			t.Fatalf("%s: id %d answers %v", tc.service, m.Id, m.Answer)
		}
		if ptr, ok := m.Answer[0].(*dns.PTR); !ok || ptr.Ptr != tc.instance {
			t.Fatalf("%s: PTR %v, want %s", tc.service, m.Answer[0], tc.instance)
		}
		var srv *dns.SRV
		var a *dns.A
		for _, rr := range m.Extra {
			switch rr := rr.(type) {
			case *dns.SRV:
				srv = rr
			case *dns.A:
				a = rr
			}
		}
		if srv == nil || srv.Target != hostFQDN || srv.Port != tc.port || !strings.HasSuffix(srv.Hdr.Name, "."+tc.service) {
			t.Fatalf("%s: SRV %v", tc.service, srv)
		}
		if a == nil || a.Hdr.Name != hostFQDN || !a.A.Equal(net.ParseIP("10.77.1.2")) {
			t.Fatalf("%s: additional A %v", tc.service, a)
		}
	}
	// Not served over TLS: no _https._tcp answer.
	if rs, err := handle(z, query(t, 43, "_https._tcp.local.", dns.TypePTR, true), querier); len(rs) != 0 || err != nil {
		t.Fatalf("_https without TLS: %v %v", rs, err)
	}
	z = testZone(t, testHTTP, testHTTPS)
	m := roundTrip(t, one(t, z, query(t, 44, "_https._tcp.local.", dns.TypePTR, true), querier))
	if len(m.Answer) != 1 || len(m.Extra) < 2 {
		t.Fatalf("_https with TLS: %v / %v", m.Answer, m.Extra)
	}
	// The instance itself: SRV answer, A additional.
	m = roundTrip(t, one(t, z, query(t, 45, wsInstance, dns.TypeSRV, true), querier))
	if len(m.Answer) != 1 || m.Answer[0].(*dns.SRV).Target != hostFQDN || len(m.Extra) != 1 {
		t.Fatalf("SRV of the instance: %v / %v", m.Answer, m.Extra)
	}
}

func TestSilence(t *testing.T) {
	z := testZone(t, testHTTP)
	resp := new(dns.Msg)
	resp.Response = true
	resp.Question = []dns.Question{{Name: hostFQDN, Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	respb, _ := resp.Pack()
	opcode := new(dns.Msg)
	opcode.Opcode = dns.OpcodeUpdate
	opcode.Question = resp.Question
	opb, _ := opcode.Pack()
	for name, tc := range map[string]struct {
		pkt  []byte
		from netip.AddrPort
	}{
		"other host":  {query(t, 1, "myds-1.local.", dns.TypeA, true), querier},
		"suffix host": {query(t, 1, "s-1.local.", dns.TypeA, true), querier},
		"AAAA":        {query(t, 1, hostFQDN, dns.TypeAAAA, true), querier},
		"CHAOS class": {func() []byte {
			m := new(dns.Msg)
			m.Question = []dns.Question{{Name: hostFQDN, Qtype: dns.TypeA, Qclass: dns.ClassCHAOS}}
			b, _ := m.Pack()
			return b
		}(), querier},
		"a response":        {respb, querier},
		"an update":         {opb, querier},
		"off-link legacy":   {query(t, 1, hostFQDN, dns.TypeA, true), offLink},
		"unknown service":   {query(t, 1, "_ftp._tcp.local.", dns.TypePTR, true), querier},
		"empty":             {nil, querier},
		"header only":       {make([]byte, 12), querier},
		"oversized":         {make([]byte, mdns.MaxPacket+1), querier},
		"no address at all": {query(t, 1, hostFQDN, dns.TypeA, true), querier},
	} {
		zz := z
		if name == "no address at all" {
			zz, _ = newZone(hostFQDN, testMAC, nil, []Service{testHTTP})
		}
		if rs, _ := handle(zz, tc.pkt, tc.from); len(rs) != 0 {
			t.Errorf("%s: replied %v", name, rs[0].Msg)
		}
	}
}

func TestMulticastAndQU(t *testing.T) {
	z := testZone(t, testHTTP)
	// A QM question from port 5353 (Avahi's way) gets a multicast answer.
	r := one(t, z, query(t, 99, hostFQDN, dns.TypeA, false), mdnsPeer)
	m := roundTrip(t, r)
	if r.To != mdns.Group || m.Id != 0 || len(m.Question) != 0 {
		t.Fatalf("multicast reply: to %v id %d questions %v", r.To, m.Id, m.Question)
	}
	if a := m.Answer[0].(*dns.A); a.Hdr.Class != dns.ClassINET|mdns.CacheFlush || a.Hdr.Ttl != mdns.HostTTL {
		t.Fatalf("multicast A: %v", a)
	}
	// A QU question from port 5353 gets a unicast answer, not a legacy one.
	r = one(t, z, query(t, 99, hostFQDN, dns.TypeA, true), mdnsPeer)
	if m := roundTrip(t, r); r.To != mdnsPeer || len(m.Question) != 0 || m.Answer[0].Header().Ttl != mdns.HostTTL {
		t.Fatalf("QU reply: to %v %v", r.To, m)
	}
	// Several questions in one packet: one legacy reply with all answers.
	q := new(dns.Msg)
	q.Id = 5
	q.Question = []dns.Question{
		{Name: hostFQDN, Qtype: dns.TypeA, Qclass: dns.ClassINET},
		{Name: "_http._tcp.local.", Qtype: dns.TypePTR, Qclass: dns.ClassINET},
	}
	b, _ := q.Pack()
	m = roundTrip(t, one(t, z, b, querier))
	if len(m.Question) != 2 || len(m.Answer) != 2 {
		t.Fatalf("two questions: %v", m)
	}
}

func TestAnnouncement(t *testing.T) {
	z := testZone(t, testHTTP)
	m := z.Announcement(mdns.HostTTL)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > mdns.MulticastSize {
		t.Fatalf("announcement is %d bytes", len(b))
	}
	var n [256]int
	for _, rr := range m.Answer {
		n[rr.Header().Rrtype&0xff]++
	}
	// 2 A, 2 service enumeration PTR + 2 service PTR, 2 SRV, 2 TXT.
	if n[dns.TypeA] != 2 || n[dns.TypePTR] != 4 || n[dns.TypeSRV] != 2 || n[dns.TypeTXT] != 2 {
		t.Fatalf("announcement records: %v", m.Answer)
	}
	for _, rr := range z.Announcement(0).Answer {
		if rr.Header().Ttl != 0 {
			t.Fatalf("goodbye with TTL: %v", rr)
		}
	}
}

// TestHostileQueries feeds truncated, corrupted, huge and random packets;
// the handler must neither panic nor answer anything it cannot pack.
func TestHostileQueries(t *testing.T) {
	z := testZone(t, testHTTP, testHTTPS)
	good := query(t, 1, "_workstation._tcp.local.", dns.TypePTR, true)
	for i := range good {
		checkHandle(t, z, good[:i], querier)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		b := append([]byte(nil), good...)
		for range 1 + rng.IntN(4) {
			b[rng.IntN(len(b))] = byte(rng.IntN(256))
		}
		checkHandle(t, z, b, querier)
	}
	// Many questions, compression loops, a full-size packet.
	many := new(dns.Msg)
	for i := range 500 {
		many.Question = append(many.Question, dns.Question{Name: hostFQDN, Qtype: uint16(i % 256), Qclass: dns.ClassINET})
	}
	mb, _ := many.Pack()
	checkHandle(t, z, mb, querier)
	loop := []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}
	checkHandle(t, z, loop, querier)
	checkHandle(t, z, make([]byte, mdns.MaxPacket), querier)
}

func checkHandle(t testing.TB, z *zone, pkt []byte, from netip.AddrPort) {
	rs, _ := handle(z, pkt, from)
	for _, r := range rs {
		b, err := r.Msg.Pack()
		if err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
		limit := mdns.MulticastSize
		if r.To.Port() != mdns.Port {
			limit = mdns.MulticastSize // EDNS0 may raise the legacy limit up to this
		}
		if len(b) > limit {
			t.Fatalf("reply of %d bytes", len(b))
		}
	}
}

func FuzzZoneHandle(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{hostFQDN, dns.TypeA}, {"_workstation._tcp.local.", dns.TypePTR}, {"_http._tcp.local.", dns.TypePTR}, {wsInstance, dns.TypeANY}, {servicesEnum, dns.TypePTR}} {
		f.Add(query(f, 1, q.name, q.qtype, true), uint16(40000))
		f.Add(query(f, 0, q.name, q.qtype, false), uint16(mdns.Port))
	}
	z := testZone(f, testHTTP, testHTTPS)
	f.Fuzz(func(t *testing.T, pkt []byte, port uint16) {
		checkHandle(t, z, pkt, netip.AddrPortFrom(querier.Addr(), port))
	})
}
