package mdns

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

const testHost = "ubuntu-4321-http-server.local."

var testSubnet = netip.MustParsePrefix("10.77.1.0/24")

func testQuestions() []question {
	return questions(testHost, [4]uint16{101, 102, 103, 104})
}

func rrA(name, ip string, ttl uint32) *dns.A {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET | 1<<15, Ttl: ttl}, A: net.ParseIP(ip).To4()}
}

func rrAAAA(name, ip string) *dns.AAAA {
	return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 10}, AAAA: net.ParseIP(ip)}
}

func rrSRV(instance, target string, port uint16) *dns.SRV {
	return &dns.SRV{Hdr: dns.RR_Header{Name: instance, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 10}, Target: target, Port: port}
}

func rrPTR(service, instance string) *dns.PTR {
	return &dns.PTR{Hdr: dns.RR_Header{Name: service, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 10}, Ptr: instance}
}

func answerMsg(id uint16, answer []dns.RR, extra []dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.Id = id
	m.Response = true
	m.Authoritative = true
	m.Answer = answer
	m.Extra = extra
	return m
}

func packMsg(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var mdnsFrom = netip.MustParseAddrPort("10.77.1.2:5353")

func TestParseAnswerAccepts(t *testing.T) {
	wsInstance := "ubuntu-4321-http-server [02:42:ac:11:00:02]._workstation._tcp.local."
	tests := []struct {
		name    string
		msg     *dns.Msg
		addr    string
		service string
		port    uint16
	}{
		{"direct A", answerMsg(101, []dns.RR{rrA(testHost, "10.77.1.2", 10)}, nil), "10.77.1.2", "A", 0},
		{"upper case name and no trailing dot match", answerMsg(101, []dns.RR{rrA("UBUNTU-4321-HTTP-SERVER.LOCAL.", "10.77.1.9", 10)}, nil), "10.77.1.9", "A", 0},
		{"AAAA beside A is ignored", answerMsg(101, []dns.RR{rrAAAA(testHost, "fd00::2"), rrA(testHost, "10.77.1.3", 10)}, nil), "10.77.1.3", "A", 0},
		{"A outside the subnet skipped for one inside", answerMsg(101, []dns.RR{rrA(testHost, "192.168.1.5", 10), rrA(testHost, "10.77.1.4", 10)}, nil), "10.77.1.4", "A", 0},
		{"workstation PTR with SRV and A in additional", answerMsg(102,
			[]dns.RR{rrPTR("_workstation._tcp.local.", wsInstance)},
			[]dns.RR{rrSRV(wsInstance, testHost, 9), rrA(testHost, "10.77.1.2", 10)}), "10.77.1.2", "_workstation._tcp", 9},
		{"http service", answerMsg(103,
			[]dns.RR{rrPTR("_http._tcp.local.", "datastore._http._tcp.local.")},
			[]dns.RR{rrSRV("datastore._http._tcp.local.", testHost, 80), rrA(testHost, "10.77.1.2", 10)}), "10.77.1.2", "_http._tcp", 80},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := parseAnswer(packMsg(t, tt.msg), mdnsFrom, testQuestions(), testHost, testSubnet)
			if err != nil {
				t.Fatalf("rejected a valid answer: %v", err)
			}
			if a.Addr != netip.MustParseAddr(tt.addr) || a.Service != tt.service || a.Port != tt.port {
				t.Fatalf("got %v %q port %d, want %s %q port %d", a.Addr, a.Service, a.Port, tt.addr, tt.service, tt.port)
			}
		})
	}
}

