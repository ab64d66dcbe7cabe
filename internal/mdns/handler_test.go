package mdns

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeZone answers A for one host with one address, whoever asks.
type fakeZone struct{ host, addr string }

func (z fakeZone) Records(q dns.Question, _ netip.Addr) (answer, extra []dns.RR) {
	if !SameName(q.Name, z.host) || q.Qtype != dns.TypeA {
		return nil, nil
	}
	return []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: z.host, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: HostTTL}, A: net.ParseIP(z.addr)}}, nil
}

func (z fakeZone) Announcement(uint32) *dns.Msg { return nil }

func packQuery(t *testing.T, name string, qclass uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.Id = 9
	m.Question = []dns.Question{{Name: name, Qtype: dns.TypeA, Qclass: qclass}}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRespondLegacyAndOffLink: a legacy question from the subnet gets a
// unicast reply with the TTL capped; the same from off the subnet gets
// none (RFC 6762 §11), while a multicast question needs no source check.
func TestRespondLegacyAndOffLink(t *testing.T) {
	z := fakeZone{host: "ds.local.", addr: "10.0.0.2"}
	subnets := []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}
	from := netip.MustParseAddrPort("10.0.0.1:40000")
	rs, err := Respond(z, subnets, packQuery(t, "DS.local.", dns.ClassINET), from)
	if err != nil || len(rs) != 1 || rs[0].To != from || rs[0].Msg.Id != 9 || len(rs[0].Msg.Question) != 1 {
		t.Fatalf("legacy reply: %v %v", rs, err)
	}
	if ttl := rs[0].Msg.Answer[0].Header().Ttl; ttl != LegacyTTL {
		t.Fatalf("legacy TTL %d, want %d", ttl, LegacyTTL)
	}
	rs, err = Respond(z, subnets, packQuery(t, "ds.local.", dns.ClassINET), netip.MustParseAddrPort("192.0.2.1:40000"))
	if len(rs) != 0 || !errors.Is(err, errOffLink) {
		t.Fatalf("off-link legacy: %v %v", rs, err)
	}
	rs, err = Respond(z, subnets, packQuery(t, "ds.local.", dns.ClassINET), netip.MustParseAddrPort("192.0.2.1:5353"))
	if err != nil || len(rs) != 1 || rs[0].To != Group {
		t.Fatalf("multicast reply: %v %v", rs, err)
	}
	if rs, err := Respond(z, subnets, packQuery(t, "other.local.", dns.ClassINET), from); len(rs) != 0 || err != nil {
		t.Fatalf("other host: %v %v", rs, err)
	}
}

func TestRateLimit(t *testing.T) {
	var l rateLimit
	now := time.Now()
	for i := range maxRepliesPerSecond {
		if !l.allow(now) {
			t.Fatalf("send %d refused within the limit", i)
		}
	}
	if l.allow(now.Add(500 * time.Millisecond)) {
		t.Fatal("send over the limit allowed")
	}
	if !l.allow(now.Add(time.Second)) {
		t.Fatal("a new window must allow again")
	}
}
