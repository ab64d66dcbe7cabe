package mdns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func aRR(name, addr string, ttl uint32) dns.RR {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP(addr)}
}

func probeOurs() []dns.RR {
	return hostRecords(testHost, []netip.Prefix{netip.MustParsePrefix("10.77.1.2/24")})
}

// TestJudgeProbe: what a packet heard while probing means (RFC 6762 §8.1,
// §8.2): another address for the name is a conflict, our own records,
// goodbyes and other names are not; a simultaneous probe is decided by
// the records' order, and our own looped-back probe is no contest.
func TestJudgeProbe(t *testing.T) {
	ours := probeOurs()
	resp := func(rrs ...dns.RR) []byte {
		return packMsg(t, &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}, Answer: rrs})
	}
	probeWith := func(rrs ...dns.RR) []byte { return packMsg(t, probeMsg(testHost, rrs)) }
	tests := []struct {
		name string
		pkt  []byte
		want verdict
	}{
		{"another address", resp(aRR(testHost, "10.77.1.5", 120)), conflict},
		{"another address, upper case name", resp(aRR("UBUNTU-4321-http-server.local.", "10.77.1.5", 120)), conflict},
		{"an AAAA of the name", resp(&dns.AAAA{Hdr: dns.RR_Header{Name: testHost, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 120}, AAAA: net.ParseIP("fd00::5")}), conflict},
		{"our own record", resp(aRR(testHost, "10.77.1.2", 120)), noConflict},
		{"a goodbye", resp(aRR(testHost, "10.77.1.5", 0)), noConflict},
		{"another name", resp(aRR("other.local.", "10.77.1.5", 120)), noConflict},
		{"their probe sorts later", probeWith(aRR(testHost, "10.77.1.9", 120)), lostTieBreak},
		{"their probe sorts earlier", probeWith(aRR(testHost, "10.77.1.1", 120)), noConflict},
		{"our own probe looped back", probeWith(ours...), noConflict},
		{"a plain query", packQuery(t, testHost, dns.ClassINET), noConflict},
		{"garbage", []byte{1, 2, 3}, noConflict},
	}
	for _, tt := range tests {
		if got, _ := judgeProbe(tt.pkt, testHost, ours); got != tt.want {
			t.Errorf("%s: verdict %d, want %d", tt.name, got, tt.want)
		}
	}
}

// TestCompareRecords: RFC 6762 §8.2's rules: class, then type, then rdata;
// more records win over a prefix of them.
func TestCompareRecords(t *testing.T) {
	a1, a2 := aRR(testHost, "169.254.99.200", 120), aRR(testHost, "169.254.200.50", 120)
	if compareRecords([]dns.RR{a1}, []dns.RR{a2}) >= 0 {
		t.Error("169.254.99.200 must sort before 169.254.200.50 (the RFC's example)")
	}
	if compareRecords([]dns.RR{a1}, []dns.RR{a1, a2}) >= 0 {
		t.Error("a prefix must sort first")
	}
	if compareRecords([]dns.RR{a2, a1}, []dns.RR{a1, a2}) != 0 {
		t.Error("order of records must not matter")
	}
}

