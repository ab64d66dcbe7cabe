package resolver

import "testing"

// testHost is the datastore name EVE-OS documents, in canonical form.
const testHost = "ubuntu-4321-http-server.local."

// TestHostWrappers: the exported names are the mdns package's rules, not
// another copy (internal/mdns tests the rules themselves).
func TestHostWrappers(t *testing.T) {
	if got, err := CanonicalHost("Ubuntu-4321-HTTP-Server.local:80"); err != nil || got != testHost {
		t.Errorf("CanonicalHost = %q, %v; want %q", got, err, testHost)
	}
	if _, err := CanonicalHost("d_s.local"); err == nil {
		t.Error("CanonicalHost accepted an underscore")
	}
	if !IsLocal("DS.LOCAL.") || IsLocal("ds.localhost") {
		t.Error("IsLocal disagrees with the .local rule")
	}
}
