package dsserver

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	// Aliased: this package's own mDNS noun is internal/mdns; hashicorp's
	// only builds the DNS-SD records of the services here.
	hcmdns "github.com/hashicorp/mdns"
	"github.com/miekg/dns"

	"github.com/localds/localds/internal/mdns"
)

// Service is one DNS-SD service the responder advertises for the host,
// e.g. {Type: "_http._tcp", Port: 80}.
type Service struct {
	Type string   // "_http._tcp"
	Port int      // the TCP port the service listens on
	TXT  []string // TXT record strings, e.g. "path=/"
}

const (
	// workstationPort is what Avahi publishes with publish-workstation=yes;
	// the instance is "host [aa:bb:cc:dd:ee:ff]".
	workstationPort = 9
	// servicesEnum is the DNS-SD service type enumeration name (RFC 6763 §9).
	servicesEnum = "_services._dns-sd._udp.local."
)

var _ mdns.Zone = (*zone)(nil)

// zone is what the datastore answers on one interface (an mdns.Zone): the
// host's A records from the interface's current IPv4 addresses and the
// DNS-SD records of the services. The service records come from
// hashicorp/mdns's MDNSService; the host records and the choice of which
// address to answer with are ours, so an interface never answers with
// another's address.
type zone struct {
	host     string         // "name.local.", lower case
	addrs    []netip.Prefix // IPv4 addresses of the interface, with their subnets
	services []*hcmdns.MDNSService
}

// zoneFunc is the mdns.ZoneFunc of services, besides the workstation
// service that is always advertised.
func zoneFunc(services []Service) mdns.ZoneFunc {
	return func(host string, mac net.HardwareAddr, addrs []netip.Prefix) (mdns.Zone, error) {
		return newZone(host, mac, addrs, services)
	}
}

// newZone builds the zone for one interface. mac names the workstation
// instance the way Avahi does; it may be empty. With no address there are
// no records at all (MDNSService would fall back to a DNS lookup).
func newZone(host string, mac net.HardwareAddr, addrs []netip.Prefix, services []Service) (*zone, error) {
	z := &zone{host: host, addrs: addrs}
	if len(addrs) == 0 {
		return z, nil
	}
	ips := make([]net.IP, 0, len(addrs))
	for _, p := range addrs {
		ips = append(ips, net.IP(p.Addr().AsSlice()))
	}
	label := strings.TrimSuffix(host, ".local.")
	// The workstation's TXT is one empty string: a TXT record must hold at
	// least one (RFC 6763 §6.1), as Avahi publishes it.
	all := append([]Service{{Type: mdns.WorkstationService, Port: workstationPort, TXT: []string{""}}}, services...)
	for _, svc := range all {
		instance := label
		if svc.Type == mdns.WorkstationService && len(mac) > 0 {
			instance = fmt.Sprintf("%s [%s]", label, mac)
		}
		s, err := hcmdns.NewMDNSService(escapeLabel(instance), svc.Type, "local.", host, svc.Port, ips, svc.TXT)
		if err != nil {
			return nil, fmt.Errorf("mdns service %s: %w", svc.Type, err)
		}
		z.services = append(z.services, s)
	}
	return z, nil
}

// escapeLabel turns one label into the presentation form miekg/dns uses
// when it unpacks a name, so that an instance name with spaces, dots or
// brackets compares equal to the name in an incoming question.
func escapeLabel(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' || c == ' ' || c == '\'' || c == '@' || c == ';' || c == '(' || c == ')' || c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return strings.ToLower(b.String())
}

// pick returns the addresses to answer a querier at src with: those whose
// subnet holds src, or all of them when src is on none (a multicast
// response is seen by everyone on the link).
func (z *zone) pick(src netip.Addr) []netip.Prefix {
	var on []netip.Prefix
	for _, p := range z.addrs {
		if p.Contains(src) {
			on = append(on, p)
		}
	}
	if len(on) == 0 {
		return z.addrs
	}
	return on
}