// TestKnownAnswerSuppression: an answer the querier lists with at least
// half its TTL is not sent again (RFC 6762 §7.1); with less it is.
func TestKnownAnswerSuppression(t *testing.T) {
	z := fakeZone{host: testHost, addr: "10.77.1.2"}
	ask := func(known ...dns.RR) []Reply {
		m := &dns.Msg{Question: []dns.Question{{Name: testHost, Qtype: dns.TypeA, Qclass: dns.ClassINET}}, Answer: known}
		rs, err := Respond(z, []netip.Prefix{testSubnet}, packMsg(t, m), mdnsFrom)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	if rs := ask(aRR(testHost, "10.77.1.2", HostTTL/2)); len(rs) != 0 {
		t.Fatalf("known answer with half the TTL must be suppressed, got %v", rs)
	}
	if rs := ask(aRR(testHost, "10.77.1.2", HostTTL/2-1)); len(rs) != 1 {
		t.Fatalf("known answer with less than half the TTL must be refreshed, got %v", rs)
	}
	if rs := ask(aRR(testHost, "10.77.1.3", HostTTL)); len(rs) != 1 {
		t.Fatalf("another record known must not suppress ours, got %v", rs)
	}
}

// TestProbeAnsweredByMulticast: a probe for our name is answered to the
// group even with its QU bit, so every host on the link hears the defence.
func TestProbeAnsweredByMulticast(t *testing.T) {
	z := fakeZone{host: testHost, addr: "10.77.1.2"}
	m := probeMsg(testHost, []dns.RR{aRR(testHost, "10.77.1.5", 120)})
	m.Question[0].Qtype = dns.TypeA // the fake zone answers A only
	rs, err := Respond(z, []netip.Prefix{testSubnet}, packMsg(t, m), netip.MustParseAddrPort("10.77.1.5:5353"))
	if err != nil || len(rs) != 1 || rs[0].To != Group {
		t.Fatalf("want one multicast reply, got %v %v", rs, err)
	}
}

// TestSourceLimit: one source's replies are bounded; another source still
// gets its own.
func TestSourceLimit(t *testing.T) {
	var l sourceLimit
	now := time.Now()
	flooder, other := netip.MustParseAddr("10.77.1.6"), netip.MustParseAddr("10.77.1.1")
	for range maxRepliesPerSource {
		if !l.allow(flooder, now) {
			t.Fatal("refused within the limit")
		}
	}
	if l.allow(flooder, now) {
		t.Fatal("the flooder got more than its share")
	}
	if !l.allow(other, now) {
		t.Fatal("another source was silenced by the flooder")
	}
}

// FuzzJudgeProbe: whatever is received while probing, judging it never
// panics, a query is never a conflict, and only a response can be.
func FuzzJudgeProbe(f *testing.F) {
	ours := probeOurs()
	f.Add(packMsg(f, probeMsg(testHost, ours)))
	f.Add(packMsg(f, probeMsg(testHost, []dns.RR{aRR(testHost, "10.77.1.9", 120)})))
	f.Add(packMsg(f, &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}, Answer: []dns.RR{aRR(testHost, "10.77.1.5", 120)}}))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		v, _ := judgeProbe(pkt, testHost, ours)
		var m dns.Msg
		if m.Unpack(pkt) != nil {
			if v != noConflict {
				t.Fatalf("verdict %d on an unparseable packet", v)
			}
			return
		}
		if v == conflict && !m.Response {
			t.Fatal("a query judged a conflict")
		}
		if v == lostTieBreak && m.Response {
			t.Fatal("a response judged a lost tie-break")
		}
	})
}

// FuzzConflictWindow: two answers heard in one window, whatever they hold,
// make an Observation of distinct, usable, not-own addresses; the same
// answer twice is never a conflict.
func FuzzConflictWindow(f *testing.F) {
	reply := func(id uint16, addr string) []byte {
		return packMsg(f, &dns.Msg{MsgHdr: dns.MsgHdr{Id: id, Response: true}, Answer: []dns.RR{aRR(testHost, addr, 120)}})
	}
	f.Add(reply(101, "10.77.1.2"), reply(101, "10.77.1.3"))
	f.Add(reply(101, "10.77.1.2"), reply(101, "10.77.1.2"))
	f.Add(reply(101, "10.77.1.1"), reply(102, "10.77.1.255"))
	link := Link{Name: "br0", Addr: netip.MustParseAddr("10.77.1.1"), Subnet: testSubnet}
	f.Fuzz(func(t *testing.T, p1, p2 []byte) {
		var obs Observation
		for _, p := range [][]byte{p1, p2} {
			if a, err := parseAnswerOn(p, mdnsFrom, testQuestions(), testHost, link); err == nil {
				obs.add(a)
			}
		}
		seen := map[netip.Addr]bool{}
		for _, a := range obs.Answers {
			if seen[a.Addr] || !usableIn(a.Addr, testSubnet) || link.isOwn(a.Addr) {
				t.Fatalf("observation %v", obs.Answers)
			}
			seen[a.Addr] = true
		}
		if string(p1) == string(p2) && len(obs.Answers) > 1 {
			t.Fatal("one answer twice made a conflict")
		}
	})
}

// TestNextName: --rename-on-conflict counts up as Avahi does.
func TestNextName(t *testing.T) {
	for in, want := range map[string]string{
		"ds.local.":     "ds-2.local.",
		"ds-2.local.":   "ds-3.local.",
		"ds-9.local.":   "ds-10.local.",
		"ds-1.local.":   "ds-1-2.local.",
		"my-ds.local.":  "my-ds-2.local.",
		"ds-x2.local.":  "ds-x2-2.local.",
		"a-b-7.local.":  "a-b-8.local.",
		"ubuntu.local.": "ubuntu-2.local.",
	} {
		if got, err := nextName(in); err != nil || got != want {
			t.Errorf("nextName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
