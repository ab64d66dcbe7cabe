package mdns

import (
	"strings"
	"testing"
)

func TestCanonicalHost(t *testing.T) {
	good := map[string]string{
		"ubuntu-4321-http-server.local":    "ubuntu-4321-http-server.local.",
		"DS.Local.":                        "ds.local.",
		"ds.local:5000":                    "ds.local.",
		"a.b.local":                        "a.b.local.",
		"ubuntu-4321-http-server.local:80": "ubuntu-4321-http-server.local.",
	}
	for in, want := range good {
		got, err := CanonicalHost(in)
		if err != nil || got != want {
			t.Errorf("CanonicalHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ".local", "local", "ds.localhost", "ds.example.com", "-ds.local", "d_s.local", "d s.local", "ds..local", "10.0.0.1", "ds.local..", ".ds.local"} {
		if got, err := CanonicalHost(in); err == nil {
			t.Errorf("CanonicalHost(%q) = %q, want an error", in, got)
		}
	}
}

func TestIsLocal(t *testing.T) {
	for in, want := range map[string]bool{
		"ds.local": true, "ds.local:5000": true, "DS.LOCAL.": true,
		"ds.localhost": false, "local": false, "registry-1.docker.io": false, "ds.local.example.com": false,
	} {
		if got := IsLocal(in); got != want {
			t.Errorf("IsLocal(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestSameName(t *testing.T) {
	if !SameName("DS.local.", "ds.local") {
		t.Error("case and trailing dot must not matter")
	}
	for _, other := range []string{"myds.local.", "ds-2.local.", "ds.local.local.", "s.local."} {
		if SameName(other, "ds.local.") {
			t.Errorf("%q must not match ds.local.", other)
		}
	}
}

// FuzzCanonicalHost: whatever is accepted is a lower-case .local FQDN of
// valid labels, and canonical form is a fixed point.
func FuzzCanonicalHost(f *testing.F) {
	for _, s := range []string{"ds.local", "DS.local.:5000", "ds.local..", "a..local", "[::1]:80", "x.local:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := CanonicalHost(in)
		if err != nil {
			return
		}
		if !strings.HasSuffix(got, ".local.") || strings.Contains(got, "..") || strings.ToLower(got) != got {
			t.Fatalf("CanonicalHost(%q) = %q", in, got)
		}
		if again, err := CanonicalHost(got); err != nil || again != got {
			t.Fatalf("not a fixed point: %q -> %q, %v", got, again, err)
		}
	})
}

// TestQualifyHost: the responder's name, given bare or qualified, becomes
// one canonical .local name; a port or anything else invalid is refused.
func TestQualifyHost(t *testing.T) {
	for in, want := range map[string]string{"DS": "ds.local.", "ds.local": "ds.local.", "ds.local.": "ds.local.", "a.b": "a.b.local.", " ds ": "ds.local."} {
		if got, err := QualifyHost(in); err != nil || got != want {
			t.Errorf("QualifyHost(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", ".local", "-ds", "d s", "ds_1", strings.Repeat("a", 64), "a..b", "ds.local:80"} {
		if _, err := QualifyHost(in); err == nil {
			t.Errorf("QualifyHost(%q) accepted", in)
		}
	}
}

// TestCheckHostname: the same label rule in any domain; case does not
// matter, an underscore is refused.
func TestCheckHostname(t *testing.T) {
	for _, in := range []string{"a", "ds.local", "DS.Example.COM.", "registry-1.docker.io", "x1.y2"} {
		if err := CheckHostname(in); err != nil {
			t.Errorf("CheckHostname(%q) = %v", in, err)
		}
	}
	for _, in := range []string{"", ".", "-a.local", "a-.b", "d_s.local", "_http._tcp.local", "a..b", "a b", strings.Repeat("a", 64) + ".b", strings.Repeat("a.", 127) + "ab"} {
		if err := CheckHostname(in); err == nil {
			t.Errorf("CheckHostname(%q) accepted", in)
		}
	}
}
