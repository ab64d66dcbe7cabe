package dsserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/localds/localds/internal/reponame"
)

// maxManifestSize is the largest manifest accepted (distribution's limit).
const maxManifestSize = 4 << 20

// manifestStore makes go-containerregistry's in-memory manifests durable.
// Every accepted manifest is written to disk before ggcr's registry hears
// of it, and replayed into it at start:
//
//	DIR/.registry/blobs/sha256/<hex>                       the manifest bytes
//	DIR/.registry/repositories/<repo>/_manifests/revisions/<hex>  its media type
//	DIR/.registry/repositories/<repo>/_manifests/tags/<tag>       "sha256:<hex>"
//
// ("_manifests" cannot be a repository path component, so no repository
// name collides with it.)
type manifestStore struct {
	root  string
	blobs *blobStore
	ggcr  http.Handler
	mu    sync.Mutex
}

// manifestFields are the parts of an image manifest or index checked on push.
type manifestFields struct {
	MediaType string          `json:"mediaType"`
	Config    *v1.Descriptor  `json:"config"`
	Layers    []v1.Descriptor `json:"layers"`
	Manifests []v1.Descriptor `json:"manifests"`
}

func (m *manifestStore) dir(repo string) string {
	return filepath.Join(m.root, filepath.FromSlash(repo), "_manifests")
}

func (m *manifestStore) revisionPath(repo string, h v1.Hash) string {
	return filepath.Join(m.dir(repo), "revisions", h.Hex)
}

func (m *manifestStore) tagPath(repo, tag string) string {
	return filepath.Join(m.dir(repo), "tags", tag)
}

func (m *manifestStore) hasRevision(repo string, h v1.Hash) bool {
	_, err := os.Stat(m.revisionPath(repo, h))
	return err == nil
}

// put handles PUT /v2/<repo>/manifests/<ref>.
func (m *manifestStore) put(w http.ResponseWriter, req *http.Request, repo, ref string) {
	ctx := req.Context()
	body, err := io.ReadAll(io.LimitReader(req.Body, maxManifestSize+1))
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "MANIFEST_INVALID", "read manifest: "+err.Error())
		return
	}
	if len(body) > maxManifestSize {
		writeRegError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID", fmt.Sprintf("manifest larger than %d bytes", maxManifestSize))
		return
	}
	var mf manifestFields
	if err := json.Unmarshal(body, &mf); err != nil {
		writeRegError(w, http.StatusBadRequest, "MANIFEST_INVALID", "manifest is not JSON: "+err.Error())
		return
	}
	mt := req.Header.Get("Content-Type")
	if base, _, err := mime.ParseMediaType(mt); err == nil {
		mt = base
	}
	if mt == "" || mt == "application/json" || mt == "application/octet-stream" {
		mt = mf.MediaType
	}
	if mt == "" {
		writeRegError(w, http.StatusBadRequest, "MANIFEST_INVALID", "no media type in Content-Type nor in the manifest")
		return
	}
	tag := ""
	if strings.Contains(ref, ":") {
		want, err := parseDigest(ref)
		if err != nil {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
			return
		}
		if got := digestOf(body); got != want {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("manifest content has %s, pushed as %s", got, want))
			return
		}
	} else if reponame.CheckTag(ref) != nil {
		writeRegError(w, http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("invalid tag %q", ref))
		return
	} else {
		tag = ref
	}
	if code, msg := m.checkRefs(repo, types.MediaType(mt), mf); code != "" {
		writeRegError(w, http.StatusBadRequest, code, msg)
		return
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	undo, err := m.persist(ctx, repo, tag, mt, body)
	if err != nil {
		log.G(ctx).WithError(err).WithField("repo", repo).Error("registry: manifest not stored")
		writeStorageError(req.Context(), w, err)
		return
	}
	rec := m.forward(ctx, http.MethodPut, repo, ref, mt, body)
	if rec.Code != http.StatusCreated {
		undo()
	} else {
		rec.Header().Set("Location", "/v2/"+repo+"/manifests/"+digestOf(body).String())
	}
	copyRecorded(w, rec)
}

