package dsserver

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/log"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/localds/localds/internal/durable"
)

// quarantineDir (under the registry's directory) is where blobs that no
// longer match their digest are moved: out of the store, so the next
// request gets 404 and a push heals it, but kept for the operator.
const quarantineDir = "quarantine"

// errCorrupt is returned (wrapped) for a stored blob that no longer
// hashes to its digest.
var errCorrupt = errors.New("stored blob does not match its digest")

// sendVerified serves the blob f through http.ServeContent while hashing
// the whole blob: the bytes sent as they go, the rest (before a range, or
// after it) read from the file. The last chunk written is held back until
// the digest has been checked; on a mismatch it is never sent, the
// response is aborted (the client sees a cut connection, never a complete
// wrong body), the blob is quarantined and counted.
func (r *Registry) sendVerified(w http.ResponseWriter, req *http.Request, f *os.File, size int64, h v1.Hash) {
	check := &sendCheck{f: f, size: size, hw: newHasher(h.Algorithm)}
	hw := &holdbackWriter{ResponseWriter: w}
	http.ServeContent(hw, req, "", time.Time{}, &checkedReader{check: check})
	if !check.read || hw.err != nil {
		hw.release() // nothing was sent (HEAD, 304, 416), or the client left
		return
	}
	if err := check.finish(h); err != nil {
		r.corrupt(req.Context(), h, f, err)
		panic(http.ErrAbortHandler)
	}
	hw.release()
}

// corrupt logs, counts and quarantines a blob found not to match its
// digest.
func (r *Registry) corrupt(ctx context.Context, h v1.Hash, f *os.File, err error) {
	r.metrics.corruptBlobs.Inc()
	e := log.G(ctx).WithError(err).WithField("digest", h.String())
	dest, qerr := r.store.quarantine(h, f)
	if qerr != nil {
		e.WithField("quarantine", qerr.Error()).Error("registry: corrupt blob, response cut; could not quarantine it")
		return
	}
	e.WithField("quarantined", dest).Error("registry: corrupt blob, response cut and blob quarantined: push it again to heal")
}

// sendCheck hashes a blob in order whatever parts of it are sent.
type sendCheck struct {
	f      *os.File
	size   int64
	hw     hash.Hash
	hashed int64 // bytes [0, hashed) are in hw
	read   bool  // some content was read to be sent
	err    error // a read error of the hash beside a sendfile
}

// feed hashes b, read at off, after whatever lies between the hashed
// prefix and off.
func (c *sendCheck) feed(off int64, b []byte) error {
	c.read = true
	if off > c.hashed {
		if err := c.hashFile(off); err != nil {
			return err
		}
	}
	if end := off + int64(len(b)); end > c.hashed {
		c.hw.Write(b[c.hashed-off:])
		c.hashed = end
	}
	return nil
}

// hashFile hashes the file from the hashed prefix up to end.
func (c *sendCheck) hashFile(end int64) error {
	if end <= c.hashed {
		return nil
	}
	n, err := io.Copy(c.hw, io.NewSectionReader(c.f, c.hashed, end-c.hashed))
	c.hashed += n
	if err != nil {
		return fmt.Errorf("read blob to verify it: %w", err)
	}
	return nil
}

// finish hashes the rest of the blob and compares.
func (c *sendCheck) finish(want v1.Hash) error {
	if c.err != nil {
		return c.err
	}
	if err := c.hashFile(c.size); err != nil {
		return err
	}
	if got := fmt.Sprintf("%x", c.hw.Sum(nil)); got != want.Hex {
		return fmt.Errorf("%w: %s has %s:%s", errCorrupt, want, want.Algorithm, got)
	}
	return nil
}

// checkedReader is the io.ReadSeeker ServeContent reads: positioned reads
// of the file, each fed to the check.
type checkedReader struct {
	check *sendCheck
	pos   int64
}

func (r *checkedReader) Read(p []byte) (int, error) {
	n, err := r.check.f.ReadAt(p, r.pos)
	if n > 0 {
		if ferr := r.check.feed(r.pos, p[:n]); ferr != nil {
			return 0, ferr
		}
		r.pos += int64(n)
	}
	return n, err
}

