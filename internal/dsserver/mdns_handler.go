package dsserver

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
)

const (
	mdnsPort = 5353
	// maxPacket is the largest mDNS message a responder must accept
	// (RFC 6762 §17); anything larger is dropped unread.
	maxPacket = 9000
	// maxQuestions bounds the work one packet can cause.
	maxQuestions = 32
	// legacySize is the reply size a legacy resolver without EDNS0 takes;
	// multicastSize keeps a response inside one Ethernet frame.
	legacySize    = 512
	multicastSize = 1472
)

var mdnsGroup = netip.AddrPortFrom(netip.AddrFrom4([4]byte{224, 0, 0, 251}), mdnsPort)

var (
	errOversized  = errors.New("packet larger than 9000 bytes")
	errNotQuery   = errors.New("not a standard query")
	errOffLink    = errors.New("unicast reply wanted by a querier outside the interface's subnets")
	errNoQuestion = errors.New("no question")
)

// reply is one message to send in answer to a query.
type reply struct {
	msg *dns.Msg
	to  netip.AddrPort // the querier, or the mDNS group for a multicast reply
}

// handle turns one packet received on an interface into the replies to
// send. Everything in pkt is untrusted; a nil slice means "stay silent".
//
// Unlike hashicorp/mdns's Server.handleQuery it:
//   - answers a legacy query (source port not 5353, RFC 6762 §6.7) by
//     unicast to the querier whether or not the QU bit is set, echoing the
//     ID, repeating the question, with TTLs capped at 10 s and no
//     cache-flush bits;
//   - puts PTR answers in the answer section and the SRV, TXT and A records
//     in the additional section, so a one-shot browse resolves at once;
//   - sends multicast responses to the group (hashicorp sends every answer
//     back to the querier's address);
//   - ignores responses (a QR=1 packet is never a question for us), and
//     answers unicast only to queriers on the interface's subnets.
func (z *zone) handle(pkt []byte, from netip.AddrPort) ([]reply, error) {
	if len(pkt) > maxPacket {
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
	legacy := from.Port() != mdnsPort

	var uniAns, uniExtra, mcAns, mcExtra []dns.RR
	for _, question := range questions {
		ans, extra := z.records(question, src)
		if len(ans) == 0 {
			continue
		}
		if legacy || question.Qclass&cacheFlush != 0 { // QU bit: unicast wanted
			uniAns, uniExtra = append(uniAns, ans...), append(uniExtra, extra...)
		} else {
			mcAns, mcExtra = append(mcAns, ans...), append(mcExtra, extra...)
		}
	}
	var out []reply
	if len(uniAns) > 0 {
		if !z.onLink(src) {
			return nil, errOffLink
		}
		m := response(q.Id, uniAns, uniExtra)
		size := multicastSize
		if legacy {
			m.Question = questions
			size = legacySize
			if opt := q.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
				size = min(int(opt.UDPSize()), multicastSize)
			}
			capTTL(m, legacyTTL)
		} else {
			setCacheFlush(m)
		}
		m.Truncate(size)
		out = append(out, reply{msg: m, to: netip.AddrPortFrom(src, from.Port())})
	}
	if len(mcAns) > 0 {
		m := response(0, mcAns, mcExtra)
		setCacheFlush(m)
		m.Truncate(multicastSize)
		out = append(out, reply{msg: m, to: mdnsGroup})
	}
	return out, nil
}

// response builds an authoritative mDNS response (RFC 6762 §18).
func response(id uint16, ans, extra []dns.RR) *dns.Msg {
	ans = dedupe(ans)
	inAns := map[string]bool{}
	for _, rr := range ans {
		inAns[rr.String()] = true
	}
	var ex []dns.RR
	for _, rr := range dedupe(extra) {
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
			h.Class |= cacheFlush
		}
	}
}
