// Package mdns is localds's one implementation of multicast DNS (RFC 6762)
// for IPv4: the rules for .local host names, the constants both sides
// share, the per-interface querier the resolver asks with, and the
// per-interface responder a datastore answers with. What a responder
// answers is a Zone, built by its caller (the datastore's zone uses
// hashicorp/mdns for the DNS-SD records), so this package stays on
// miekg/dns alone.
package mdns

import "net/netip"

const (
	// Port is the port every mDNS responder listens and sends on; legacy
	// unicast replies come from it too (RFC 6762 §6.7), so a packet from
	// any other port is not mDNS.
	Port = 5353
	// MaxPacket is the largest mDNS message a host must accept (RFC 6762
	// §17); anything larger is dropped unread.
	MaxPacket = 9000
	// HostTTL is the TTL of ordinary (port 5353) answers and announcements,
	// what hashicorp/mdns and Avahi use; legacy unicast replies are capped
	// at LegacyTTL (RFC 6762 §6.7).
	HostTTL   = 120
	LegacyTTL = 10
	// CacheFlush is the top bit of the rrclass of unique records (RFC 6762
	// §10.2) and, in a question, the QU bit asking for a unicast reply
	// (§5.4).
	CacheFlush = 1 << 15
)

// Group is the IPv4 mDNS multicast group and port.
var Group = netip.AddrPortFrom(netip.AddrFrom4([4]byte{224, 0, 0, 251}), Port)

// The DNS-SD service types a datastore announces and the resolver browses:
// Avahi's workstation record (publish-workstation=yes, instance
// "host [aa:bb:cc:dd:ee:ff]", port 9), and the http(s) services EVE-OS
// datastores advertise.
const (
	WorkstationService = "_workstation._tcp"
	HTTPService        = "_http._tcp"
	HTTPSService       = "_https._tcp"
)
