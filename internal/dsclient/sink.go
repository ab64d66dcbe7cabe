package dsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/localds/localds/internal/progress"
)

// Sink takes a download's bytes in place of the partial file (set
// Source.Sink): a consumer that stores what it needs itself, such as an
// archive import that writes each blob into its ingest as it arrives, so
// every byte is written to disk once instead of twice. The downloader
// still does everything else: Range resumes across broken connections and
// address changes guarded by If-Range, retries, the stall cut, size limits,
// TLS and credentials. What it does not do then is keep or hash the file:
// the sink verifies the sha256 (it sees every byte in order) and makes its
// own state durable, so that Resume can continue after a restart.
type Sink interface {
	// Resume is called once, before the first request, when the
	// downloader's state from an earlier run matches this URL and sha256.
	// It returns how many bytes of the file the sink still holds (0 for
	// none); the download continues after them.
	Resume(ctx context.Context) (int64, error)
	// Write takes the next bytes of the file. An error ends the download
	// (it is not retried).
	Write(p []byte) (int, error)
	// Restart drops everything the sink holds: the file changed on the
	// server, the server ignored a Range, or there is no state to resume.
	Restart() error
}

// ChunkSink is a Sink that lends the buffers the download reads into, so
// the bytes go from the socket to the sink without another copy.
type ChunkSink interface {
	Sink
	// Buffer returns an empty buffer to read into, waiting for one. An
	// error ends the download, as from Write.
	Buffer() ([]byte, error)
	// Submit takes back a buffer from Buffer filled with the next bytes
	// (all of them, or an error that ends the download), or empty.
	Submit(b []byte) error
}

// buffers lends copyBody the buffers it reads the body into and takes
// them back: give passes a filled one on and returns how many of its
// bytes were taken, release returns an unused one.
type buffers interface {
	buffer() ([]byte, error)
	give(b []byte) (int, error)
	release(b []byte)
}

// writeBuffers reads into the hash pipe's buffers and writes them to w
// (the partial file, or a Sink that does not lend), then hashes them.
type writeBuffers struct {
	pipe *hashPipe
	w    io.Writer
}

func (wb writeBuffers) buffer() ([]byte, error) { return wb.pipe.buffer(), nil }

func (wb writeBuffers) give(b []byte) (int, error) {
	n, err := wb.w.Write(b)
	wb.pipe.submit(b[:n])
	return n, err
}

func (wb writeBuffers) release(b []byte) { wb.pipe.release(b) }

// sinkBuffers reads into a ChunkSink's own buffers.
type sinkBuffers struct{ sink ChunkSink }

func (sb sinkBuffers) buffer() ([]byte, error) { return sb.sink.Buffer() }

func (sb sinkBuffers) give(b []byte) (int, error) {
	if err := sb.sink.Submit(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (sb sinkBuffers) release(b []byte) { sb.sink.Submit(b[:0]) }

// resumeSink asks the sink where to continue; f.st already matches.
func (f *fetch) resumeSink(ctx context.Context) error {
	n, err := f.src.Sink.Resume(ctx)
	if err != nil {
		return permanent(fmt.Errorf("fetch %s: resume: %w", f.src.URL.Redacted(), err))
	}
	if n < 0 || (f.st.Size >= 0 && n > f.st.Size) {
		return f.truncate()
	}
	f.offset = n
	return nil
}

// feedVerified gives the sink a verified file an earlier, non-sink fetch
// left, instead of downloading it again. It reports whether there was one.
func (f *fetch) feedVerified(ctx context.Context) (*Download, error) {
	final := filepath.Join(f.d.dir, f.src.SHA256+verifiedSuffix)
	vf, err := openLocked(final, os.O_RDONLY, syscall.LOCK_SH)
	if err != nil {
		return nil, nil // none (or in use): download as usual
	}
	defer vf.Close()
	if err := f.src.Sink.Restart(); err != nil {
		return nil, permanent(err)
	}
	n, err := io.CopyBuffer(writerOnly{f.src.Sink}, &progress.Reader{R: vf, Report: func(done int64) {
		f.progress(PhaseDownload, done, -1)
	}}, make([]byte, copyBufferSize))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: read %s: %w", f.src.URL.Redacted(), final, err)
	}
	// The sink verified it (or will say it does not match); it now has
	// what it needs of the file.
	vf.Close()
	removeQuiet(final)
	return &Download{Size: n}, nil
}

// Drop removes what an interrupted Fetch of src left in the area (its
// partial file and state), for a download that should not be resumed:
// the sink gave up on it. A download in use elsewhere is left alone.
func (d *Downloader) Drop(src Source) error {
	if err := checkSource(&src); err != nil {
		return err
	}
	key := downloadKey(src.URL.String(), src.SHA256)
	partial := filepath.Join(d.dir, key+partialSuffix)
	f, err := openLocked(partial, os.O_RDONLY, syscall.LOCK_EX)
	switch {
	case err == nil:
		defer f.Close()
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return removeQuiet(partial, filepath.Join(d.dir, key+stateSuffix))
}

// writerOnly hides a writer's other methods from io.CopyBuffer.
type writerOnly struct{ io.Writer }
