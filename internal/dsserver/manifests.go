package dsserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/localds/localds/internal/durable"
	"github.com/localds/localds/internal/reponame"
)

// maxManifestSize is the largest manifest accepted (distribution's limit).
const maxManifestSize = 4 << 20

// manifestStore keeps manifests and tags on disk and serves them:
//
//	DIR/.registry/blobs/<alg>/<hex>                               the manifest bytes
//	DIR/.registry/repositories/<repo>/_manifests/revisions/<hex>  its media type
//	DIR/.registry/repositories/<repo>/_manifests/tags/<tag>       "<alg>:<hex>"
//
// A revision's algorithm is told by its name's length (64 hex digits:
// sha256, 128: sha512), which keeps the sha256 layout of earlier versions.
// ("_manifests" cannot be a repository path component, so no repository
// name collides with it.) The disk is the only truth; the referrers index
// is derived from it at start and kept up to date on push and delete.
type manifestStore struct {
	root      string
	blobs     *blobStore
	referrers *referrers
	mu        sync.Mutex // serialises pushes and deletes
}

// manifestFields are the parts of an image manifest or index read on push.
type manifestFields struct {
	MediaType    string            `json:"mediaType"`
	ArtifactType string            `json:"artifactType"`
	Config       *v1.Descriptor    `json:"config"`
	Layers       []v1.Descriptor   `json:"layers"`
	Manifests    []v1.Descriptor   `json:"manifests"`
	Subject      *v1.Descriptor    `json:"subject"`
	Annotations  map[string]string `json:"annotations"`
}

func (m *manifestStore) dir(repo string) string {
	return filepath.Join(m.root, filepath.FromSlash(repo), "_manifests")
}

func (m *manifestStore) revisionPath(repo string, h v1.Hash) string {
	return filepath.Join(m.dir(repo), "revisions", h.Hex)
}

// revisionDigest is the digest a revision file name stands for.
func revisionDigest(name string) (v1.Hash, error) {
	alg := "sha256"
	if len(name) == 128 {
		alg = "sha512"
	}
	return parseDigest(alg + ":" + name)
}

func (m *manifestStore) tagPath(repo, tag string) string {
	return filepath.Join(m.dir(repo), "tags", tag)
}

func (m *manifestStore) hasRevision(repo string, h v1.Hash) bool {
	if _, err := parseDigest(h.String()); err != nil {
		return false
	}
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
	// A manifest pushed by tag is named by its sha256, the canonical
	// algorithm; one pushed by digest keeps that digest's algorithm.
	h := digestOf(body)
	tag := ""
	if strings.Contains(ref, ":") {
		want, err := parseDigest(ref)
		if err != nil {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
			return
		}
		if got := hashBytes(want.Algorithm, body); got != want {
			writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("manifest content has %s, pushed as %s", got, want))
			return
		}
		h = want
	} else if reponame.CheckTag(ref) != nil {
		writeRegError(w, http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("invalid tag %q", ref))
		return
	} else {
		tag = ref
	}
	// Checked under the lock: a blob delete or a collection cannot take
	// what this manifest needs between the check and the write.
	m.mu.Lock()
	defer m.mu.Unlock()
	if code, msg := m.checkRefs(repo, types.MediaType(mt), mf); code != "" {
		writeRegError(w, http.StatusBadRequest, code, msg)
		return
	}
	if err := m.persist(ctx, repo, tag, mt, h, body); err != nil {
		log.G(ctx).WithError(err).WithField("repo", repo).Error("registry: manifest not stored")
		writeStorageError(ctx, w, err)
		return
	}
	if mf.Subject != nil {
		m.referrers.add(repo, mf.Subject.Digest, referrerDescriptor(mt, h, int64(len(body)), mf))
		// Tells the client this registry indexes referrers, so it need
		// not keep a referrers tag schema index itself.
		w.Header().Set("OCI-Subject", mf.Subject.Digest.String())
	}
	w.Header().Set("Location", "/v2/"+repo+"/manifests/"+h.String())
	w.Header().Set("Docker-Content-Digest", h.String())
	w.WriteHeader(http.StatusCreated)
}

// checkRefs refuses an index whose manifests, or an image whose config
// and layers, were not pushed first, as distribution does. The subject
// need not exist: referrers may be pushed before what they refer to.
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
			if !m.blobs.has(d.Digest) {
				return "MANIFEST_BLOB_UNKNOWN", fmt.Sprintf("manifest refers to blob %s, not pushed", d.Digest)
			}
		}
	}
	return "", ""
}