// hostA returns A records of the host for the given addresses.
func (z *zone) hostA(addrs []netip.Prefix) []dns.RR {
	rrs := make([]dns.RR, 0, len(addrs))
	for _, p := range addrs {
		rrs = append(rrs, &dns.A{
			Hdr: dns.RR_Header{Name: z.host, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: mdns.HostTTL},
			A:   net.IP(p.Addr().AsSlice()),
		})
	}
	return rrs
}

// hostNSEC asserts that the host has A records and nothing else.
func (z *zone) hostNSEC() dns.RR {
	return &dns.NSEC{
		Hdr:        dns.RR_Header{Name: z.host, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: mdns.HostTTL},
		NextDomain: z.host,
		TypeBitMap: []uint16{dns.TypeA},
	}
}

// Records answers one question for a querier at src: the records that
// answer it, and the additional records that make the answer usable at
// once. PTR answers go in the answer section and the SRV, TXT and A
// records in the additional one, as Avahi does and RFC 6763 §12 asks, so
// a one-shot browse resolves at once.
func (z *zone) Records(q dns.Question, src netip.Addr) (answer, extra []dns.RR) {
	if len(z.addrs) == 0 {
		return nil, nil
	}
	if cls := q.Qclass &^ mdns.CacheFlush; cls != dns.ClassINET && cls != dns.ClassANY {
		return nil, nil
	}
	name := strings.ToLower(q.Name)
	addrs := z.pick(src)
	if name == z.host {
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			// IPv4 only: the NSEC listing A alone tells a dual-stack
			// querier there is no AAAA to wait for (RFC 6762 §6.2).
			return z.hostA(addrs), []dns.RR{z.hostNSEC()}
		}
		return nil, nil // no AAAA: the NSEC came with the A answer
	}
	lq := dns.Question{Name: name, Qtype: q.Qtype, Qclass: dns.ClassINET}
	seen := map[string]bool{}
	for _, s := range z.services {
		for _, rr := range s.Records(lq) {
			if rr.Header().Rrtype == dns.TypeA || rr.Header().Rrtype == dns.TypeAAAA {
				continue // the host's addresses are added below, filtered
			}
			key := rr.String()
			if seen[key] {
				continue
			}
			seen[key] = true
			if strings.EqualFold(rr.Header().Name, name) && (q.Qtype == dns.TypeANY || rr.Header().Rrtype == q.Qtype) {
				answer = append(answer, rr)
			} else {
				extra = append(extra, rr)
			}
		}
	}
	if len(answer) == 0 {
		return nil, nil
	}
	for _, rr := range append(answer, extra...) {
		if srv, ok := rr.(*dns.SRV); ok && strings.EqualFold(srv.Target, z.host) {
			extra = append(extra, z.hostA(addrs)...)
			break
		}
	}
	return answer, extra
}

// Announcement is the unsolicited response (RFC 6762 §8.3) listing every
// record of the zone, or with ttl 0 the goodbye (§10.1).
func (z *zone) Announcement(ttl uint32) *dns.Msg {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}, Compress: true}
	if len(z.addrs) == 0 {
		return nil
	}
	m.Answer = append(m.Answer, z.hostA(z.addrs)...)
	for _, s := range z.services {
		svc := strings.TrimSuffix(s.Service, ".") + ".local."
		m.Answer = append(m.Answer, &dns.PTR{
			Hdr: dns.RR_Header{Name: servicesEnum, Rrtype: dns.TypePTR, Class: dns.ClassINET},
			Ptr: svc,
		})
		m.Answer = append(m.Answer, s.Records(dns.Question{Name: svc, Qtype: dns.TypePTR, Qclass: dns.ClassINET})...)
	}
	m.Answer = mdns.Dedupe(m.Answer) // each service brings the host's A
	for _, rr := range m.Answer {
		h := rr.Header()
		h.Ttl = ttl
		if ttl != 0 && rr.Header().Rrtype != dns.TypePTR {
			h.Class |= mdns.CacheFlush
		}
	}
	return m
}