func (r *checkedReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += r.pos
	case io.SeekEnd:
		off += r.check.size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if off < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.pos = off
	return off, nil
}

// holdbackWriter passes writes on one behind: the last one waits for
// release, so a body found corrupt at its end is never complete at the
// client. Its ReadFrom sends most of the body with sendfile while the
// blob is hashed beside it (see ReadFrom).
type holdbackWriter struct {
	http.ResponseWriter
	held []byte
	err  error
}

// heldTail is what ReadFrom keeps back of a body until the digest
// matched: any byte withheld leaves a corrupt body incomplete.
const heldTail = 32 << 10

// ReadFrom is ServeContent's copy of a checkedReader range. Instead of
// passing every byte through the hash in line (one core, no sendfile), it
// hashes the whole blob from the file on another goroutine while the
// kernel sends all but the last heldTail bytes of the range with
// sendfile; the tail is read and held back, so sendVerified sends it only
// once the digest matched. Blobs are written once and renamed into place,
// so what is hashed is what is sent. Anything else takes the plain copy.
func (w *holdbackWriter) ReadFrom(src io.Reader) (int64, error) {
	lr, ok := src.(*io.LimitedReader)
	var cr *checkedReader
	if ok {
		cr, ok = lr.R.(*checkedReader)
	}
	rf, canSend := w.ResponseWriter.(io.ReaderFrom)
	if !ok || !canSend || w.err != nil || lr.N <= heldTail || len(w.held) > 0 || cr.pos+lr.N > cr.check.size {
		return io.Copy(writerOnly{w}, src)
	}
	check, f, start, n := cr.check, cr.check.f, cr.pos, lr.N
	check.read = true
	hashed := make(chan error, 1)
	go func() { hashed <- check.hashFile(check.size) }()

	body := n - heldTail
	var sent int64
	_, err := f.Seek(start, io.SeekStart)
	if err == nil {
		sent, err = rf.ReadFrom(&io.LimitedReader{R: f, N: body})
		if err == nil && sent < body {
			err = io.ErrUnexpectedEOF
		}
	}
	herr := <-hashed // check is not touched again before the goroutine is done
	if err != nil {
		w.err = err
		return sent, err
	}
	if herr != nil {
		check.err = herr
	}
	tail := make([]byte, heldTail)
	if _, err := f.ReadAt(tail, start+body); err != nil {
		w.err = fmt.Errorf("read blob tail: %w", err)
		return sent, w.err
	}
	w.held = tail
	cr.pos, lr.N = start+n, 0
	return n, nil
}

// writerOnly hides ReadFrom, for the plain copy.
type writerOnly struct{ io.Writer }

func (w *holdbackWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if len(w.held) > 0 {
		if _, err := w.ResponseWriter.Write(w.held); err != nil {
			w.err = err
			return 0, err
		}
	}
	w.held = append(w.held[:0], p...)
	return len(p), nil
}

// release sends what is held.
func (w *holdbackWriter) release() {
	if len(w.held) > 0 && w.err == nil {
		_, w.err = w.ResponseWriter.Write(w.held)
		w.held = w.held[:0]
	}
}

// quarantine moves blob h out of the store if the file at its path is
// still f (a push may have replaced it with good content meanwhile), and
// returns where it went.
func (s *blobStore) quarantine(h v1.Hash, f *os.File) (string, error) {
	p := s.path(h)
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("stat corrupt blob: %w", err)
	}
	cur, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("corrupt blob already gone: %w", err)
	}
	if !os.SameFile(fi, cur) {
		return "", errors.New("corrupt blob already replaced by a new push")
	}
	dest := filepath.Join(s.root, quarantineDir, h.Algorithm+"-"+h.Hex+"-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.Rename(p, dest); err != nil {
		return "", fmt.Errorf("move corrupt blob to %s: %w", dest, err)
	}
	s.quota.release(fi.Size())
	if err := durable.SyncDir(filepath.Dir(p)); err != nil {
		return dest, err
	}
	return dest, durable.SyncDir(filepath.Dir(dest))
}
