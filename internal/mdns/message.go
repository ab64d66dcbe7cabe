package mdns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// browsed are the DNS-SD types the querier browses for a host, as the
// fully qualified names asked for.
var browsed = []string{
	WorkstationService + LocalSuffix + ".",
	HTTPService + LocalSuffix + ".",
	HTTPSService + LocalSuffix + ".",
}

// ServiceA is what Answer.Service says when a direct A question answered.
const ServiceA = "A"

// question is one outstanding mDNS question, identified by its message ID.
type question struct {
	id    uint16
	name  string // the wanted host for A, the service type for PTR
	qtype uint16
}

// questions lists what the querier asks for host, all at once: the host's
// A record directly and the service browses whose SRV targets name it.
func questions(host string, ids [4]uint16) []question {
	qs := []question{{id: ids[0], name: host, qtype: dns.TypeA}}
	for i, svc := range browsed {
		qs = append(qs, question{id: ids[i+1], name: svc, qtype: dns.TypePTR})
	}
	return qs
}

// pack builds the one-shot legacy-unicast query for q. The QU bit asks
// responders that only answer unicast when told to (hashicorp/mdns) to do
// so; Avahi answers any query from a port other than 5353 by unicast anyway.
func (q question) pack() ([]byte, error) {
	m := new(dns.Msg)
	m.Id = q.id
	m.RecursionDesired = false
	m.Question = []dns.Question{{Name: q.name, Qtype: q.qtype, Qclass: dns.ClassINET | CacheFlush}}
	return m.Pack()
}

// Answer is a validated address for the wanted host.
type Answer struct {
	Addr    netip.Addr
	TTL     time.Duration
	Service string // ServiceA or the DNS-SD type whose SRV named the host, e.g. "_workstation._tcp"
	Port    uint16 // the SRV port, 0 for a direct A answer
}

var (
	errNotResponse = errors.New("not a response")
	errNotMDNSPort = errors.New("not from the mDNS port 5353")
	errUnknownID   = errors.New("answers no question of ours")
	errNoAddress   = errors.New("no IPv4 address for the wanted host")
)

// parseAnswer validates one packet received on a link whose subnet is
// subnet. Everything in it is untrusted: any doubt rejects the packet.
func parseAnswer(pkt []byte, from netip.AddrPort, pending []question, host string, subnet netip.Prefix) (Answer, error) {
	return parseAnswerOn(pkt, from, pending, host, Link{Subnet: subnet})
}

// parseAnswerOn is parseAnswer on link: the address must also be none of
// the link's own.
func parseAnswerOn(pkt []byte, from netip.AddrPort, pending []question, host string, link Link) (Answer, error) {
	if from.Port() != Port {
		return Answer{}, errNotMDNSPort
	}
	var m dns.Msg
	if err := m.Unpack(pkt); err != nil {
		return Answer{}, fmt.Errorf("malformed packet: %w", err)
	}
	if !m.Response {
		return Answer{}, errNotResponse
	}
	if m.Opcode != dns.OpcodeQuery || m.Rcode != dns.RcodeSuccess {
		return Answer{}, fmt.Errorf("opcode %d rcode %d", m.Opcode, m.Rcode)
	}
	q, ok := findQuestion(pending, m.Id)
	if !ok {
		return Answer{}, errUnknownID
	}
	records := make([]dns.RR, 0, len(m.Answer)+len(m.Extra))
	records = append(append(records, m.Answer...), m.Extra...)

	a := Answer{Service: ServiceA}
	if q.qtype == dns.TypePTR {
		srv, ok := serviceTarget(records, q.name, host)
		if !ok {
			return Answer{}, fmt.Errorf("no %s service whose target is %s", q.name, host)
		}
		a.Service = strings.TrimSuffix(q.name, LocalSuffix+".")
		a.Port = srv.Port
	}
	addr, ttl, ok := hostAddress(records, host, link)
	if !ok {
		return Answer{}, errNoAddress
	}
	a.Addr, a.TTL = addr, ttl
	return a, nil
}

func findQuestion(pending []question, id uint16) (question, bool) {
	for _, q := range pending {
		if q.id == id {
			return q, true
		}
	}
	return question{}, false
}

// serviceTarget finds an SRV record of an instance of service whose target
// is exactly host, e.g. "ds [aa:bb:..]._workstation._tcp.local." -> "ds.local.".
func serviceTarget(records []dns.RR, service, host string) (*dns.SRV, bool) {
	for _, rr := range records {
		srv, ok := rr.(*dns.SRV)
		if !ok || srv.Hdr.Ttl == 0 {
			continue
		}
		name := strings.ToLower(srv.Hdr.Name)
		if !strings.HasSuffix(name, "."+service) || !SameName(srv.Target, host) {
			continue
		}
		return srv, true
	}
	return nil, false
}

// hostAddress picks the first A record named exactly host whose address
// lies in the link's subnet, can be dialed there and is not the node's own. AAAA records are ignored: the
// bridges are IPv4 and an IPv6-only answer must not break resolution.
// A TTL of zero is a goodbye (RFC 6762 §10.1), not an address.
func hostAddress(records []dns.RR, host string, link Link) (netip.Addr, time.Duration, bool) {
	for _, rr := range records {
		a, ok := rr.(*dns.A)
		if !ok || a.Hdr.Ttl == 0 || a.Hdr.Class&^CacheFlush != dns.ClassINET || !SameName(a.Hdr.Name, host) {
			continue
		}
		addr, ok := netip.AddrFromSlice(a.A.To4())
		if !ok || !usableIn(addr, link.Subnet) || link.isOwn(addr) {
			continue
		}
		return addr, time.Duration(a.Hdr.Ttl) * time.Second, true
	}
	return netip.Addr{}, 0, false
}

// usableIn reports whether addr is a host address inside subnet: not the
// network or broadcast address, nor multicast or unspecified.
func usableIn(addr netip.Addr, subnet netip.Prefix) bool {
	if !addr.Is4() || !subnet.Contains(addr) || addr.IsMulticast() || addr.IsUnspecified() {
		return false
	}
	if subnet.Bits() >= 31 {
		return true // point-to-point: both addresses are hosts (RFC 3021)
	}
	if addr == subnet.Masked().Addr() {
		return false
	}
	return addr != broadcast(subnet)
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	hostBits := 32 - p.Bits()
	for i := 3; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	return netip.AddrFrom4(b)
}

// isOwn reports whether addr is one of the node's addresses on the link.
func (l Link) isOwn(addr netip.Addr) bool {
	return addr == l.Addr || slices.Contains(l.Own, addr)
}
