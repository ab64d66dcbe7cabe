package mirror

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// The mirror answers only the node's containerd. Any local user can reach
// the loopback listener, and the CAS holds every image pulled on the node
// (some of them private to a datastore's credentials), so a request for a
// .local host must carry the client key: a random secret the daemon keeps
// in <root>/vault/mirror.key (0600, made at first start) and `localds
// hosts` writes into each hosts.toml as a static header of the mirror
// host, which containerd sends with every request to it, token requests
// included (hosts.toml [host."…".header]). Nothing else proves who is
// asking on loopback without a change to containerd.

// KeyHeader is the request header that carries the client key.
const KeyHeader = "Localds-Mirror-Key"

// KeyPlaceholder stands for the key in example hosts.toml files
// (contrib/certs.d): it is no valid key, so a copied example is refused
// with a message saying to run `localds hosts`.
const KeyPlaceholder = "written-by-localds-hosts-from-vault-mirror.key"

// keyBytes is the key's entropy; the file holds it in hex.
const keyBytes = 32

// KeyPath is where the daemon keeps the mirror's client key under root.
func KeyPath(root string) string {
	return filepath.Join(root, "vault", "mirror.key")
}

// LoadOrCreateKey returns the client key in path, creating it (0600, the
// directory 0700 if new) when there is none. Creation is atomic (a
// hard link of a finished temporary file), so a daemon and `localds hosts`
// starting at once end up with the same key.
func LoadOrCreateKey(path string) (string, error) {
	key, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	var raw [keyBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("mirror key: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("mirror key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".mirror.key-*")
	if err != nil {
		return "", fmt.Errorf("mirror key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(raw[:]) + "\n")
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("mirror key %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("mirror key %s: %w", path, err)
	}
	return readKey(path) // ours, or the one that won the race
}

// ReadKey returns the client key in path; a missing file is an error
// that says who makes it.
func ReadKey(path string) (string, error) {
	key, err := readKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("mirror key %s does not exist (containerd-localds-grpc makes it at start): %w", path, err)
	}
	return key, err
}

func readKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("mirror key: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if err := checkKey(key); err != nil {
		return "", fmt.Errorf("mirror key %s: %w (remove it and restart the daemon, then run `localds hosts` again)", path, err)
	}
	return key, nil
}

func checkKey(key string) error {
	if raw, err := hex.DecodeString(key); err != nil || len(raw) != keyBytes {
		return fmt.Errorf("not %d hex digits", 2*keyBytes)
	}
	return nil
}

// keyMatches compares the request's key with the mirror's in constant
// time (a local user must not learn it byte by byte from timing).
func keyMatches(r *http.Request, key string) bool {
	got := r.Header.Get(KeyHeader)
	return subtle.ConstantTimeCompare([]byte(got), []byte(key)) == 1
}

// refuseClient answers a request without the right client key.
func (m *Mirror) refuseClient(w http.ResponseWriter, r *http.Request) {
	m.stats.unauthorized.Add(1)
	why := "no " + KeyHeader + " header"
	if r.Header.Get(KeyHeader) != "" {
		why = "a wrong " + KeyHeader + " header"
	}
	writeError(w, r, http.StatusUnauthorized, codeUnauthorized,
		fmt.Sprintf("request with %s: the mirror serves only the node's containerd, configured by `localds hosts` (which writes the key of <root>/vault/mirror.key into hosts.toml)", why))
}
