package mdns

import (
	"fmt"
	"net"
	"strings"
)

// LocalSuffix is the mDNS domain (RFC 6762). Only names under it are
// resolved with mDNS; everything else goes to the normal resolver.
const LocalSuffix = ".local"

// The one rule set for host names, on both sides of localds and in its
// configuration: labels of letters, digits and hyphens (RFC 1123), 1 to 63
// octets, no hyphen at either end, at most 253 octets in all. Names are
// case-insensitive and canonicalized to lower case; a trailing dot is
// ignored. An underscore is refused: it marks DNS-SD service labels
// ("_http._tcp"), never a host, Avahi publishes no host name with one, and
// an image reference's registry host may not contain one either.
const maxNameLength = 253

// CheckHostname reports whether name (a bare host name, no port) is a valid
// host name under the rule above, in any domain.
func CheckHostname(name string) error {
	_, err := canonicalName(name)
	return err
}

// IsLocal reports whether host (a bare name, or name:port) is a .local
// name, to be resolved with mDNS. The check is case-insensitive and ignores
// a trailing dot, so "DS.Local." is local and "ds.localhost" is not.
func IsLocal(host string) bool {
	name, _ := SplitPort(host)
	return isLocalName(strings.TrimSuffix(strings.ToLower(name), "."))
}

func isLocalName(lower string) bool {
	return len(lower) > len(LocalSuffix) && strings.HasSuffix(lower, LocalSuffix)
}

// CanonicalHost turns a user's host ("DS.local", "ds.local.",
// "ds.local:5000") into the lower-case fully qualified name used on the
// wire and as cache key ("ds.local."). It refuses anything that is not a
// valid .local name.
func CanonicalHost(host string) (string, error) {
	name, _ := SplitPort(host)
	if !IsLocal(name) {
		return "", fmt.Errorf("%q is not a .local host name", host)
	}
	fqdn, err := canonicalName(name)
	if err != nil {
		return "", fmt.Errorf("host name %q: %w", host, err)
	}
	return fqdn, nil
}

// QualifyHost turns the name a responder answers for ("Name", "name.local"
// or "name.local.") into its canonical .local name ("name.local."). It
// takes no port.
func QualifyHost(name string) (string, error) {
	n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
	if n == "" {
		return "", fmt.Errorf("empty host name")
	}
	if !isLocalName(n) {
		n += LocalSuffix
	}
	fqdn, err := canonicalName(n)
	if err != nil {
		return "", fmt.Errorf("host name %q: %w", name, err)
	}
	return fqdn, nil
}

// canonicalName checks a bare name and returns it in lower case with one
// trailing dot.
func canonicalName(name string) (string, error) {
	n := strings.TrimSuffix(strings.ToLower(name), ".")
	if len(n) > maxNameLength {
		return "", fmt.Errorf("longer than %d characters", maxNameLength)
	}
	for rest := n; ; {
		label, tail, more := strings.Cut(rest, ".")
		if err := checkLabel(label); err != nil {
			return "", err
		}
		if !more {
			break
		}
		rest = tail
	}
	return n + ".", nil
}

// checkLabel checks one lower-case label.
func checkLabel(label string) error {
	if label == "" {
		return fmt.Errorf("empty label")
	}
	if len(label) > 63 {
		return fmt.Errorf("label %q is longer than 63 characters", label)
	}
	if label[0] == '-' || label[len(label)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with a hyphen", label)
	}
	for _, c := range []byte(label) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("label %q has character %q", label, c)
		}
	}
	return nil
}

// SplitPort splits "name:port" and leaves "name" alone; unlike
// net.SplitHostPort it accepts a missing port. It does not check the port.
func SplitPort(host string) (name, port string) {
	if !strings.Contains(host, ":") {
		return host, "" // the common case, without SplitHostPort's error
	}
	if h, p, err := net.SplitHostPort(host); err == nil {
		return h, p
	}
	return host, ""
}

// SameName compares two DNS names the way mDNS does: case-insensitively,
// label by label, with the trailing dot ignored. Being exact matters:
// "ds.local" must not match "myds.local" or "ds-2.local".
func SameName(a, b string) bool {
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}