// checkRefs refuses an index whose manifests, or an image whose config
// and layers, were not pushed first, as distribution does.
func (m *manifestStore) checkRefs(repo string, mt types.MediaType, mf manifestFields) (code, msg string) {
	switch {
	case mt.IsIndex():
		for _, d := range mf.Manifests {
			if !d.MediaType.IsImage() && !d.MediaType.IsIndex() {
				continue
			}
			if !m.hasRevision(repo, d.Digest) {
				return "MANIFEST_UNKNOWN", fmt.Sprintf("index refers to manifest %s, not in %s", d.Digest, repo)
			}
		}
	case mt.IsImage():
		descs := mf.Layers
		if mf.Config != nil {
			descs = append([]v1.Descriptor{*mf.Config}, descs...)
		}
		for _, d := range descs {
			if len(d.URLs) > 0 || !d.MediaType.IsDistributable() {
				continue // foreign layer, fetched from elsewhere
			}
			if _, err := parseDigest(d.Digest.String()); err != nil || !m.blobs.has(d.Digest) {
				return "MANIFEST_BLOB_UNKNOWN", fmt.Sprintf("manifest refers to blob %s, not pushed", d.Digest)
			}
		}
	}
	return "", ""
}

// persist writes the manifest bytes, its revision and its tag, and returns
// how to take the revision and tag back if ggcr refuses the manifest.
func (m *manifestStore) persist(ctx context.Context, repo, tag, mt string, body []byte) (undo func(), err error) {
	h, err := m.blobs.putBytes(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("store manifest: %w", err)
	}
	rev := m.revisionPath(repo, h)
	_, statErr := os.Stat(rev)
	newRev := errors.Is(statErr, os.ErrNotExist)
	if err := writeFileAtomic(rev, []byte(mt+"\n")); err != nil {
		return nil, fmt.Errorf("store manifest revision: %w", err)
	}
	var oldTag []byte
	if tag != "" {
		oldTag, _ = os.ReadFile(m.tagPath(repo, tag))
		if err := writeFileAtomic(m.tagPath(repo, tag), []byte(h.String()+"\n")); err != nil {
			if newRev {
				os.Remove(rev)
			}
			return nil, fmt.Errorf("store tag %s: %w", tag, err)
		}
	}
	return func() {
		if newRev {
			os.Remove(rev)
		}
		if tag != "" {
			if oldTag != nil {
				writeFileAtomic(m.tagPath(repo, tag), oldTag)
			} else {
				os.Remove(m.tagPath(repo, tag))
			}
		}
	}, nil
}

// delete handles DELETE /v2/<repo>/manifests/<ref>. Deleting a digest
// also deletes the tags that point at it, on disk and in ggcr.
func (m *manifestStore) delete(w http.ResponseWriter, req *http.Request, repo, ref string) {
	ctx := req.Context()
	m.mu.Lock()
	defer m.mu.Unlock()
	if strings.Contains(ref, ":") {
		h, err := parseDigest(ref)
		if err != nil {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
			return
		}
		tags, _ := os.ReadDir(filepath.Join(m.dir(repo), "tags"))
		for _, t := range tags {
			b, err := os.ReadFile(m.tagPath(repo, t.Name()))
			if err == nil && strings.TrimSpace(string(b)) == h.String() {
				os.Remove(m.tagPath(repo, t.Name()))
				m.forward(ctx, http.MethodDelete, repo, t.Name(), "", nil)
			}
		}
		os.Remove(m.revisionPath(repo, h))
	} else if reponame.CheckTag(ref) == nil {
		os.Remove(m.tagPath(repo, ref))
	} else {
		writeRegError(w, http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("invalid tag %q", ref))
		return
	}
	copyRecorded(w, m.forward(ctx, http.MethodDelete, repo, ref, "", nil))
}

