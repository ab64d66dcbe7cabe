package mdns

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

const (
	// maxQuestions bounds the work one packet can cause.
	maxQuestions = 32
	// legacySize is the reply size a legacy resolver without EDNS0 takes.
	legacySize = 512
	// MulticastSize is the largest response sent: one Ethernet frame.
	MulticastSize = 1472
)

var (
	errOversized  = errors.New("packet larger than 9000 bytes")
	errNotQuery   = errors.New("not a standard query")
	errOffLink    = errors.New("unicast reply wanted by a querier outside the interface's subnets")
	errNoQuestion = errors.New("no question")
)

// Reply is one message to send in answer to a query.
type Reply struct {
	Msg *dns.Msg
	To  netip.AddrPort // the querier, or Group for a multicast reply
}

// Respond turns one packet received on an interface whose IPv4 subnets are
// subnets into the replies to send, answering from z. Everything in pkt is
// untrusted; no replies means "stay silent".
//
// Unlike hashicorp/mdns's Server.handleQuery it:
//   - answers a legacy query (source port not 5353, RFC 6762 §6.7) by
//     unicast to the querier whether or not the QU bit is set, echoing the
//     ID, repeating the question, with TTLs capped at LegacyTTL and no
//     cache-flush bits;
//   - sends multicast responses to the group (hashicorp sends every answer
//     back to the querier's address);
//   - ignores responses (a QR=1 packet is never a question for us), and
//     answers unicast only to queriers on the interface's subnets.
func Respond(z Zone, subnets []netip.Prefix, pkt []byte, from netip.AddrPort) ([]Reply, error) {
	if len(pkt) > MaxPacket {
		return nil, errOversized
	}
	var q dns.Msg
	if err := q.Unpack(pkt); err != nil {
		return nil, fmt.Errorf("malformed query: %w", err)
	}
	if q.Response {
		return nil, nil // another responder's answer or announcement
	}
	if q.Opcode != dns.OpcodeQuery || q.Rcode != dns.RcodeSuccess {
		return nil, errNotQuery
	}
	if len(q.Question) == 0 {
		return nil, errNoQuestion
	}
	questions := q.Question
	if len(questions) > maxQuestions {
		questions = questions[:maxQuestions]
	}
	src := from.Addr().Unmap()
	legacy := from.Port() != Port
	// A probe (a query with records in its authority section) is answered
	// by multicast whatever its QU bit: the defence of a name must reach
	// every host on the link (RFC 6762 §8.1).
	probe := !legacy && len(q.Ns) > 0
	known := knownAnswers(q.Answer)

	var uniAns, uniExtra, mcAns, mcExtra []dns.RR
	for _, question := range questions {
		ans, extra := z.Records(question, src)
		ans = suppressKnown(ans, known)
		if len(ans) == 0 {
			continue
		}
		if legacy || (!probe && question.Qclass&CacheFlush != 0) { // QU bit: unicast wanted
			uniAns, uniExtra = append(uniAns, ans...), append(uniExtra, extra...)
		} else {
			mcAns, mcExtra = append(mcAns, ans...), append(mcExtra, extra...)
		}
	}
	var out []Reply
	if len(uniAns) > 0 {
		if !onLink(subnets, src) {
			return nil, errOffLink
		}
		m := response(q.Id, uniAns, uniExtra)
		size := MulticastSize
		if legacy {
			m.Question = questions
			size = legacySize
			if opt := q.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
				size = min(int(opt.UDPSize()), MulticastSize)
			}
			capTTL(m, LegacyTTL)
		} else {
			setCacheFlush(m)
		}
		m.Truncate(size)
		out = append(out, Reply{Msg: m, To: netip.AddrPortFrom(src, from.Port())})
	}
	if len(mcAns) > 0 {
		m := response(0, mcAns, mcExtra)
		setCacheFlush(m)
		m.Truncate(MulticastSize)
		out = append(out, Reply{Msg: m, To: Group})
	}
	return out, nil
}

// onLink reports whether src lies in one of the interface's subnets, the
// source address check RFC 6762 §11 asks of unicast replies.
func onLink(subnets []netip.Prefix, src netip.Addr) bool {
	for _, p := range subnets {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// response builds an authoritative mDNS response (RFC 6762 §18).
func response(id uint16, ans, extra []dns.RR) *dns.Msg {
	ans = Dedupe(ans)
	inAns := map[string]bool{}
	for _, rr := range ans {
		inAns[rr.String()] = true
	}
	var ex []dns.RR
	for _, rr := range Dedupe(extra) {
		if !inAns[rr.String()] {
			ex = append(ex, rr)
		}
	}
	return &dns.Msg{
		MsgHdr:   dns.MsgHdr{Id: id, Response: true, Authoritative: true, Opcode: dns.OpcodeQuery},
		Compress: true,
		Answer:   ans,
		Extra:    ex,
	}
}

func capTTL(m *dns.Msg, ttl uint32) {
	for _, rr := range append(append([]dns.RR{}, m.Answer...), m.Extra...) {
		if h := rr.Header(); h.Ttl > ttl {
			h.Ttl = ttl
		}
	}
}

// setCacheFlush marks the host's and instances' unique records (A, SRV,
// TXT) as RFC 6762 §10.2 asks; shared PTR records keep the bit clear.
func setCacheFlush(m *dns.Msg) {
	for _, rr := range append(append([]dns.RR{}, m.Answer...), m.Extra...) {
		if h := rr.Header(); h.Rrtype != dns.TypePTR {
			h.Class |= CacheFlush
		}
	}
}

// knownAnswers indexes the known-answer section of a query (RFC 6762
// §7.1) by record identity, with the TTL the querier still has.
func knownAnswers(rrs []dns.RR) map[string]uint32 {
	if len(rrs) == 0 {
		return nil
	}
	known := make(map[string]uint32, len(rrs))
	for i, rr := range rrs {
		if i == maxQuestions*4 {
			break // bounded work per packet
		}
		known[rrKey(rr)] = rr.Header().Ttl
	}
	return known
}

// suppressKnown drops the answers the querier already holds with at least
// half their TTL left (§7.1).
func suppressKnown(ans []dns.RR, known map[string]uint32) []dns.RR {
	if len(known) == 0 {
		return ans
	}
	out := ans[:0:0]
	for _, rr := range ans {
		if ttl, ok := known[rrKey(rr)]; ok && ttl >= rr.Header().Ttl/2 {
			continue
		}
		out = append(out, rr)
	}
	return out
}

// rrKey identifies a record by name (case-insensitive), type, class
// (without the cache-flush bit) and data, not TTL.
func rrKey(rr dns.RR) string {
	c := dns.Copy(rr)
	h := c.Header()
	h.Name = strings.ToLower(h.Name)
	h.Class &^= CacheFlush
	h.Ttl = 0
	return c.String()
}
