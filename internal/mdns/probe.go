package mdns

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Probing (RFC 6762 §8.1): three probes 250 ms apart before a name is
// answered for, after a random wait of up to 250 ms.
const (
	probeCount    = 3
	probeInterval = 250 * time.Millisecond
	probeJitter   = 250 * time.Millisecond
	// probeDefer is how long the loser of a simultaneous probe waits
	// before probing again (§8.2); maxProbeRounds bounds the rounds.
	probeDefer     = time.Second
	maxProbeRounds = 15
)

// verdict is what one packet means for a probe in progress.
type verdict int

const (
	noConflict verdict = iota
	// conflict: a response carries a record of the probed name that is
	// not ours (§8.1): someone holds the name.
	conflict
	// lostTieBreak: another host probes for the name at the same time
	// with records that sort later than ours (§8.2): we defer and retry.
	lostTieBreak
)

// hostRecords are the records a responder proposes for host on a link: an
// A record per address.
func hostRecords(host string, subnets []netip.Prefix) []dns.RR {
	rrs := make([]dns.RR, 0, len(subnets))
	for _, p := range subnets {
		rrs = append(rrs, &dns.A{
			Hdr: dns.RR_Header{Name: host, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: HostTTL},
			A:   net.IP(p.Addr().AsSlice()),
		})
	}
	return rrs
}

// probeMsg is one probe: a QU question of type ANY for host, and the
// proposed records in the authority section.
func probeMsg(host string, ours []dns.RR) *dns.Msg {
	return &dns.Msg{
		Question: []dns.Question{{Name: host, Qtype: dns.TypeANY, Qclass: dns.ClassINET | CacheFlush}},
		Ns:       ours,
	}
}

// judgeProbe says what pkt, received while probing for host with ours,
// means, and a description of the other side for the error. Everything in
// pkt is untrusted; doubt is no conflict (the probe goes on).
func judgeProbe(pkt []byte, host string, ours []dns.RR) (verdict, string) {
	if len(pkt) > MaxPacket {
		return noConflict, ""
	}
	var m dns.Msg
	if m.Unpack(pkt) != nil || m.Opcode != dns.OpcodeQuery {
		return noConflict, ""
	}
	if m.Response {
		var theirs []string
		for _, rr := range append(append([]dns.RR{}, m.Answer...), m.Extra...) {
			if !SameName(rr.Header().Name, host) || rr.Header().Ttl == 0 || isOurs(rr, ours) {
				continue
			}
			theirs = append(theirs, describeRR(rr))
		}
		if len(theirs) > 0 {
			return conflict, strings.Join(theirs, ", ")
		}
		return noConflict, ""
	}
	// A query: another host's probe if its authority section names host.
	var theirs []dns.RR
	for _, rr := range m.Ns {
		if SameName(rr.Header().Name, host) {
			theirs = append(theirs, rr)
		}
	}
	if len(theirs) == 0 {
		return noConflict, ""
	}
	if compareRecords(ours, theirs) < 0 {
		return lostTieBreak, describeAll(theirs)
	}
	return noConflict, ""
}

// isOurs reports whether rr equals one of ours (name, type, class, data).
func isOurs(rr dns.RR, ours []dns.RR) bool {
	for _, o := range ours {
		if rr.Header().Rrtype == o.Header().Rrtype && rr.Header().Class&^CacheFlush == o.Header().Class&^CacheFlush &&
			bytes.Equal(rdata(rr), rdata(o)) {
			return true
		}
	}
	return false
}

// compareRecords is the simultaneous-probe tie-break of RFC 6762 §8.2:
// both sets sorted, compared pairwise by class, type and rdata bytes; the
// first difference decides, and a set that runs out first is earlier.
// Negative means ours sorts earlier: we lose.
func compareRecords(ours, theirs []dns.RR) int {
	a, b := sortedRecords(ours), sortedRecords(theirs)
	for i := 0; i < len(a) && i < len(b); i++ {
		if c := compareRR(a[i], b[i]); c != 0 {
			return c
		}
	}
	return len(a) - len(b)
}

func sortedRecords(rrs []dns.RR) []dns.RR {
	s := slices.Clone(rrs)
	slices.SortFunc(s, compareRR)
	return s
}

func compareRR(x, y dns.RR) int {
	if c := int(x.Header().Class&^CacheFlush) - int(y.Header().Class&^CacheFlush); c != 0 {
		return c
	}
	if c := int(x.Header().Rrtype) - int(y.Header().Rrtype); c != 0 {
		return c
	}
	return bytes.Compare(rdata(x), rdata(y))
}

// rdata is rr's uncompressed wire rdata; nil if it cannot be packed.
func rdata(rr dns.RR) []byte {
	buf := make([]byte, dns.Len(rr)+1)
	n, err := dns.PackRR(rr, buf, 0, nil, false)
	if err != nil {
		return nil
	}
	nameLen, err := dns.PackDomainName(dns.Fqdn(rr.Header().Name), make([]byte, 256), 0, nil, false)
	hdr := nameLen + 10 // name, then type, class, ttl, rdlength
	if err != nil || n < hdr {
		return nil
	}
	return buf[hdr:n]
}

func describeRR(rr dns.RR) string {
	switch r := rr.(type) {
	case *dns.A:
		return "A " + r.A.String()
	case *dns.AAAA:
		return "AAAA " + r.AAAA.String()
	default:
		return dns.TypeToString[rr.Header().Rrtype]
	}
}

func describeAll(rrs []dns.RR) string {
	s := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		s = append(s, describeRR(rr))
	}
	return strings.Join(s, ", ")
}

// ConflictError is the error a responder stops with when its name is
// taken on a link: it does not take a name another host holds.
type ConflictError struct {
	Host      string
	Interface string
	From      netip.Addr // who answered our probe
	Records   string     // what they hold, e.g. "A 10.77.1.2"
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("mdns: the name %s is already in use on %s (%s answered our probe with %s): not taking it",
		e.Host, e.Interface, e.From, e.Records)
}
