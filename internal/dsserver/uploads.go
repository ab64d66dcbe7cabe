package dsserver

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

const (
	// maxUploads bounds concurrent upload sessions; idleUpload is how long
	// an abandoned one keeps its temporary file.
	maxUploads = 64
	idleUpload = time.Hour
)

var (
	errUploadUnknown  = errors.New("upload unknown or aborted")
	errTooManyUploads = errors.New("too many uploads in progress")
)

// uploads holds the registry's blob upload sessions. Unlike
// go-containerregistry's registry, which keeps every upload in memory
// until it is complete, data goes straight to a file under
// DIR/.registry/uploads, hashed as it is written; an edge datastore must
// take layers larger than its RAM.
type uploads struct {
	store    *blobStore
	mu       sync.Mutex
	sessions map[string]*upload
}

type upload struct {
	mu   sync.Mutex
	id   string
	repo string
	f    tempFile
	h    hash.Hash
	size int64
	last time.Time
	dead bool
}

func newUploads(store *blobStore) *uploads {
	return &uploads{store: store, sessions: map[string]*upload{}}
}

// start opens a new session for repo.
func (u *uploads) start(repo string) (*upload, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	for id, s := range u.sessions {
		if s.mu.TryLock() {
			if now.Sub(s.last) > idleUpload {
				s.abort()
				delete(u.sessions, id)
			}
			s.mu.Unlock()
		}
	}
	if len(u.sessions) >= maxUploads {
		return nil, fmt.Errorf("%w (%d)", errTooManyUploads, maxUploads)
	}
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("upload id: %w", err)
	}
	f, err := u.store.createTemp(filepath.Join(u.store.root, "uploads"), "upload-*")
	if err != nil {
		return nil, storageError("create upload file", err)
	}
	s := &upload{id: hex.EncodeToString(rnd[:]), repo: repo, f: f, h: sha256.New(), last: now}
	u.sessions[s.id] = s
	return s, nil
}

// get returns the live session id of repo, locked; the caller unlocks.
func (u *uploads) get(repo, id string) (*upload, error) {
	u.mu.Lock()
	s := u.sessions[id]
	u.mu.Unlock()
	if s == nil || s.repo != repo {
		return nil, errUploadUnknown
	}
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return nil, errUploadUnknown
	}
	return s, nil
}

// drop forgets a session (after commit or abort).
func (u *uploads) drop(s *upload) {
	u.mu.Lock()
	delete(u.sessions, s.id)
	u.mu.Unlock()
}

// write appends r to the session. On any error the session is aborted:
// the client restarts the upload rather than trust a half-written chunk.
func (s *upload) write(ctx context.Context, r io.Reader) error {
	n, err := io.Copy(io.MultiWriter(s.f, s.h), contextReader{ctx, r})
	s.size += n
	s.last = time.Now()
	if err != nil {
		s.abort()
		return storageError(fmt.Sprintf("upload %s: write after %d bytes", s.id, s.size), err)
	}
	return nil
}

func (s *upload) abort() {
	if !s.dead {
		s.dead = true
		discard(s.f)
	}
}

// rangeHeader is the Range value of the registry API: the bytes received.
func (s *upload) rangeHeader() string {
	if s.size == 0 {
		return "0-0"
	}
	return fmt.Sprintf("0-%d", s.size-1)
}

func (s *upload) location(repo string) string {
	return "/v2/" + repo + "/blobs/uploads/" + s.id
}

// continues checks that a chunk's Content-Range (if any) starts where the
// data received so far ends. If not it answers 416 with the session's
// Location and Range and keeps the session, as the distribution spec asks,
// so the client can ask where it stands and resume.
func (s *upload) continues(w http.ResponseWriter, req *http.Request, repo string) bool {
	cr := req.Header.Get("Content-Range")
	if cr == "" {
		return true
	}
	var start, end int64
	if _, err := fmt.Sscanf(cr, "%d-%d", &start, &end); err == nil && start == s.size && end >= start-1 {
		return true
	}
	w.Header().Set("Location", s.location(repo))
	w.Header().Set("Range", s.rangeHeader())
	w.Header().Set("Docker-Upload-UUID", s.id)
	writeRegError(w, http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID",
		fmt.Sprintf("Content-Range %q does not continue the %d bytes received", cr, s.size))
	return false
}

