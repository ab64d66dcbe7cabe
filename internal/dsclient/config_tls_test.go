package dsclient

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// TestTLSMode: a datastore with a CA is HTTPS only unless it says
// otherwise; contradictions are refused with the reason.
func TestTLSMode(t *testing.T) {
	ca := selfSignedPEM(t)
	for _, tc := range []struct {
		d    Datastore
		want string
	}{
		{Datastore{Type: TypeOCI}, TLSAuto},
		{Datastore{Type: TypeOCI, CertChain: ca}, TLSRequired},
		{Datastore{Type: TypeOCI, CertChain: ca, TLS: TLSAuto}, TLSAuto},
		{Datastore{Type: TypeOCI, TLS: TLSOff}, TLSOff},
		{Datastore{Type: TypeHTTPS}, TLSRequired},
		{Datastore{Type: TypeHTTP}, TLSOff},
	} {
		tc.d.Name, tc.d.FQDN = "d", "ds.local"
		if err := tc.d.Validate(); err != nil {
			t.Errorf("%+v: %v", tc.d, err)
		}
		if got := tc.d.TLSMode(); got != tc.want {
			t.Errorf("%s tls=%q chain=%v: %s, want %s", tc.d.Type, tc.d.TLS, tc.d.CertChain != "", got, tc.want)
		}
	}
	for _, tc := range []struct {
		d    Datastore
		want string
	}{
		{Datastore{Type: TypeOCI, TLS: "maybe"}, "is not one of"},
		{Datastore{Type: TypeOCI, CertChain: ca, TLS: TLSOff}, "CA would never be used"},
		{Datastore{Type: TypeHTTPS, TLS: TLSAuto}, "always TLS"},
		{Datastore{Type: TypeHTTP, TLS: TLSRequired}, "use type https"},
		{Datastore{Type: TypeHTTP, MaxSize: -1}, "max_size -1 is negative"},
	} {
		tc.d.Name, tc.d.FQDN = "d", "ds.local"
		if err := tc.d.Validate(); err == nil || !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v; want %q", tc.d, err, tc.want)
		}
	}
	c, err := Parse([]byte("[[datastore]]\nname = \"d\"\ntype = \"oci\"\nfqdn = \"ds.local:5000\"\ntls = \"required\"\nmax_size = 1048576\n"))
	if err != nil || c.Datastores[0].TLS != TLSRequired || c.Datastores[0].MaxSize != 1<<20 {
		t.Fatalf("tls and max_size keys: %+v %v", c, err)
	}
}
