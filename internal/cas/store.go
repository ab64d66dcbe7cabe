// Package cas is localds's content-addressable store: containerd's own
// local content store (plugins/content/local) rooted at <root>/vault/cas, so
// the on-disk format is containerd's (blobs/<alg>/<hex>, ingest/<ref hash>/)
// and tools that know it keep working.
//
// What the local store guarantees, and localds relies on (see
// store_test.go): a write lives only in ingest/ until Commit, which fsyncs
// the data, refuses a size or digest that differs from what was written
// (errdefs.ErrFailedPrecondition), and only then renames the file to
// blobs/<alg>/<hex> named by the digest it computed while streaming. So a
// blob is never visible under a digest it does not have, and a crash leaves
// at most a resumable ingest. Fsck re-checks that invariant on disk.
package cas

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// The layout under the CAS directory. blobs and ingest are containerd's;
// labels is ours (see labelStore).
const (
	blobsDir  = "blobs"
	ingestDir = "ingest"
	labelsDir = "labels"
)

// Dir is the CAS directory for the localds root (e.g. /persist ->
// /persist/vault/cas).
func Dir(root string) string {
	return filepath.Join(root, "vault", "cas")
}

// BlobPath is where the blob d lives (or would live) under root.
func BlobPath(root string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("blob path of %q: %v: %w", d, err, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(Dir(root), blobsDir, d.Algorithm().String(), d.Encoded()), nil
}

// Open returns the content store at <root>/vault/cas, creating the
// directories if needed. The store holds no open resources between calls, so
// there is nothing to close; several stores may be opened on one root in one
// process only if they never write the same ref (the local store's ref locks
// are per store), which is why the daemon opens it once.
func Open(ctx context.Context, root string) (content.Store, error) {
	if root == "" {
		return nil, fmt.Errorf("content store: empty root directory: %w", errdefs.ErrInvalidArgument)
	}
	dir := Dir(root)
	// The vault is private to the node's daemons: create it 0700 if it does
	// not exist yet (an existing vault keeps its mode).
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, fmt.Errorf("content store: create %s: %w", filepath.Dir(dir), err)
	}
	// blobs/sha256 and ingest/ up front: the local store's Walk fails on a
	// missing blobs/ (so `ctr content ls` would on a fresh node).
	for _, d := range []string{filepath.Join(dir, blobsDir, digest.Canonical.String()), filepath.Join(dir, ingestDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("content store: create %s: %w", d, err)
		}
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("content store: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("content store: %s is not a directory: %w", dir, errdefs.ErrFailedPrecondition)
	}
	ls := newLabelStore(filepath.Join(dir, labelsDir))
	cs, err := local.NewLabeledStore(dir, ls)
	if err != nil {
		return nil, fmt.Errorf("content store at %s: %w", dir, err)
	}
	log.G(ctx).WithField("dir", dir).Debug("content store open")
	return &store{Store: cs, labels: ls, dir: dir}, nil
}

// store is the local store plus label cleanup on Delete: the local store
// does not know that its label store keeps files.
type store struct {
	content.Store
	labels *labelStore
	dir    string
}

// Delete removes the labels first, then the blob: a crash in between leaves
// a blob without labels (harmless: containerd keeps its own), never labels
// that a later blob with the same digest would inherit.
func (s *store) Delete(ctx context.Context, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("delete %q: %v: %w", d, err, errdefs.ErrInvalidArgument)
	}
	if _, err := s.Store.Info(ctx, d); err != nil {
		// The local store's Delete answers nil for a missing blob; callers
		// (containerd's GC, ctr content rm) expect NotFound.
		return err
	}
	if err := s.labels.Set(d, nil); err != nil {
		return fmt.Errorf("delete %s: %w", d, err)
	}
	if err := s.Store.Delete(ctx, d); err != nil {
		return fmt.Errorf("delete %s: %w", d, err)
	}
	return nil
}