// persist writes the manifest bytes, its revision and its tag; on error
// it takes back what it wrote of them.
func (m *manifestStore) persist(ctx context.Context, repo, tag, mt string, h v1.Hash, body []byte) error {
	if _, err := m.blobs.putBytes(ctx, h.Algorithm, body); err != nil {
		return fmt.Errorf("store manifest: %w", err)
	}
	rev := m.revisionPath(repo, h)
	_, statErr := os.Stat(rev)
	newRev := errors.Is(statErr, os.ErrNotExist)
	if err := writeFileAtomic(rev, []byte(mt+"\n")); err != nil {
		return fmt.Errorf("store manifest revision: %w", err)
	}
	if tag != "" {
		if err := writeFileAtomic(m.tagPath(repo, tag), []byte(h.String()+"\n")); err != nil {
			if newRev {
				os.Remove(rev)
			}
			return fmt.Errorf("store tag %s: %w", tag, err)
		}
	}
	return nil
}

// delete handles DELETE /v2/<repo>/manifests/<ref>. Deleting a digest
// also deletes the tags that point at it and its place in the referrers.
func (m *manifestStore) delete(w http.ResponseWriter, req *http.Request, repo, ref string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !strings.Contains(ref, ":") {
		if reponame.CheckTag(ref) != nil {
			writeRegError(w, http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("invalid tag %q", ref))
			return
		}
		err := os.Remove(m.tagPath(repo, ref))
		if errors.Is(err, os.ErrNotExist) {
			writeRegError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("tag %q not in %s", ref, repo))
			return
		} else if err == nil {
			err = durable.SyncDir(filepath.Dir(m.tagPath(repo, ref)))
		}
		if err != nil {
			writeStorageError(req.Context(), w, fmt.Errorf("delete tag %s of %s: %w", ref, repo, err))
			return
		}
		w.WriteHeader(http.StatusAccepted)
		return
	}
	h, err := parseDigest(ref)
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
		return
	}
	if !m.hasRevision(repo, h) {
		writeRegError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("manifest %s not in %s", h, repo))
		return
	}
	tags, _ := os.ReadDir(filepath.Join(m.dir(repo), "tags"))
	for _, t := range tags {
		b, err := os.ReadFile(m.tagPath(repo, t.Name()))
		if err == nil && strings.TrimSpace(string(b)) == h.String() {
			os.Remove(m.tagPath(repo, t.Name()))
		}
	}
	if len(tags) > 0 {
		if err := durable.SyncDir(filepath.Join(m.dir(repo), "tags")); err != nil {
			writeStorageError(req.Context(), w, fmt.Errorf("delete tags of manifest %s of %s: %w", h, repo, err))
			return
		}
	}
	if err := os.Remove(m.revisionPath(repo, h)); err != nil && !errors.Is(err, os.ErrNotExist) {
		writeStorageError(req.Context(), w, fmt.Errorf("delete manifest %s of %s: %w", h, repo, err))
		return
	}
	if err := durable.SyncDir(filepath.Dir(m.revisionPath(repo, h))); err != nil {
		writeStorageError(req.Context(), w, fmt.Errorf("delete manifest %s of %s: %w", h, repo, err))
		return
	}
	m.referrers.remove(repo, h)
	w.WriteHeader(http.StatusAccepted)
}

// stored is one manifest revision found on disk.
type stored struct {
	repo string
	h    v1.Hash
	mt   string
	body []byte
}

// load reads every stored manifest once at start to rebuild the referrers
// index. Corrupt entries are logged and skipped (and answer 404 later).
func (m *manifestStore) load(ctx context.Context) error {
	revs, tags := 0, 0
	err := m.walkRepositories(func(repo, dir string) error {
		entries, _ := os.ReadDir(filepath.Join(dir, "revisions"))
		for _, e := range entries {
			s, err := m.readRevision(repo, e.Name())
			if err != nil {
				log.G(ctx).WithError(err).WithField("repo", repo).Warn("registry: skipping stored manifest")
				continue
			}
			revs++
			var mf manifestFields
			if json.Unmarshal(s.body, &mf) == nil && mf.Subject != nil {
				m.referrers.add(repo, mf.Subject.Digest, referrerDescriptor(s.mt, s.h, int64(len(s.body)), mf))
			}
		}
		entries, _ = os.ReadDir(filepath.Join(dir, "tags"))
		tags += len(entries)
		return nil
	}, func(dir string) {
		log.G(ctx).WithField("path", dir).Warn("registry: skipping directory with an invalid repository name")
	})
	if err != nil {
		return fmt.Errorf("load manifests from %s: %w", m.root, err)
	}
	log.G(ctx).WithFields(log.Fields{"manifests": revs, "tags": tags}).Info("registry: loaded stored manifests")
	return nil
}

func (m *manifestStore) readRevision(repo, name string) (stored, error) {
	h, err := revisionDigest(name)
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

// writeFileAtomic replaces path with data: temp file, fsync, rename,
// fsync of the directory (and of the parents of directories it created).
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := mkdirAllSync(dir); err != nil {
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
	if err := durable.SyncDir(dir); err != nil {
		return storageError("rename "+path, err)
	}
	return nil
}

// mkdirAllSync creates dir and its missing parents, and fsyncs the parent
// of each one it created: a new repository's directories survive a power
// cut along with the manifest written into them.
func mkdirAllSync(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllSync(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return durable.SyncDir(parent)
}
