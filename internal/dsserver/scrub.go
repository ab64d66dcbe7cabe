package dsserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// scrubWorkers bounds the background check at start: two blobs hashed at
// a time, on threads at the lowest CPU and I/O priority, so serving is
// not slowed by it.
const scrubWorkers = 2

// listBlobs returns the digests of the committed blobs under root.
func listBlobs(root string) ([]v1.Hash, error) {
	var out []v1.Hash
	for alg := range hexDigests {
		entries, err := os.ReadDir(filepath.Join(root, "blobs", alg))
		if err != nil {
			return nil, fmt.Errorf("list blobs: %w", err)
		}
		for _, e := range entries {
			if h, err := parseDigest(alg + ":" + e.Name()); err == nil && e.Type().IsRegular() {
				out = append(out, h)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// checkBlob re-hashes one stored blob. It returns the open file with a
// wrapped errCorrupt on a mismatch (for the quarantine), nil file
// otherwise; errNotFound if it went meanwhile.
func checkBlob(ctx context.Context, path string, h v1.Hash) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", h, err)
	}
	hw := newHasher(h.Algorithm)
	if _, err := io.Copy(hw, contextReader{ctx, f}); err != nil {
		f.Close()
		return nil, fmt.Errorf("read blob %s: %w", h, err)
	}
	if got := fmt.Sprintf("%x", hw.Sum(nil)); got != h.Hex {
		return f, fmt.Errorf("%w: %s has %s:%s", errCorrupt, h, h.Algorithm, got)
	}
	f.Close()
	return nil, nil
}

// scrub re-hashes every stored blob once, in the background at start;
// a blob that does not match is logged, counted and quarantined, as when
// it is found while being sent.
func (r *Registry) scrub(ctx context.Context) {
	blobs, err := listBlobs(r.store.root)
	if err != nil {
		log.G(ctx).WithError(err).Warn("registry: background check not run")
		return
	}
	work := make(chan v1.Hash)
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	for range scrubWorkers {
		wg.Go(func() {
			// The thread is given the lowest priority and never returns
			// to the scheduler's pool: it ends with this goroutine.
			runtime.LockOSThread()
			lowerThreadPriority()
			for h := range work {
				f, err := checkBlob(ctx, r.store.path(h), h)
				if errors.Is(err, errCorrupt) {
					r.corrupt(ctx, h, f, err)
					f.Close()
					mu.Lock()
					bad++
					mu.Unlock()
				} else if err != nil && !errors.Is(err, errNotFound) && ctx.Err() == nil {
					log.G(ctx).WithError(err).Warn("registry: background check could not read a blob")
				}
			}
		})
	}
	for _, h := range blobs {
		select {
		case work <- h:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	if ctx.Err() == nil {
		log.G(ctx).WithFields(log.Fields{"blobs": len(blobs), "corrupt": bad}).Info("registry: background check of stored blobs done")
	}
}

// FsckReport is what Fsck found.
type FsckReport struct {
	Blobs   int      // blobs checked
	Corrupt []string // "<digest>: <what>" for blobs that do not match
	Missing []string // "<digest> (needed by <repo>@<manifest>)"
	Other   []string // manifests unreadable, blobs unreadable
}

// OK reports a store with nothing wrong.
func (r FsckReport) OK() bool { return len(r.Corrupt)+len(r.Missing)+len(r.Other) == 0 }

// Fsck checks the datastore in dir (`localds serve --fsck`): every blob
// against its digest and every stored manifest's references. It changes
// nothing, so it may run beside a serving process; that one quarantines
// what it finds corrupt.
func Fsck(ctx context.Context, dir string) (FsckReport, error) {
	var rep FsckReport
	root := filepath.Join(dir, RegistryDir)
	if _, err := os.Stat(filepath.Join(root, "blobs")); err != nil {
		return rep, fmt.Errorf("no datastore registry in %s: %w", dir, err)
	}
	store := &blobStore{root: root}
	blobs, err := listBlobs(root)
	if err != nil {
		return rep, err
	}
	for _, h := range blobs {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		rep.Blobs++
		f, err := checkBlob(ctx, store.path(h), h)
		switch {
		case errors.Is(err, errCorrupt):
			f.Close()
			rep.Corrupt = append(rep.Corrupt, fmt.Sprintf("%s: %v", h, err))
		case err != nil && !errors.Is(err, errNotFound):
			rep.Other = append(rep.Other, err.Error())
		}
	}
	ms := &manifestStore{root: filepath.Join(root, "repositories"), blobs: store}
	err = ms.walkRevisions(func(repo, name string) {
		s, err := ms.readRevision(repo, name)
		if err != nil {
			rep.Other = append(rep.Other, fmt.Sprintf("manifest %s@%s unreadable: %v", repo, name, err))
			return
		}
		for _, d := range manifestNeeds(s.body) {
			// What a push had to bring first (checkRefs): manifests of an
			// index, config and layers of an image.
			if (d.MediaType.IsImage() || d.MediaType.IsIndex() || d.MediaType.IsDistributable()) && !store.has(d.Digest) {
				rep.Missing = append(rep.Missing, fmt.Sprintf("%s (needed by %s@%s)", d.Digest, repo, s.h))
			}
		}
	})
	return rep, err
}
