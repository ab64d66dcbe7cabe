package resolver

import (
	"fmt"
	"net"
	"strings"
)

// localSuffix is the mDNS domain (RFC 6762). Only names under it are
// resolved by localds; everything else goes to the normal resolver.
const localSuffix = ".local"

// IsLocal reports whether host (a bare name, or name:port) is a .local
// name that localds resolves with mDNS. The check is case-insensitive and
// ignores a trailing dot, so "DS.Local." is local and "ds.localhost" is not.
func IsLocal(host string) bool {
	name, _ := splitPort(host)
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	return len(name) > len(localSuffix) && strings.HasSuffix(name, localSuffix)
}

// CanonicalHost turns a user's host ("DS.local", "ds.local.", "ds.local:5000")
// into the lower-case fully qualified name used on the wire and as cache
// key ("ds.local."). It refuses anything that is not a valid .local name.
func CanonicalHost(host string) (string, error) {
	name, _ := splitPort(host)
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if len(name) <= len(localSuffix) || !strings.HasSuffix(name, localSuffix) {
		return "", fmt.Errorf("%q is not a .local host name", host)
	}
	if len(name) > 253 {
		return "", fmt.Errorf("host name %q is longer than 253 characters", host)
	}
	for rest := name; rest != ""; {
		label, tail, _ := strings.Cut(rest, ".")
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("host name %q: %w", host, err)
		}
		rest = tail
	}
	return name + ".", nil
}

// checkLabel accepts the host-name labels Avahi publishes: letters, digits
// and hyphens, 1 to 63 octets, no hyphen at either end.
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

// splitPort splits "name:port" and leaves "name" alone; unlike
// net.SplitHostPort it accepts a missing port.
func splitPort(host string) (name, port string) {
	if !strings.Contains(host, ":") {
		return host, "" // the common case, without SplitHostPort's error
	}
	if h, p, err := net.SplitHostPort(host); err == nil {
		return h, p
	}
	return host, ""
}

// sameName compares two DNS names the way mDNS does: case-insensitively,
// label by label, with the trailing dot ignored. Being exact matters:
// "ds.local" must not match "myds.local" or "ds-2.local".
func sameName(a, b string) bool {
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}
