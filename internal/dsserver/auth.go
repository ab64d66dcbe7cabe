package dsserver

import (
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
)

// authRealm is the realm of the Basic challenge writes get without the
// push token.
const authRealm = "localds"

// pushAuth decides who may write to the registry (push, delete, collect):
// nobody without a push token, only holders of the token with one. Reads
// stay anonymous: the node pulls without credentials.
type pushAuth struct {
	token    []byte // empty: writes refused
	readOnly bool   // --read-only: writes refused even with the token
}

// readPushToken reads a --push-token-file: the token is the file's first
// line, without surrounding white space.
func readPushToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--push-token-file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	tok := strings.TrimSpace(line)
	if len(tok) < 16 {
		return nil, fmt.Errorf("--push-token-file %s: the token is %d characters, want at least 16 (e.g. `openssl rand -hex 32`)", path, len(tok))
	}
	return []byte(tok), nil
}

// isWrite reports a request that changes the registry.
func isWrite(req *http.Request) bool {
	return req.Method != http.MethodGet && req.Method != http.MethodHead && req.Method != http.MethodOptions
}

// presented is the credential a request carries: a Bearer token, or the
// password of Basic credentials (any user name).
func presented(req *http.Request) []byte {
	h := req.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	switch strings.ToLower(scheme) {
	case "bearer":
		return []byte(cred)
	case "basic":
		b, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return nil
		}
		_, pass, ok := strings.Cut(string(b), ":")
		if !ok {
			return nil
		}
		return []byte(pass)
	}
	return nil
}

// authorized reports whether req carries the push token. The comparison
// takes the same time whatever the guess.
func (a pushAuth) authorized(req *http.Request) bool {
	if len(a.token) == 0 {
		return false
	}
	got := presented(req)
	return len(got) > 0 && subtle.ConstantTimeCompare(got, a.token) == 1
}

// allowWrite answers a write the datastore refuses and reports false;
// true means go on.
func (a pushAuth) allowWrite(w http.ResponseWriter, req *http.Request) bool {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	switch {
	case a.readOnly:
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED",
			"read-only datastore (localds serve --read-only): "+req.Method+" refused; images come from its .import directory")
		return false
	case len(a.token) == 0:
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED",
			"this datastore takes no pushes or deletes: start localds serve with --push-token-file to allow them to holders of the token")
		return false
	case !a.authorized(req):
		w.Header().Set("WWW-Authenticate", `Basic realm="`+authRealm+`"`)
		writeRegError(w, http.StatusUnauthorized, "UNAUTHORIZED",
			"pushes and deletes need the datastore's push token (localds serve --push-token-file): as a Bearer token, or as the password of Basic credentials")
		return false
	}
	return true
}

// allowAdmin reports whether req may read the datastore's metrics or ask
// for a collection: the push token, or a client on the loopback (a
// process in the datastore's own container).
func (a pushAuth) allowAdmin(req *http.Request) bool {
	if a.authorized(req) {
		return true
	}
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
