package dsserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/localds/localds/internal/reponame"
)

// gcGrace is how long a blob nothing references is kept after it was
// written or last seen by a push: the manifest that will reference it
// may still be on its way.
const gcGrace = time.Hour

// referer names a manifest that references a blob.
type referer struct {
	repo     string
	manifest v1.Hash
}

// references returns every blob a stored manifest needs (the manifest's
// own bytes, its config, layers, blobs and child manifests), each with
// one manifest that references it. A stored manifest that cannot be read
// is an error: what it references is unknown, so nothing may go.
// m.mu must be held.
func (m *manifestStore) references(ctx context.Context) (map[v1.Hash]referer, error) {
	refs := map[v1.Hash]referer{}
	var bad []string
	err := m.walkRevisions(func(repo, name string) {
		s, err := m.readRevision(repo, name)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s@%s: %v", repo, name, err))
			return
		}
		by := referer{repo: repo, manifest: s.h}
		refs[s.h] = by
		for _, d := range manifestNeeds(s.body) {
			if _, ok := refs[d.Digest]; !ok {
				refs[d.Digest] = by
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		log.G(ctx).WithField("manifests", bad).Warn("registry: stored manifests unreadable")
		return nil, fmt.Errorf("%d stored manifest(s) unreadable, first %s (push them again)", len(bad), bad[0])
	}
	return refs, nil
}

// manifestNeeds lists what a manifest's bytes reference and this store
// must hold: config, layers, blobs (artifact manifests) and child
// manifests; foreign layers (with URLs) are fetched from elsewhere. A
// body that is not a JSON manifest needs nothing.
func manifestNeeds(body []byte) []v1.Descriptor {
	var mf struct {
		manifestFields
		Blobs []v1.Descriptor `json:"blobs"`
	}
	if json.Unmarshal(body, &mf) != nil {
		return nil
	}
	descs := append(append(append([]v1.Descriptor{}, mf.Layers...), mf.Manifests...), mf.Blobs...)
	if mf.Config != nil {
		descs = append(descs, *mf.Config)
	}
	var out []v1.Descriptor
	for _, d := range descs {
		if len(d.URLs) > 0 {
			continue
		}
		if _, err := parseDigest(d.Digest.String()); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// walkRevisions calls fn for every stored manifest revision.
func (m *manifestStore) walkRevisions(fn func(repo, name string)) error {
	err := m.walkRepositories(func(repo, dir string) error {
		entries, err := os.ReadDir(filepath.Join(dir, "revisions"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("list revisions of %s: %w", repo, err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				if _, err := revisionDigest(e.Name()); err == nil {
					fn(repo, e.Name())
				}
			}
		}
		return nil
	}, nil)
	if err != nil {
		return fmt.Errorf("walk manifests in %s: %w", m.root, err)
	}
	return nil
}

// walkRepositories calls fn with each stored repository's name and its
// _manifests directory. A directory whose path is not a valid repository
// name is never read, only passed to skipped (if set).
func (m *manifestStore) walkRepositories(fn func(repo, dir string) error, skipped func(dir string)) error {
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
			if skipped != nil {
				skipped(p)
			}
			return fs.SkipDir
		}
		if err := fn(repo, p); err != nil {
			return err
		}
		return fs.SkipDir
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// gcResult is what a collection did.
type gcResult struct {
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
	Kept  int   `json:"kept_recent"` // unreferenced but within the grace period
}

// collect removes the blobs no stored manifest references and no push
// wrote or saw within grace. Pushes and deletes of manifests wait for it.
func (r *Registry) collect(ctx context.Context, grace time.Duration) (gcResult, error) {
	r.manifests.mu.Lock()
	defer r.manifests.mu.Unlock()
	var res gcResult
	refs, err := r.manifests.references(ctx)
	if err != nil {
		return res, fmt.Errorf("garbage collection skipped: %w", err)
	}
	cutoff := time.Now().Add(-grace)
	for alg := range hexDigests {
		entries, err := os.ReadDir(filepath.Join(r.store.root, "blobs", alg))
		if err != nil {
			return res, fmt.Errorf("garbage collection: %w", err)
		}
		for _, e := range entries {
			h, err := parseDigest(alg + ":" + e.Name())
			if err != nil {
				continue // not ours
			}
			if _, ok := refs[h]; ok {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue
			}
			if fi.ModTime().After(cutoff) || r.store.recent.since(h, cutoff) {
				res.Kept++
				continue
			}
			if err := r.store.remove(h); err != nil && !errors.Is(err, errNotFound) {
				return res, fmt.Errorf("garbage collection: %w", err)
			}
			res.Blobs++
			res.Bytes += fi.Size()
			r.metrics.collected.Inc()
		}
	}
	log.G(ctx).WithFields(log.Fields{"blobs": res.Blobs, "bytes": res.Bytes, "kept_recent": res.Kept}).Info("registry: unreferenced blobs collected")
	return res, nil
}
