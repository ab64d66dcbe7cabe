package mirror

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Error codes of the distribution spec that the mirror answers with;
// containerd decodes them and shows the message to the user.
const (
	codeNameInvalid     = "NAME_INVALID"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeTagInvalid      = "TAG_INVALID"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeManifestInvalid = "MANIFEST_INVALID"
	codeUnsupported     = "UNSUPPORTED"
	codeRangeInvalid    = "RANGE_INVALID"
	codeUnauthorized    = "UNAUTHORIZED"
	codeDenied          = "DENIED"
	codeUnavailable     = "UNAVAILABLE" // not in the spec's list; registries use it for 5xx
)

type registryError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError answers with the registry error JSON format
// ({"errors":[{"code","message"}]}).
func writeError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	body, _ := json.Marshal(struct {
		Errors []registryError `json:"errors"`
	}{Errors: []registryError{{Code: code, Message: "localds mirror: " + message}}})
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	h.Set("Docker-Distribution-API-Version", "registry/2.0")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(append(body, '\n'))
	}
}
