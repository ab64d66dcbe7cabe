package dsserver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Default limits of `localds serve`.
const (
	DefaultMaxBlobSize = 10 << 30 // one layer larger than 10 GiB is a mistake on an edge node
)

var (
	// ErrBlobTooLarge is returned (wrapped) for a blob over --max-blob-size.
	ErrBlobTooLarge = errors.New("blob too large")
	// ErrStoreFull is returned (wrapped) when a write would take the store
	// over --max-store-size.
	ErrStoreFull = errors.New("datastore store full")
)

// Limits bound what clients can make the store hold. Zero means no limit.
type Limits struct {
	MaxBlobSize  int64 // bytes of one blob (or manifest)
	MaxStoreSize int64 // bytes of all blobs, committed and being written
}

// quota counts the bytes of the store: committed blobs and every byte of
// a write in progress, from its first write, so a push is refused before
// the store passes its limit rather than after the disk filled.
type quota struct {
	lim  Limits
	mu   sync.Mutex
	used int64
}

func newQuota(lim Limits, used int64) *quota { return &quota{lim: lim, used: used} }

// reserve counts n more bytes, or refuses them when the store would pass
// its limit.
func (q *quota) reserve(n int64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.lim.MaxStoreSize > 0 && q.used+n > q.lim.MaxStoreSize {
		return fmt.Errorf("%w: %d bytes stored or being written, --max-store-size is %d", ErrStoreFull, q.used, q.lim.MaxStoreSize)
	}
	q.used += n
	return nil
}

func (q *quota) release(n int64) {
	q.mu.Lock()
	q.used -= n
	q.mu.Unlock()
}

// Used is the bytes the store counts now.
func (q *quota) Used() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.used
}

// writer returns a writer that counts what goes through it against the
// quota and the blob size limit; already is what the blob had before
// (earlier chunks of an upload, which count already).
func (q *quota) writer(already int64) *quotaWriter {
	return &quotaWriter{q: q, size: already}
}

// quotaWriter sits first in a write's MultiWriter: it fails the write
// before the bytes reach the file. n is what it reserved.
type quotaWriter struct {
	q    *quota
	size int64 // the blob's size so far
	n    int64 // bytes reserved by this writer
}

func (w *quotaWriter) Write(p []byte) (int, error) {
	if max := w.q.lim.MaxBlobSize; max > 0 && w.size+int64(len(p)) > max {
		return 0, fmt.Errorf("%w: more than --max-blob-size %d bytes", ErrBlobTooLarge, max)
	}
	if err := w.q.reserve(int64(len(p))); err != nil {
		return 0, err
	}
	w.size += int64(len(p))
	w.n += int64(len(p))
	return len(p), nil
}

// checkLength refuses a declared length over the blob size limit before
// any byte is read.
func (q *quota) checkLength(already, contentLength int64) error {
	if max := q.lim.MaxBlobSize; max > 0 && contentLength > 0 && already+contentLength > max {
		return fmt.Errorf("%w: %d bytes, --max-blob-size is %d", ErrBlobTooLarge, already+contentLength, max)
	}
	return nil
}

// storedBytes is the size of the committed blobs under root.
func storedBytes(root string) (int64, error) {
	var n int64
	for _, alg := range []string{"sha256", "sha512"} {
		entries, err := os.ReadDir(filepath.Join(root, "blobs", alg))
		if err != nil {
			return 0, fmt.Errorf("size of blob store: %w", err)
		}
		for _, e := range entries {
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("size of blob store: %w", err)
			}
			if fi.Mode().IsRegular() {
				n += fi.Size()
			}
		}
	}
	return n, nil
}

// recentBlobs remembers when pushes last saw each blob (committed it,
// found it by HEAD, mounted it), so a collection does not take a blob
// that a push in progress is about to reference.
type recentBlobs struct {
	mu sync.Mutex
	at map[v1.Hash]time.Time
}

func newRecentBlobs() *recentBlobs { return &recentBlobs{at: map[v1.Hash]time.Time{}} }

func (r *recentBlobs) touch(h v1.Hash) {
	r.mu.Lock()
	r.at[h] = time.Now()
	r.mu.Unlock()
}

// since reports whether h was seen after t; older entries are forgotten.
func (r *recentBlobs) since(h v1.Hash, t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.at[h]
	if ok && at.Before(t) {
		delete(r.at, h)
		return false
	}
	return ok
}
