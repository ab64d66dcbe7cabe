package dsserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/localds/localds/internal/durable"
)

// ErrDiskFull is returned (wrapped) when a write fails for lack of space.
var ErrDiskFull = errors.New("disk full")

// ErrDigestMismatch is returned (wrapped) when content does not hash to
// the digest it was pushed under.
var ErrDigestMismatch = errors.New("digest mismatch")

// tempFile is what the store writes new content to; a test can make
// writes fail as on a full disk.
type tempFile interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

// blobStore keeps blobs content-addressed under root: blobs/<alg>/<hex>
// (sha256 or sha512).
// New content is written to root/tmp or root/uploads, hashed while it is
// written, fsynced, and renamed into blobs/ only once its digest checks
// out, so nothing unverified is ever visible. Every byte written counts
// against the limits (quota) from its first write; a blob that rots on
// disk is moved to root/quarantine.
type blobStore struct {
	root       string
	createTemp func(dir, pattern string) (tempFile, error)
	quota      *quota
	recent     *recentBlobs
}

func newBlobStore(root string, lim Limits) (*blobStore, error) {
	for _, d := range []string{"blobs/sha256", "blobs/sha512", "tmp", "uploads", quarantineDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("create blob store: %w", err)
		}
	}
	// Leftovers of a crash or of uploads interrupted by a restart.
	for _, d := range []string{"tmp", "uploads"} {
		entries, err := os.ReadDir(filepath.Join(root, d))
		if err != nil {
			return nil, fmt.Errorf("clean blob store: %w", err)
		}
		for _, e := range entries {
			os.Remove(filepath.Join(root, d, e.Name()))
		}
	}
	used, err := storedBytes(root)
	if err != nil {
		return nil, err
	}
	return &blobStore{
		root:       root,
		createTemp: func(dir, pattern string) (tempFile, error) { return os.CreateTemp(dir, pattern) },
		quota:      newQuota(lim, used),
		recent:     newRecentBlobs(),
	}, nil
}

func (s *blobStore) path(h v1.Hash) string {
	return filepath.Join(s.root, "blobs", h.Algorithm, h.Hex)
}

// open returns the blob file and its size, or errNotFound.
func (s *blobStore) open(h v1.Hash) (*os.File, int64, error) {
	if _, err := parseDigest(h.String()); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", errNotFound, err)
	}
	f, err := os.Open(s.path(h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, errNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open blob %s: %w", h, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat blob %s: %w", h, err)
	}
	return f, fi.Size(), nil
}

// remove deletes a blob from the store; errNotFound if it is not there.
func (s *blobStore) remove(h v1.Hash) error {
	if _, err := parseDigest(h.String()); err != nil {
		return fmt.Errorf("%w: %v", errNotFound, err)
	}
	p := s.path(h)
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return errNotFound
	}
	if err != nil {
		return fmt.Errorf("delete blob %s: %w", h, err)
	}
	if err := os.Remove(p); errors.Is(err, os.ErrNotExist) {
		return errNotFound
	} else if err != nil {
		return fmt.Errorf("delete blob %s: %w", h, err)
	}
	s.quota.release(fi.Size())
	return durable.SyncDir(filepath.Dir(p))
}

// has reports whether the blob is in the store.
func (s *blobStore) has(h v1.Hash) bool {
	if _, err := parseDigest(h.String()); err != nil {
		return false
	}
	fi, err := os.Stat(s.path(h))
	return err == nil && fi.Mode().IsRegular()
}

// ingest writes r to a temporary file, checks that it hashes to h and
// commits it. On any error nothing is left behind.
func (s *blobStore) ingest(ctx context.Context, h v1.Hash, r io.Reader) (int64, error) {
	if _, err := parseDigest(h.String()); err != nil {
		return 0, err
	}
	f, err := s.createTemp(filepath.Join(s.root, "tmp"), "ingest-*")
	if err != nil {
		return 0, storageError("create temporary file", err)
	}
	hw := newHasher(h.Algorithm)
	cw := s.quota.writer(0)
	n, err := io.Copy(io.MultiWriter(cw, f, hw), contextReader{ctx, r})
	if err != nil {
		s.discard(f, cw.n)
		return n, storageError(fmt.Sprintf("write blob %s after %d bytes", h, n), err)
	}
	return n, s.commit(f, hw, h, cw.n)
}

