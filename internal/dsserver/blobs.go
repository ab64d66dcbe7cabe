package dsserver

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/containerd/log"
)

// handleBlob serves GET, HEAD and DELETE on /v2/<repo>/blobs/<digest>.
// Blobs are files: http.ServeContent gives Range requests (open-ended
// ones too) and conditional requests; every byte sent is hashed on the
// way and the response is cut if the blob no longer matches its digest
// (see sendVerified).
func (r *Registry) handleBlob(w http.ResponseWriter, req *http.Request, ref string) {
	h, err := parseDigest(ref)
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
		return
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead:
		f, size, err := r.store.open(h)
		if err != nil {
			if errors.Is(err, errNotFound) {
				writeRegError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown: "+h.String())
				return
			}
			writeRegError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
			return
		}
		defer f.Close()
		r.store.recent.touch(h) // a pusher's HEAD: the manifest that needs it follows
		w.Header().Set("Docker-Content-Digest", h.String())
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("ETag", `"`+h.String()+`"`)
		w.Header().Set("Cache-Control", "max-age=31536000, immutable")
		ignoreForeignRange(req)
		r.sendVerified(w, req, f, size, h)
	case http.MethodDelete:
		r.manifests.mu.Lock()
		defer r.manifests.mu.Unlock()
		if !r.store.has(h) {
			writeRegError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown: "+h.String())
			return
		}
		refs, err := r.manifests.references(req.Context())
		if err != nil {
			log.G(req.Context()).WithError(err).Warn("registry: blob delete refused, stored manifests unreadable")
			writeRegError(w, http.StatusConflict, "DENIED", fmt.Sprintf("blob %s not deleted: %v", h, err))
			return
		}
		if by, ok := refs[h]; ok {
			writeRegError(w, http.StatusConflict, "DENIED",
				fmt.Sprintf("blob %s is referenced by manifest %s in %s: delete that manifest first", h, by.manifest, by.repo))
			return
		}
		if err := r.store.remove(h); err != nil {
			if errors.Is(err, errNotFound) {
				writeRegError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown: "+h.String())
				return
			}
			writeStorageError(req.Context(), w, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	default:
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", req.Method+" on a blob")
	}
}