// forward hands a manifest request to ggcr's registry in process.
func (m *manifestStore) forward(ctx context.Context, method, repo, ref, mt string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequestWithContext(ctx, method, "/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	if mt != "" {
		req.Header.Set("Content-Type", mt)
	}
	rec := httptest.NewRecorder()
	m.ggcr.ServeHTTP(rec, req)
	return rec
}

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// stored is one manifest revision found on disk.
type stored struct {
	repo string
	h    v1.Hash
	mt   string
	body []byte
}

// load replays the manifests and tags on disk into ggcr's registry:
// images first, then indexes (which ggcr checks against their children),
// then tags. Corrupt entries are logged and skipped.
func (m *manifestStore) load(ctx context.Context) error {
	var revs []stored
	var tags [][2]string // repo, tag
	err := filepath.WalkDir(m.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || d.Name() != "_manifests" {
			return nil
		}
		rel, _ := filepath.Rel(m.root, filepath.Dir(p))
		repo := filepath.ToSlash(rel)
		if reponame.CheckRepository(repo) != nil {
			log.G(ctx).WithField("path", p).Warn("registry: skipping directory with an invalid repository name")
			return fs.SkipDir
		}
		entries, _ := os.ReadDir(filepath.Join(p, "revisions"))
		for _, e := range entries {
			s, err := m.readRevision(repo, e.Name())
			if err != nil {
				log.G(ctx).WithError(err).WithField("repo", repo).Warn("registry: skipping stored manifest")
				continue
			}
			revs = append(revs, s)
		}
		entries, _ = os.ReadDir(filepath.Join(p, "tags"))
		for _, e := range entries {
			tags = append(tags, [2]string{repo, e.Name()})
		}
		return fs.SkipDir
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("load manifests from %s: %w", m.root, err)
	}
	byKey := map[string]stored{}
	pending := revs
	for pass := 0; pass <= len(revs) && len(pending) > 0; pass++ {
		var later []stored
		for _, s := range pending {
			if rec := m.forward(ctx, http.MethodPut, s.repo, s.h.String(), s.mt, s.body); rec.Code != http.StatusCreated {
				later = append(later, s)
				continue
			}
			byKey[s.repo+"@"+s.h.String()] = s
		}
		if len(later) == len(pending) {
			break
		}
		pending = later
	}
	for _, s := range pending {
		log.G(ctx).WithFields(log.Fields{"repo": s.repo, "digest": s.h.String()}).Warn("registry: stored manifest refused on replay")
	}
	for _, t := range tags {
		repo, tag := t[0], t[1]
		b, err := os.ReadFile(m.tagPath(repo, tag))
		s, ok := byKey[repo+"@"+strings.TrimSpace(string(b))]
		if err != nil || !ok || reponame.CheckTag(tag) != nil {
			log.G(ctx).WithFields(log.Fields{"repo": repo, "tag": tag}).Warn("registry: skipping stored tag")
			continue
		}
		m.forward(ctx, http.MethodPut, repo, tag, s.mt, s.body)
	}
	log.G(ctx).WithFields(log.Fields{"manifests": len(byKey), "tags": len(tags)}).Info("registry: loaded stored manifests")
	return nil
}

func (m *manifestStore) readRevision(repo, name string) (stored, error) {
	h, err := parseDigest("sha256:" + name)
	if err != nil {
		return stored{}, err
	}
	mt, err := os.ReadFile(m.revisionPath(repo, h))
	if err != nil {
		return stored{}, fmt.Errorf("read revision: %w", err)
	}
	body, err := m.blobs.readVerified(h, maxManifestSize)
	if err != nil {
		return stored{}, err
	}
	return stored{repo: repo, h: h, mt: strings.TrimSpace(string(mt)), body: body}, nil
}

// writeFileAtomic replaces path with data: temp file, fsync, rename.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return storageError("create "+dir, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return storageError("create temporary file in "+dir, err)
	}
	if _, err := f.Write(data); err != nil {
		discard(f)
		return storageError("write "+path, err)
	}
	if err := f.Sync(); err != nil {
		discard(f)
		return storageError("sync "+path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return storageError("close "+path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return storageError("rename "+path, err)
	}
	syncDir(dir)
	return nil
}