func TestParseAnswerRejects(t *testing.T) {
	valid := func() *dns.Msg { return answerMsg(101, []dns.RR{rrA(testHost, "10.77.1.2", 10)}, nil) }
	notResponse := valid()
	notResponse.Response = false
	servfail := valid()
	servfail.Rcode = dns.RcodeServerFailure
	truncated := packMsg(t, valid())
	truncated = truncated[:len(truncated)-3]
	// A name whose compression pointer points at itself: a loop.
	loop := []byte{0, 101, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 10, 77, 1, 2}

	tests := []struct {
		name string
		pkt  []byte
		from netip.AddrPort
		want error
	}{
		{"not from port 5353", packMsg(t, valid()), netip.MustParseAddrPort("10.77.1.2:5354"), errNotMDNSPort},
		{"query, not response", packMsg(t, notResponse), mdnsFrom, errNotResponse},
		{"another ID", packMsg(t, answerMsg(999, []dns.RR{rrA(testHost, "10.77.1.2", 10)}, nil)), mdnsFrom, errUnknownID},
		{"name merely contains the wanted one", packMsg(t, answerMsg(101, []dns.RR{rrA("ubuntu-4321-http-server-2.local.", "10.77.1.2", 10)}, nil)), mdnsFrom, errNoAddress},
		{"name with a prefix", packMsg(t, answerMsg(101, []dns.RR{rrA("my-ubuntu-4321-http-server.local.", "10.77.1.2", 10)}, nil)), mdnsFrom, errNoAddress},
		{"subdomain of the wanted name", packMsg(t, answerMsg(101, []dns.RR{rrA("x.ubuntu-4321-http-server.local.", "10.77.1.2", 10)}, nil)), mdnsFrom, errNoAddress},
		{"AAAA only", packMsg(t, answerMsg(101, []dns.RR{rrAAAA(testHost, "fd00::2")}, nil)), mdnsFrom, errNoAddress},
		{"outside the bridge subnet", packMsg(t, answerMsg(101, []dns.RR{rrA(testHost, "10.77.2.2", 10)}, nil)), mdnsFrom, errNoAddress},
		{"network address", packMsg(t, answerMsg(101, []dns.RR{rrA(testHost, "10.77.1.0", 10)}, nil)), mdnsFrom, errNoAddress},
		{"broadcast address", packMsg(t, answerMsg(101, []dns.RR{rrA(testHost, "10.77.1.255", 10)}, nil)), mdnsFrom, errNoAddress},
		{"goodbye (TTL 0)", packMsg(t, answerMsg(101, []dns.RR{rrA(testHost, "10.77.1.2", 0)}, nil)), mdnsFrom, errNoAddress},
		{"server failure", packMsg(t, servfail), mdnsFrom, nil},
		{"truncated", truncated, mdnsFrom, nil},
		{"compression loop", loop, mdnsFrom, nil},
		{"empty", nil, mdnsFrom, nil},
		{"PTR answer whose SRV names another host", packMsg(t, answerMsg(102,
			[]dns.RR{rrPTR("_workstation._tcp.local.", "x._workstation._tcp.local.")},
			[]dns.RR{rrSRV("x._workstation._tcp.local.", "ubuntu-4321-http-server-2.local.", 9), rrA(testHost, "10.77.1.2", 10)})), mdnsFrom, nil},
		{"PTR answer with an SRV of another service type", packMsg(t, answerMsg(102,
			nil, []dns.RR{rrSRV("x._ssh._tcp.local.", testHost, 22), rrA(testHost, "10.77.1.2", 10)})), mdnsFrom, nil},
		{"PTR answer with no A for the target", packMsg(t, answerMsg(103,
			nil, []dns.RR{rrSRV("x._http._tcp.local.", testHost, 80), rrA("other.local.", "10.77.1.2", 10)})), mdnsFrom, errNoAddress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := parseAnswer(tt.pkt, tt.from, testQuestions(), testHost, testSubnet)
			if err == nil {
				t.Fatalf("accepted %v", a.Addr)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestQuestionsAskAllAtOnce(t *testing.T) {
	qs := testQuestions()
	want := map[string]uint16{
		testHost:                   dns.TypeA,
		"_workstation._tcp.local.": dns.TypePTR,
		"_http._tcp.local.":        dns.TypePTR,
		"_https._tcp.local.":       dns.TypePTR,
	}
	if len(qs) != len(want) {
		t.Fatalf("%d questions, want %d", len(qs), len(want))
	}
	for _, q := range qs {
		b, err := q.pack()
		if err != nil {
			t.Fatal(err)
		}
		var m dns.Msg
		if err := m.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if m.Response || m.Id != q.id || len(m.Question) != 1 {
			t.Fatalf("bad query %v", m)
		}
		got := m.Question[0]
		if want[got.Name] != got.Qtype || got.Qclass != dns.ClassINET|1<<15 {
			t.Fatalf("question %v not expected", got)
		}
	}
}

func TestRandomIDsDistinctNonZero(t *testing.T) {
	for range 1000 {
		ids, err := randomIDs()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[uint16]bool{}
		for _, id := range ids {
			if id == 0 || seen[id] {
				t.Fatalf("ids %v: zero or repeated", ids)
			}
			seen[id] = true
		}
	}
}

func TestUsableIn(t *testing.T) {
	tests := []struct {
		addr, prefix string
		want         bool
	}{
		{"10.0.0.5", "10.0.0.0/24", true},
		{"10.0.0.0", "10.0.0.0/24", false},
		{"10.0.0.255", "10.0.0.0/24", false},
		{"10.0.1.5", "10.0.0.0/24", false},
		{"10.0.0.1", "10.0.0.0/31", true},
		{"10.0.0.0", "10.0.0.0/31", true},
		{"172.16.3.255", "172.16.0.0/22", false},
		{"172.16.3.254", "172.16.0.0/22", true},
	}
	for _, tt := range tests {
		if got := usableIn(netip.MustParseAddr(tt.addr), netip.MustParsePrefix(tt.prefix)); got != tt.want {
			t.Errorf("usableIn(%s, %s) = %v, want %v", tt.addr, tt.prefix, got, tt.want)
		}
	}
}

// FuzzParseAnswer feeds arbitrary packets to the validator: it must never
// panic, and whatever it accepts must satisfy every acceptance rule.
func FuzzParseAnswer(f *testing.F) {
	f.Add(packMsg(f, answerMsg(101, []dns.RR{rrA(testHost, "10.77.1.2", 10)}, nil)))
	f.Add(packMsg(f, answerMsg(102, []dns.RR{rrPTR("_workstation._tcp.local.", "a._workstation._tcp.local.")},
		[]dns.RR{rrSRV("a._workstation._tcp.local.", testHost, 9), rrA(testHost, "10.77.1.2", 10)})))
	f.Add([]byte{0, 101, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 10, 77, 1, 2})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		a, err := parseAnswer(pkt, mdnsFrom, testQuestions(), testHost, testSubnet)
		if err != nil {
			return
		}
		if !usableIn(a.Addr, testSubnet) {
			t.Fatalf("accepted %v outside %v", a.Addr, testSubnet)
		}
		var m dns.Msg
		if m.Unpack(pkt) != nil || !m.Response {
			t.Fatal("accepted a packet that is not a valid response")
		}
		if _, ok := findQuestion(testQuestions(), m.Id); !ok {
			t.Fatalf("accepted ID %d", m.Id)
		}
	})
}
