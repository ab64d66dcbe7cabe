package dsclient

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/localds/localds/internal/durable"
)

// The downloader area, <root>/vault/downloader, holds per download
//
//	<key>.partial   the bytes fetched so far (locked while in use)
//	<key>.state     JSON: URL, expected sha256, validators, size
//	<hex>.verified  a complete file whose sha256 is <hex>
//
// key is the expected sha256, or "url-" + sha256(URL) when none is known.
// Nothing here is content: the caller imports from a .verified file and
// then removes it.
const (
	partialSuffix  = ".partial"
	stateSuffix    = ".state"
	verifiedSuffix = ".verified"
	maxStateSize   = 64 << 10
)

// state is what a later run needs to resume a partial file safely.
type state struct {
	URL          string `json:"url"`
	SHA256       string `json:"sha256,omitempty"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	Size         int64  `json:"size"` // -1 if unknown
}

// validator is what goes into If-Range: a strong ETag, else Last-Modified
// (RFC 9110 §13.1.5: a weak ETag cannot be used there).
func (s state) validator() string {
	if s.ETag != "" && !isWeakETag(s.ETag) {
		return s.ETag
	}
	return s.LastModified
}

func isWeakETag(e string) bool { return len(e) >= 2 && e[:2] == "W/" }

// downloadKey names a download's files.
func downloadKey(urlStr, expected string) string {
	if expected != "" {
		return expected
	}
	sum := sha256.Sum256([]byte(urlStr))
	return "url-" + hex.EncodeToString(sum[:])
}

func readState(path string) (state, error) {
	var st state
	f, err := os.Open(path)
	if err != nil {
		return st, err
	}
	defer f.Close()
	b := make([]byte, maxStateSize+1)
	n, err := f.Read(b)
	if err != nil {
		return st, err
	}
	if n > maxStateSize {
		return st, fmt.Errorf("state file %s is too big", path)
	}
	if err := json.Unmarshal(b[:n], &st); err != nil {
		return st, fmt.Errorf("state file %s: %w", path, err)
	}
	return st, nil
}

// writeState replaces the state file atomically and durably, so a crash
// or power cut leaves the old or the new one, never half of either, and
// a state that was relied on (the download went on) is still there.
func writeState(path string, st state) error {
	return writeStateSynced(path, st, durable.OS{})
}

// writeStateSynced writes the temporary file and fsyncs it before the
// rename (else the rename may reach the disk before the data), then
// fsyncs the directory that holds the rename.
func writeStateSynced(path string, st state, sy durable.Syncer) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return durable.WriteFile(path, b, sy)
}

// openLocked opens (creating it if need be) path with an exclusive or
// shared flock, never waiting: a second process working on the same
// download gets a clear error instead of corrupting it. It rechecks that
// the locked file is still the one at path, since a finished download
// renames or removes it while another opener may be waiting.
func openLocked(path string, flag int, how int) (*os.File, error) {
	for range 3 {
		f, err := os.OpenFile(path, flag|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s is in use by another download: %w", path, errdefs.ErrUnavailable)
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if sameFile(f, path) {
			return f, nil
		}
		f.Close() // replaced meanwhile: open the new one
	}
	return nil, fmt.Errorf("lock %s: the file keeps being replaced: %w", path, errdefs.ErrUnavailable)
}

func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

// makeArea creates <root>/vault/downloader with mode 0700: downloads are
// not content yet and nobody else has business reading them.
func makeArea(root string) (string, error) {
	dir := filepath.Join(root, "vault", "downloader")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("downloader area: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("downloader area: %w", err)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", fmt.Errorf("downloader area: %w", err)
		}
	}
	return dir, nil
}

// removeQuiet removes files, ignoring those already gone.
func removeQuiet(paths ...string) error {
	var errs []error
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
