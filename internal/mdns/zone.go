package mdns

import (
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// Zone is what a responder answers with on one interface. Its records may
// only carry the interface's own addresses, so that one link never learns
// another's.
type Zone interface {
	// Records answers one question for a querier at src: the records that
	// answer it, and the additional records that make the answer usable
	// at once (SRV, TXT and A after a PTR). Nothing means silence.
	Records(q dns.Question, src netip.Addr) (answer, extra []dns.RR)
	// Announcement is the unsolicited response listing every record with
	// ttl (RFC 6762 §8.3), the goodbye with ttl 0 (§10.1); nil when there
	// is nothing to announce.
	Announcement(ttl uint32) *dns.Msg
}

// ZoneFunc builds the zone of one interface for host ("name.local.", which
// changes when the responder renames itself after a conflict) from the
// interface's hardware address (may be empty) and its current IPv4
// addresses with their subnets (may be none).
type ZoneFunc func(host string, mac net.HardwareAddr, addrs []netip.Prefix) (Zone, error)

// Dedupe drops repeated records, keeping the first of each, in place.
func Dedupe(rrs []dns.RR) []dns.RR {
	seen := map[string]bool{}
	out := rrs[:0]
	for _, rr := range rrs {
		k := rr.String()
		if !seen[k] {
			seen[k] = true
			out = append(out, rr)
		}
	}
	return out
}
