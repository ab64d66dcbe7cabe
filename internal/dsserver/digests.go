package dsserver

import (
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"regexp"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The digest algorithms the registry stores content under: sha256, the
// canonical one, and sha512, which image-spec also registers and OCI
// clients may push with.
var hexDigests = map[string]*regexp.Regexp{
	"sha256": regexp.MustCompile(`^[a-f0-9]{64}$`),
	"sha512": regexp.MustCompile(`^[a-f0-9]{128}$`),
}

// parseDigest accepts only "<algorithm>:<lower-case hex of its length>"
// for the algorithms above: the form that names a file in the store, so
// anything else could not be a path we made.
func parseDigest(s string) (v1.Hash, error) {
	for alg, re := range hexDigests {
		if hex, ok := cutAlgorithm(s, alg); ok && re.MatchString(hex) {
			return v1.Hash{Algorithm: alg, Hex: hex}, nil
		}
	}
	return v1.Hash{}, fmt.Errorf("invalid digest %q: want sha256:<64> or sha512:<128 lower-case hex digits>", s)
}

func cutAlgorithm(s, alg string) (string, bool) {
	if len(s) > len(alg) && s[:len(alg)] == alg && s[len(alg)] == ':' {
		return s[len(alg)+1:], true
	}
	return "", false
}

// newHasher returns the hash of a parsed digest's algorithm.
func newHasher(alg string) hash.Hash {
	if alg == "sha512" {
		return sha512.New()
	}
	return sha256.New()
}

// hashBytes is b's digest under alg.
func hashBytes(alg string, b []byte) v1.Hash {
	hw := newHasher(alg)
	hw.Write(b)
	return v1.Hash{Algorithm: alg, Hex: fmt.Sprintf("%x", hw.Sum(nil))}
}
