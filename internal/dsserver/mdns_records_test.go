package dsserver

import (
	"testing"

	"github.com/miekg/dns"
)

// TestNSECForAAAA: an A answer carries, in the additional section, an
// NSEC saying the host has A records only (RFC 6762 §6.2): no AAAA.
func TestNSECForAAAA(t *testing.T) {
	z := testZone(t, testHTTP)
	m := roundTrip(t, one(t, z, query(t, 50, hostFQDN, dns.TypeA, true), querier))
	if len(m.Answer) != 1 || len(m.Extra) != 1 {
		t.Fatalf("A answered with %v / %v", m.Answer, m.Extra)
	}
	nsec, ok := m.Extra[0].(*dns.NSEC)
	if !ok || nsec.Hdr.Name != hostFQDN || nsec.NextDomain != hostFQDN || len(nsec.TypeBitMap) != 1 || nsec.TypeBitMap[0] != dns.TypeA {
		t.Fatalf("want NSEC %s listing A alone, got %v", hostFQDN, m.Extra[0])
	}
}

// TestWorkstationTXT: the workstation instance's TXT record holds one
// zero-length string (RFC 6763 §6.1), as Avahi's does; empty rdata is
// malformed.
func TestWorkstationTXT(t *testing.T) {
	z := testZone(t)
	m := roundTrip(t, one(t, z, query(t, 51, wsInstance, dns.TypeTXT, true), querier))
	if len(m.Answer) != 1 {
		t.Fatalf("TXT answered with %v", m.Answer)
	}
	txt, ok := m.Answer[0].(*dns.TXT)
	if !ok || len(txt.Txt) != 1 || txt.Txt[0] != "" {
		t.Fatalf("want one empty string, got %v", m.Answer[0])
	}
}
