package mirror

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/reponame"
	"github.com/localds/localds/resolver"
)

// Request kinds the mirror serves.
const (
	kindManifest = "manifests"
	kindBlob     = "blobs"
)

// supportedAlgorithms are the digest algorithms the mirror verifies.
// sha256 is what every registry uses; go-digest also implements sha512,
// which the OCI image spec registers. Anything else (sha384 included,
// which the spec does not register) is refused rather than passed through
// unverified.
var supportedAlgorithms = map[digest.Algorithm]bool{
	digest.SHA256: true,
	digest.SHA512: true,
}

// target is a validated mirror request: which datastore, which repository
// and what object.
type target struct {
	host string // the datastore, host[:port], a .local name (from ns)
	name string // repository name, e.g. "library/app"
	kind string // kindManifest or kindBlob
	ref  string // tag or digest, as sent
	dgst digest.Digest
}

// upstreamPath is the registry API path of t on the datastore.
func (t target) upstreamPath() string {
	return "/v2/" + t.name + "/" + t.kind + "/" + t.ref
}

// requestError is a client mistake, answered with status and a registry
// error body; it never reaches the datastore.
type requestError struct {
	status  int
	code    string
	message string
}

func (e *requestError) Error() string { return e.message }

func badRequest(code, format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, code: code, message: fmt.Sprintf(format, args...)}
}

// parsePath splits /v2/<name>/<kind>/<ref> strictly. It works on the
// escaped path, so that "%2F" can never smuggle a slash into a name and
// "..", "." or empty segments are refused instead of being cleaned: a
// mirror that rewrote such paths would fetch something other than what
// the client named.
func parsePath(escaped string) (name, kind, ref string, err error) {
	if strings.Contains(escaped, "%") {
		return "", "", "", badRequest(codeNameInvalid, "path %q: percent-encoded characters are not allowed in registry paths", escaped)
	}
	rest, ok := strings.CutPrefix(escaped, "/v2/")
	if !ok {
		return "", "", "", &requestError{status: http.StatusNotFound, code: codeUnsupported, message: fmt.Sprintf("path %q is not under /v2/", escaped)}
	}
	segs := strings.Split(rest, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return "", "", "", badRequest(codeNameInvalid, "path %q: empty, \".\" or \"..\" segments are not allowed", escaped)
		}
	}
	if len(segs) < 3 {
		return "", "", "", &requestError{status: http.StatusNotFound, code: codeUnsupported,
			message: fmt.Sprintf("path %q: the mirror serves only /v2/<name>/manifests/<reference> and /v2/<name>/blobs/<digest>", escaped)}
	}
	kind = segs[len(segs)-2]
	if kind != kindManifest && kind != kindBlob && kind != kindReferrers {
		return "", "", "", &requestError{status: http.StatusNotFound, code: codeUnsupported,
			message: fmt.Sprintf("path %q: the mirror serves only /v2/<name>/manifests/<reference> and /v2/<name>/blobs/<digest>", escaped)}
	}
	name = strings.Join(segs[:len(segs)-2], "/")
	if err := reponame.CheckRepository(name); err != nil {
		return "", "", "", badRequest(codeNameInvalid, "%v (want lower-case letters and digits joined by '.', '_', '__' or '-', components separated by '/', at most 255 characters)", err)
	}
	return name, kind, segs[len(segs)-1], nil
}

// parseDigest accepts only well-formed digests of the algorithms the
// mirror can verify.
func parseDigest(s string) (digest.Digest, error) {
	alg, enc, ok := strings.Cut(s, ":")
	if !ok || alg == "" || enc == "" {
		return "", badRequest(codeDigestInvalid, "digest %q is not <algorithm>:<hex>", s)
	}
	if !supportedAlgorithms[digest.Algorithm(alg)] {
		return "", badRequest(codeDigestInvalid, "digest %q: unsupported algorithm %q (the mirror verifies sha256 and sha512 only)", s, alg)
	}
	d := digest.Digest(s)
	if err := d.Validate(); err != nil {
		return "", badRequest(codeDigestInvalid, "digest %q: %v", s, err)
	}
	return d, nil
}

// parseRef validates the reference of a manifest (tag or digest) or blob
// (digest only).
func parseRef(kind, ref string) (digest.Digest, error) {
	if strings.Contains(ref, ":") {
		return parseDigest(ref)
	}
	if kind != kindManifest {
		return "", badRequest(codeDigestInvalid, "%s reference %q is not a digest", strings.TrimSuffix(kind, "s"), ref)
	}
	if reponame.CheckTag(ref) != nil {
		return "", badRequest(codeTagInvalid, "tag %q: want 1 to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'", ref)
	}
	return "", nil
}

// parseNS checks containerd's ns query parameter: the registry host the
// client originally asked for. It returns ok=false (not an error) when
// the host is not .local: the mirror answers 404 and containerd goes to
// that host itself.
func parseNS(values []string) (host string, ok bool, err error) {
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", false, badRequest(codeUnsupported, "ns given %d times; want one registry host", len(values))
	}
	host = values[0]
	if !resolver.IsLocal(host) {
		return host, false, nil
	}
	if _, err := resolver.CanonicalHost(host); err != nil {
		return "", false, badRequest(codeUnsupported, "ns: %v", err)
	}
	if h, port, err := net.SplitHostPort(host); err == nil {
		p, perr := strconv.ParseUint(port, 10, 16)
		if perr != nil || p == 0 || h == "" {
			return "", false, badRequest(codeUnsupported, "ns %q: port must be 1-65535", host)
		}
	} else if strings.Contains(host, ":") {
		return "", false, badRequest(codeUnsupported, "ns %q: want host or host:port", host)
	}
	return strings.ToLower(host), true, nil
}

// parseTarget validates everything about r that the mirror relies on.
// ok=false with a nil error means "not a .local host": answer 404. The
// host is looked at first, so pulls from other registries are never held
// to the mirror's path rules, only sent on their way.
func parseTarget(r *http.Request) (t target, ok bool, err error) {
	host, ok, err := parseNS(r.URL.Query()["ns"])
	if err != nil || !ok {
		return target{host: host}, false, err
	}
	name, kind, ref, err := parsePath(r.URL.EscapedPath())
	if err != nil {
		return target{}, false, err
	}
	dgst, err := parseRef(kind, ref)
	if err != nil {
		return target{}, false, err
	}
	return target{host: host, name: name, kind: kind, ref: ref, dgst: dgst}, true, nil
}