// handleUpload serves POST, PATCH, PUT, GET and DELETE on
// /v2/<repo>/blobs/uploads/[<id>].
func (r *Registry) handleUpload(w http.ResponseWriter, req *http.Request, repo, id string) {
	ctx := req.Context()
	if id == "" {
		if req.Method != http.MethodPost {
			writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "use POST to start an upload")
			return
		}
		r.startUpload(w, req, repo)
		return
	}
	s, err := r.uploads.get(repo, id)
	if err != nil {
		writeRegError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", err.Error())
		return
	}
	defer s.mu.Unlock()
	switch req.Method {
	case http.MethodGet:
	case http.MethodDelete:
		s.abort()
		r.uploads.drop(s)
		w.WriteHeader(http.StatusNoContent)
		return
	case http.MethodPatch:
		if !s.continues(w, req, repo) {
			return
		}
		if err := s.write(ctx, req.Body); err != nil {
			r.uploads.drop(s)
			writeStorageError(req.Context(), w, err)
			return
		}
	case http.MethodPut:
		h, err := parseDigest(req.URL.Query().Get("digest"))
		if err != nil {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
			return
		}
		if !s.continues(w, req, repo) {
			return
		}
		if err := s.write(ctx, req.Body); err != nil {
			r.uploads.drop(s)
			writeStorageError(req.Context(), w, err)
			return
		}
		s.dead = true // committed or discarded, never reused
		r.uploads.drop(s)
		if err := r.store.commit(s.f, s.h, h); err != nil {
			writeStorageError(req.Context(), w, err)
			return
		}
		w.Header().Set("Location", "/v2/"+repo+"/blobs/"+h.String())
		w.Header().Set("Docker-Content-Digest", h.String())
		w.WriteHeader(http.StatusCreated)
		return
	default:
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", req.Method+" on an upload")
		return
	}
	w.Header().Set("Location", s.location(repo))
	w.Header().Set("Range", s.rangeHeader())
	w.Header().Set("Docker-Upload-UUID", s.id)
	if req.Method == http.MethodGet {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// startUpload handles POST: a cross-repository mount of a blob we have, a
// monolithic upload (?digest=), or a new session.
func (r *Registry) startUpload(w http.ResponseWriter, req *http.Request, repo string) {
	q := req.URL.Query()
	if m := q.Get("mount"); m != "" {
		if h, err := parseDigest(m); err == nil && r.store.has(h) {
			w.Header().Set("Location", "/v2/"+repo+"/blobs/"+h.String())
			w.Header().Set("Docker-Content-Digest", h.String())
			w.WriteHeader(http.StatusCreated)
			return
		}
	}
	if d := q.Get("digest"); d != "" {
		h, err := parseDigest(d)
		if err != nil {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
			return
		}
		if _, err := r.store.ingest(req.Context(), h, req.Body); err != nil {
			writeStorageError(req.Context(), w, err)
			return
		}
		w.Header().Set("Location", "/v2/"+repo+"/blobs/"+h.String())
		w.Header().Set("Docker-Content-Digest", h.String())
		w.WriteHeader(http.StatusCreated)
		return
	}
	s, err := r.uploads.start(repo)
	if err != nil {
		writeStorageError(req.Context(), w, err)
		return
	}
	w.Header().Set("Location", s.location(repo))
	w.Header().Set("Range", s.rangeHeader())
	w.Header().Set("Docker-Upload-UUID", s.id)
	w.WriteHeader(http.StatusAccepted)
}

// handleBlob serves GET, HEAD and DELETE on /v2/<repo>/blobs/<digest>.
// Blobs are files: http.ServeContent gives Range requests (open-ended
// ones too, which go-containerregistry's handler refuses) and sendfile.
func (r *Registry) handleBlob(w http.ResponseWriter, req *http.Request, ref string) {
	h, err := parseDigest(ref)
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
		return
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead:
		f, _, err := r.store.open(h)
		if err != nil {
			if os.IsNotExist(err) || errors.Is(err, errNotFound) {
				writeRegError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown: "+h.String())
				return
			}
			writeRegError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
			return
		}
		defer f.Close()
		w.Header().Set("Docker-Content-Digest", h.String())
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("ETag", `"`+h.String()+`"`)
		w.Header().Set("Cache-Control", "max-age=31536000, immutable")
		ignoreForeignRange(req)
		http.ServeContent(w, req, "", time.Time{}, f)
	case http.MethodDelete:
		if err := r.store.Delete(req.Context(), "", h); err != nil {
			if errors.Is(err, errNotFound) {
				writeRegError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown: "+h.String())
				return
			}
			writeRegError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
			return
		}
		w.WriteHeader(http.StatusAccepted)
	default:
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", req.Method+" on a blob")
	}
}
