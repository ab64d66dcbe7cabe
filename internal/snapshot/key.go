package snapshot

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
)

// Labels that steer where a volume lives and describe it.
const (
	// LabelNovault set to "true" on a volume's Prepare puts its writable
	// directories under <root>/novault/volumes instead of the encrypted
	// <root>/vault/volumes.
	LabelNovault = "localds.volume/novault"
	// LabelNovaultInherited is the same switch under containerd's
	// "containerd.io/snapshot/" prefix: containerd's metadata layer passes
	// only labels with that prefix on to a backend snapshotter
	// (snapshots.FilterInheritedLabels), so a client that goes through
	// containerd must set this one for the snapshotter to see it.
	LabelNovaultInherited = "containerd.io/snapshot/" + LabelNovault
	// LabelImage names the image a volume was created from (informative).
	LabelImage = "localds.volume/image"
	// LabelImageInherited is LabelImage as containerd passes it on.
	LabelImageInherited = "containerd.io/snapshot/" + LabelImage
)

// MaxGeneration bounds a volume's generation counter; EVE-OS keeps it in
// 32 bits, and a bound keeps keys short.
const MaxGeneration = 1<<32 - 1

// maxKeyLen bounds every key and name the snapshotter stores. containerd's
// own keys ("<ns>/<n>/extract-<nanos>-<rand> sha256:<hex>") are ~120 bytes;
// the bound only stops abuse of the metadata database.
const maxKeyLen = 4096

// uuidLen is the length of a canonical UUID (8-4-4-4-12 hex digits).
const uuidLen = 36

// Volume is a parsed volume key, <volumeUUID>#<generation>.
type Volume struct {
	UUID       string // canonical lower-case 8-4-4-4-12
	Generation uint32
}

// String is the volume's key as users type it.
func (v Volume) String() string {
	return v.UUID + "#" + strconv.FormatUint(uint64(v.Generation), 10)
}

// DirName is the name of the volume's directory under .../volumes/. It is
// built only from a parsed UUID and number, never from the raw key.
func (v Volume) DirName() string { return v.String() + ".container" }

// ParseVolumeKey tells whether key names a volume. It accepts a user's key
// ("<uuid>#<gen>") and the key containerd's metadata layer hands to a
// backend snapshotter ("<namespace>/<n>/<uuid>#<gen>"). A key without '#'
// is not a volume (ok false, nil error): containerd's own unpack keys and
// commit names never contain '#'. A key with '#' that is not exactly a
// volume key is refused with an error wrapping errdefs.ErrInvalidArgument,
// so a typo or a hostile key never silently becomes an ordinary snapshot.
func ParseVolumeKey(key string) (v Volume, ok bool, err error) {
	if !strings.Contains(key, "#") {
		return Volume{}, false, nil
	}
	rest := key
	if strings.Contains(key, "/") {
		if rest, err = trimBackendPrefix(key); err != nil {
			return Volume{}, false, err
		}
	}
	v, err = parseVolume(rest)
	if err != nil {
		return Volume{}, false, fmt.Errorf("volume key %q: %w", clip(key), err)
	}
	return v, true, nil
}

// ParseVolume parses a user's volume key, <uuid>#<gen>, with no containerd
// prefix (what the CLI accepts).
func ParseVolume(key string) (Volume, error) {
	v, err := parseVolume(key)
	if err != nil {
		return Volume{}, fmt.Errorf("volume key %q: %w", clip(key), err)
	}
	return v, nil
}

// trimBackendPrefix strips "<namespace>/<n>/" as containerd's metadata
// layer builds it (core/metadata createKey) and returns the user's key.
func trimBackendPrefix(key string) (string, error) {
	parts := strings.SplitN(key, "/", 3)
	if len(parts) != 3 {
		return "", fmt.Errorf("volume key %q: want <uuid>#<generation> (or containerd's <namespace>/<n>/<uuid>#<generation>): %w", clip(key), errdefs.ErrInvalidArgument)
	}
	if err := identifiers.Validate(parts[0]); err != nil {
		return "", fmt.Errorf("volume key %q: bad namespace part: %w", clip(key), errdefs.ErrInvalidArgument)
	}
	if !isDecimal(parts[1], 20) {
		return "", fmt.Errorf("volume key %q: bad sequence part %q: %w", clip(key), clip(parts[1]), errdefs.ErrInvalidArgument)
	}
	return parts[2], nil
}

// parseVolume accepts exactly <canonical lower-case uuid>#<decimal>, the
// decimal without sign or leading zeros and at most MaxGeneration.
func parseVolume(s string) (Volume, error) {
	id, gen, found := strings.Cut(s, "#")
	if !found {
		return Volume{}, fmt.Errorf("want <uuid>#<generation>: %w", errdefs.ErrInvalidArgument)
	}
	if !isCanonicalUUID(id) {
		return Volume{}, fmt.Errorf("%q is not a canonical lower-case UUID (8-4-4-4-12 hex digits): %w", clip(id), errdefs.ErrInvalidArgument)
	}
	if !isDecimal(gen, 10) {
		return Volume{}, fmt.Errorf("generation %q is not a decimal number without sign or leading zeros: %w", clip(gen), errdefs.ErrInvalidArgument)
	}
	n, err := strconv.ParseUint(gen, 10, 64)
	if err != nil || n > MaxGeneration {
		return Volume{}, fmt.Errorf("generation %s exceeds %d: %w", clip(gen), uint64(MaxGeneration), errdefs.ErrInvalidArgument)
	}
	return Volume{UUID: id, Generation: uint32(n)}, nil
}

func isCanonicalUUID(s string) bool {
	if len(s) != uuidLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// isDecimal reports whether s is 1..maxLen ASCII digits with no leading zero
// (except "0" itself).
func isDecimal(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// clip shortens untrusted input before it goes into an error message.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// checkKey applies the rules every key and name must pass.
func checkKey(what, key string) error {
	if key == "" {
		return fmt.Errorf("%s: empty: %w", what, errdefs.ErrInvalidArgument)
	}
	if len(key) > maxKeyLen {
		return fmt.Errorf("%s %q: %d bytes, at most %d allowed: %w", what, clip(key), len(key), maxKeyLen, errdefs.ErrInvalidArgument)
	}
	return nil
}
