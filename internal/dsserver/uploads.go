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
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"
)

const (
	// maxUploads bounds concurrent upload sessions, maxUploadsPerClient
	// those of one client address, so one client cannot take them all.
	maxUploads          = 64
	maxUploadsPerClient = 16
	// DefaultUploadTimeout is how long an upload session may stay idle
	// (no chunk arriving) before it is aborted and its file removed.
	DefaultUploadTimeout = 5 * time.Minute
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
	idle     time.Duration
	mu       sync.Mutex
	sessions map[string]*upload
}

type upload struct {
	mu     sync.Mutex
	id     string
	repo   string
	client string // the client's address, without port
	f      tempFile
	h      hash.Hash
	qw     *quotaWriter
	size   int64
	last   time.Time
	dead   bool
}

func newUploads(store *blobStore, idle time.Duration) *uploads {
	if idle <= 0 {
		idle = DefaultUploadTimeout
	}
	return &uploads{store: store, idle: idle, sessions: map[string]*upload{}}
}

// expire aborts the sessions idle for longer than the upload timeout
// (a session busy with a chunk is locked and skipped). u.mu is held.
func (u *uploads) expireLocked(now time.Time) {
	for id, s := range u.sessions {
		if s.mu.TryLock() {
			if now.Sub(s.last) > u.idle {
				s.abort()
				delete(u.sessions, id)
			}
			s.mu.Unlock()
		}
	}
}

// expire is the periodic sweep: files of abandoned uploads do not wait
// for the next upload to be removed.
func (u *uploads) expire() {
	u.mu.Lock()
	u.expireLocked(time.Now())
	u.mu.Unlock()
}

// start opens a new session for repo on behalf of client (an address).
func (u *uploads) start(repo, client string) (*upload, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	u.expireLocked(now)
	if len(u.sessions) >= maxUploads {
		return nil, fmt.Errorf("%w (%d)", errTooManyUploads, maxUploads)
	}
	mine := 0
	for _, s := range u.sessions {
		if s.client == client {
			mine++
		}
	}
	if mine >= maxUploadsPerClient {
		return nil, fmt.Errorf("%w from %s (%d, each expires after %v idle)", errTooManyUploads, client, maxUploadsPerClient, u.idle)
	}
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("upload id: %w", err)
	}
	f, err := u.store.createTemp(filepath.Join(u.store.root, "uploads"), "upload-*")
	if err != nil {
		return nil, storageError("create upload file", err)
	}
	s := &upload{id: hex.EncodeToString(rnd[:]), repo: repo, client: client, f: f, h: sha256.New(), qw: u.store.quota.writer(0), last: now}
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
func (s *upload) write(ctx context.Context, r io.Reader, contentLength int64) error {
	if err := s.qw.q.checkLength(s.size, contentLength); err != nil {
		s.abort()
		return err
	}
	n, err := io.Copy(io.MultiWriter(s.qw, s.f, s.h), contextReader{ctx, r})
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
		s.qw.q.release(s.qw.n)
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
		if err := s.write(ctx, req.Body, req.ContentLength); err != nil {
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
		if err := s.write(ctx, req.Body, req.ContentLength); err != nil {
			r.uploads.drop(s)
			writeStorageError(req.Context(), w, err)
			return
		}
		s.dead = true // committed or discarded, never reused
		r.uploads.drop(s)
		if err := r.store.commit(s.f, s.h, h, s.qw.n); err != nil {
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
			r.store.recent.touch(h)
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
		if err := r.store.quota.checkLength(0, req.ContentLength); err != nil {
			writeStorageError(req.Context(), w, err)
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
	s, err := r.uploads.start(repo, clientAddr(req))
	if err != nil {
		writeStorageError(req.Context(), w, err)
		return
	}
	w.Header().Set("Location", s.location(repo))
	w.Header().Set("Range", s.rangeHeader())
	w.Header().Set("Docker-Upload-UUID", s.id)
	w.WriteHeader(http.StatusAccepted)
}

// clientAddr is the client's address without its port: what the
// per-client upload cap counts.
func clientAddr(req *http.Request) string {
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		return req.RemoteAddr
	}
	return host
}
