package dsserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/localds/localds/internal/reponame"
)

// errNotFound is what the blob store answers for content it does not have.
var errNotFound = errors.New("blob unknown")

// Registry is an OCI distribution registry whose data lives on disk under
// one directory. Everything is served by this package from files: blobs
// and uploads (streamed to disk, hashed once, Range requests served by
// sendfile), manifests, tags, the catalog and the referrers API (see
// manifestStore). go-containerregistry's pkg/registry is not used: it keeps
// manifests and uploads in memory, knows sha256 only, and its referrers
// list carries the config media type where the manifest's artifactType
// belongs.
type Registry struct {
	store     *blobStore
	uploads   *uploads
	manifests *manifestStore
	auth      pushAuth
	metrics   *serveMetrics
	startup   startup // the start-up import (startup.go)
}

// RegistryConfig is how the registry treats its clients.
type RegistryConfig struct {
	PushToken     []byte        // writes need it; none: no writes
	ReadOnly      bool          // no writes even with the token
	Limits        Limits        // sizes of one blob and of the store
	UploadTimeout time.Duration // idle upload sessions end; DefaultUploadTimeout if 0
}

// NewRegistry opens (or creates) the registry stored in dir and indexes
// the manifests stored there.
func NewRegistry(ctx context.Context, dir string, cfg RegistryConfig) (*Registry, error) {
	store, err := newBlobStore(dir, cfg.Limits)
	if err != nil {
		return nil, err
	}
	r := &Registry{
		store:     store,
		uploads:   newUploads(store, cfg.UploadTimeout),
		manifests: &manifestStore{root: filepath.Join(dir, "repositories"), blobs: store, referrers: newReferrers()},
		auth:      pushAuth{token: cfg.PushToken, readOnly: cfg.ReadOnly},
		metrics:   newServeMetrics(store),
	}
	if err := r.manifests.load(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// route is a parsed /v2/ path.
type route struct {
	kind string // "base", "catalog", "tags", "blob", "upload", "manifest", "referrers"
	repo string
	ref  string // digest, tag or upload id
}

// parseRoute splits a /v2/ path by its trailing elements, as the
// distribution spec defines them; ok is false for anything else.
func parseRoute(p string) (route, bool) {
	p = strings.TrimPrefix(p, "/v2")
	if p == "" || p == "/" {
		return route{kind: "base"}, true
	}
	p = strings.TrimPrefix(p, "/")
	if p == "_catalog" {
		return route{kind: "catalog"}, true
	}
	if repo, ok := strings.CutSuffix(p, "/tags/list"); ok {
		return route{kind: "tags", repo: repo}, true
	}
	el := strings.Split(strings.TrimSuffix(p, "/"), "/")
	n := len(el)
	switch {
	case n >= 3 && el[n-2] == "blobs" && el[n-1] == "uploads":
		return route{kind: "upload", repo: strings.Join(el[:n-2], "/")}, true
	case n >= 4 && el[n-3] == "blobs" && el[n-2] == "uploads":
		return route{kind: "upload", repo: strings.Join(el[:n-3], "/"), ref: el[n-1]}, true
	case n >= 3 && el[n-2] == "blobs":
		return route{kind: "blob", repo: strings.Join(el[:n-2], "/"), ref: el[n-1]}, true
	case n >= 3 && el[n-2] == "manifests":
		return route{kind: "manifest", repo: strings.Join(el[:n-2], "/"), ref: el[n-1]}, true
	case n >= 3 && el[n-2] == "referrers":
		return route{kind: "referrers", repo: strings.Join(el[:n-2], "/"), ref: el[n-1]}, true
	}
	return route{}, false
}

// SetReadOnly makes the registry refuse pushes and deletes from clients,
// even with the push token; archives in the import directory are still
// loaded.
func (r *Registry) SetReadOnly(ro bool) { r.auth.readOnly = ro }

// ServeHTTP serves the registry API under /v2/. Reads are anonymous;
// writes need the push token (pushAuth).
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if isWrite(req) && !r.auth.allowWrite(w, req) {
		return
	}
	if done := r.importRunning(); done != nil && (req.Method == http.MethodGet || req.Method == http.MethodHead) {
		if rt, ok := parseRoute(req.URL.Path); ok && rt.kind == "manifest" {
			r.serveDuringImport(w, req, done)
			return
		}
	}
	r.serve(w, req)
}

// serve is ServeHTTP without the write check (used by the importer).
func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, ok := parseRoute(req.URL.Path)
	if !ok {
		writeRegError(w, http.StatusNotFound, "NAME_UNKNOWN", "unknown registry path")
		return
	}
	if rt.repo != "" || (rt.kind != "base" && rt.kind != "catalog") {
		if reponame.CheckRepository(rt.repo) != nil {
			writeRegError(w, http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("invalid repository name %q", rt.repo))
			return
		}
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead && rt.kind != "blob" && rt.kind != "upload" && rt.kind != "manifest" {
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", req.Method+" on "+rt.kind)
		return
	}
	switch rt.kind {
	case "base":
		writeJSON(w, "application/json", struct{}{})
	case "catalog":
		r.manifests.catalog(w, req)
	case "tags":
		r.manifests.tags(w, req, rt.repo)
	case "referrers":
		r.manifests.referrers.serve(w, req, rt.repo, rt.ref)
	case "blob":
		r.handleBlob(w, req, rt.ref)
	case "upload":
		r.handleUpload(w, req, rt.repo, rt.ref)
	case "manifest":
		switch req.Method {
		case http.MethodPut:
			r.manifests.put(w, req, rt.repo, rt.ref)
		case http.MethodDelete:
			r.manifests.delete(w, req, rt.repo, rt.ref)
		case http.MethodGet, http.MethodHead:
			r.manifests.get(w, req, rt.repo, rt.ref)
		default:
			writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", req.Method+" on a manifest")
		}
	}
}

// writeRegError writes an error in the distribution spec's JSON form.
func writeRegError(w http.ResponseWriter, status int, code, msg string) {
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	b, _ := json.Marshal(struct {
		Errors []item `json:"errors"`
	}{[]item{{code, msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// writeStorageError maps a store error to the client's answer: a clear
// "disk full" (507), a digest mismatch (400), or an internal error. The
// full error, with paths, goes to the log only.
func writeStorageError(ctx context.Context, w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrDigestMismatch):
		log.G(ctx).WithError(err).Info("registry: push refused")
		writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", mismatchMessage(err))
	case errors.Is(err, ErrDiskFull):
		log.G(ctx).WithError(err).Error("registry: push failed, datastore disk full")
		writeRegError(w, http.StatusInsufficientStorage, "BLOB_UPLOAD_INVALID",
			"datastore disk full (no space left on device): nothing stored")
	case errors.Is(err, ErrBlobTooLarge):
		log.G(ctx).WithError(err).Info("registry: push refused")
		writeRegError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID", publicMessage(err, ErrBlobTooLarge)+": nothing stored")
	case errors.Is(err, ErrStoreFull):
		log.G(ctx).WithError(err).Warn("registry: push refused, store at --max-store-size")
		writeRegError(w, http.StatusInsufficientStorage, "BLOB_UPLOAD_INVALID", publicMessage(err, ErrStoreFull)+": nothing stored")
	case errors.Is(err, errTooManyUploads):
		writeRegError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", err.Error())
	case errors.Is(err, context.Canceled):
		writeRegError(w, http.StatusBadRequest, "BLOB_UPLOAD_INVALID", "request cancelled, nothing stored")
	default:
		log.G(ctx).WithError(err).Error("registry: storage error")
		writeRegError(w, http.StatusInternalServerError, "UNKNOWN", "datastore storage error, nothing stored")
	}
}

// mismatchMessage keeps the "digest mismatch: content has X, pushed as Y"
// part of err, without the internal context wrapped around it.
func mismatchMessage(err error) string { return publicMessage(err, ErrDigestMismatch) }

// publicMessage keeps the part of err from sentinel's text on, without
// the internal context (paths) wrapped around it.
func publicMessage(err, sentinel error) string {
	msg := err.Error()
	if i := strings.Index(msg, sentinel.Error()); i >= 0 {
		return msg[i:]
	}
	return sentinel.Error()
}

// digestOf is b's canonical (sha256) digest.
func digestOf(b []byte) v1.Hash { return hashBytes("sha256", b) }