// commit checks the hash of a fully written temporary file and renames it
// into place, or removes it. hw hashed the file as it was written; when
// want is of another algorithm (an upload session hashes sha256 only,
// not knowing the digest to come), the file is read back and hashed.
// reserved is what the file counts in the quota: kept if the blob is new,
// given back if the blob was there already or nothing is committed.
func (s *blobStore) commit(f tempFile, hw hash.Hash, want v1.Hash, reserved int64) (err error) {
	defer func() {
		if err != nil {
			s.quota.release(reserved)
		}
	}()
	alg := want.Algorithm
	if alg == "" {
		alg = "sha256"
	}
	got := fmt.Sprintf("%x", hw.Sum(nil))
	if newHasher(alg).Size() != hw.Size() {
		var err error
		if got, err = rehash(f.Name(), alg); err != nil {
			discard(f)
			return err
		}
	}
	if got != want.Hex {
		discard(f)
		return fmt.Errorf("%w: content has %s:%s, pushed as %s", ErrDigestMismatch, alg, got, want)
	}
	if err := f.Sync(); err != nil {
		discard(f)
		return storageError("sync blob "+want.String(), err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return storageError("close blob "+want.String(), err)
	}
	existed := s.has(want)
	if err := os.Rename(f.Name(), s.path(want)); err != nil {
		os.Remove(f.Name())
		return storageError("commit blob "+want.String(), err)
	}
	if existed {
		s.quota.release(reserved) // the same bytes were counted already
	}
	s.recent.touch(want)
	if err := durable.SyncDir(filepath.Dir(s.path(want))); err != nil {
		return storageError("commit blob "+want.String(), err)
	}
	return nil
}

// rehash reads a written file back and returns its hex digest under alg.
func rehash(path, alg string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reopen upload to hash it with %s: %w", alg, err)
	}
	defer f.Close()
	hw := newHasher(alg)
	if _, err := io.Copy(hw, f); err != nil {
		return "", fmt.Errorf("hash upload with %s: %w", alg, err)
	}
	return fmt.Sprintf("%x", hw.Sum(nil)), nil
}

// putBytes stores small content (manifests) under its own digest of
// algorithm alg.
func (s *blobStore) putBytes(ctx context.Context, alg string, b []byte) (v1.Hash, error) {
	h := hashBytes(alg, b)
	if s.has(h) {
		s.recent.touch(h)
		return h, nil
	}
	_, err := s.ingest(ctx, h, bytes.NewReader(b))
	return h, err
}

// readVerified reads a small blob and checks its digest.
func (s *blobStore) readVerified(h v1.Hash, limit int64) ([]byte, error) {
	f, size, err := s.open(h)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size > limit {
		return nil, fmt.Errorf("blob %s is %d bytes, more than %d", h, size, limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", h, err)
	}
	if got := hashBytes(h.Algorithm, b); got != h {
		return nil, fmt.Errorf("blob %s is corrupt: %w: content has %s", h, ErrDigestMismatch, got)
	}
	return b, nil
}

func discard(f tempFile) {
	f.Close()
	os.Remove(f.Name())
}

// discard removes a temporary file and gives back its quota.
func (s *blobStore) discard(f tempFile, reserved int64) {
	discard(f)
	s.quota.release(reserved)
}

// storageError wraps a write failure, marking a full disk (or quota) so
// that the client gets a clear "disk full" and the operator a clear log.
func storageError(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: %w: %w", what, ErrDiskFull, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// contextReader stops a copy when the request is cancelled.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
