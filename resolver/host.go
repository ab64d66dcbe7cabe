package resolver

import "github.com/localds/localds/internal/mdns"

// IsLocal reports whether host (a bare name, or name:port) is a .local
// name that localds resolves with mDNS. The check is case-insensitive and
// ignores a trailing dot, so "DS.Local." is local and "ds.localhost" is not.
func IsLocal(host string) bool { return mdns.IsLocal(host) }

// CanonicalHost turns a user's host ("DS.local", "ds.local.", "ds.local:5000")
// into the lower-case fully qualified name used on the wire and as cache
// key ("ds.local."). It refuses anything that is not a valid .local name:
// labels of letters, digits and hyphens, no underscore.
func CanonicalHost(host string) (string, error) { return mdns.CanonicalHost(host) }
