package archiveimport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// errStreamInterrupted marks a stream import whose download broke off:
// what was written stays (ingests and a checkpoint) for the resume.
var errStreamInterrupted = errors.New("the archive's download was interrupted")

// errStreamRestarted marks a stream import dropped because its download
// starts over.
var errStreamRestarted = errors.New("the archive's download restarted")

// streamEnded tells whether err is a stream import's download ending
// under it, rather than anything wrong with the archive.
func streamEnded(err error) bool {
	return errors.Is(err, errStreamInterrupted) || errors.Is(err, errStreamRestarted)
}

// checkpointEvery is how much archive may pass between two checkpoints
// written while the stream runs (for a process killed without warning; an
// orderly stop writes one at the exact point).
const checkpointEvery = 32 << 20

// StreamImport imports an archive while it downloads: it is the
// datastore.Sink of the download, so every byte is written to disk once,
// into its blob's ingest in the local store, instead of into a file in the
// downloader area and then again into the store. Every blob is hashed
// while written, and so is the whole archive; the blobs are committed only
// once the archive has arrived whole and its sha256 matched, so
// nothing becomes content before that (Verify, then Commit). If the download breaks off (Stop),
// the ingests stay and a checkpoint file records where the archive stands
// (entries so far, the archive hash's state, the entry being written), so
// a later StreamImport with the same checkpoint path continues where this
// one stopped (Resume) and the download fetches only the bytes after it.
//
// It writes into the local store directly, so it needs ImportOptions.Local
// backing cs (NewStreamImport checks that with a probe blob and answers
// errdefs.ErrNotImplemented if not). Like Import it must run under a
// containerd lease (see Leased).
type StreamImport struct {
	ctx        context.Context
	cs, local  content.Store
	opts       ImportOptions
	want       wantPlatform
	sha256     string // expected hex
	checkpoint string // path of the checkpoint file

	a  *archive
	hr *hashReader
	// current is the entry being written (nil between entries); resumeW
	// its restored writer, for a resume in its middle.
	current *streamEntry
	resumeW content.Writer
	last    boundaryState // the last point between two entries
	savedAt int64         // offset of the last checkpoint written
	// saved: a checkpoint of this run's ref prefix is on disk, so a
	// killed process's ingests are named and the next run reuses (or
	// removes) them, or enter tried to write the first one (a failure is
	// warned about once; the periodic checkpoints go on trying).
	saved bool
	every int64      // checkpointEvery
	sync  durability // fsyncs; tests record them

	pipe     *chunkPipe
	done     chan error
	started  bool
	verified bool
	err      error // the import's own failure, once the stream ended
}

// boundaryState is the stream between two entries: offset is where the
// last entry's data ended, hash the archive hash there.
type boundaryState struct {
	offset  int64
	hash    []byte
	entries int
}

// NewStreamImport prepares an import of the archive whose sha256 is
// sha256hex, checkpointing to the file checkpoint. It starts fresh; call
// Resume to continue from a checkpoint.
func NewStreamImport(ctx context.Context, cs content.Store, sha256hex, checkpoint string, opts ImportOptions) (*StreamImport, error) {
	want, err := parseWant(opts.Platform)
	if err != nil {
		return nil, err
	}
	if sha256hex == "" {
		return nil, fmt.Errorf("import: a stream import needs the archive's sha256: %w", errdefs.ErrInvalidArgument)
	}
	if opts.Local == nil {
		return nil, fmt.Errorf("import: a stream import writes into the local store: %w", errdefs.ErrNotImplemented)
	}
	shared, err := sharesBackend(ctx, cs, opts.Local)
	if err != nil {
		return nil, fmt.Errorf("import: check the local store: %w", err)
	}
	if !shared {
		return nil, fmt.Errorf("import: containerd's content store is not backed by the local store: %w", errdefs.ErrNotImplemented)
	}
	s := &StreamImport{ctx: ctx, cs: cs, local: opts.Local, opts: opts, want: want, sha256: sha256hex, checkpoint: checkpoint, every: checkpointEvery, sync: fsyncs{}}
	if err := s.fresh(); err != nil {
		return nil, err
	}
	return s, nil
}

// fresh sets up an import from the archive's first byte.
func (s *StreamImport) fresh() error {
	if s.hr != nil {
		s.hr.close()
	}
	a := newArchive(s.cs, nil)
	a.local, a.stream = s.local, s
	if err := a.newRefPrefix(); err != nil {
		return err
	}
	hr, err := newHashReader(nil, 0, nil, s.opts.Progress)
	if err != nil {
		return err
	}
	s.a, s.hr, s.current, s.resumeW = a, hr, nil, nil
	s.last, s.savedAt, s.saved, s.err = boundaryState{}, 0, false, nil
	return nil
}

// Write takes the next bytes of the archive (datastore.Sink). It fails
// once the import has failed by itself (a malformed archive).
func (s *StreamImport) Write(p []byte) (int, error) {
	s.start()
	return s.pipe.Write(p)
}

// Buffer lends the download an empty chunk of the stream to read the next
// bytes into, so they are not copied on their way to the import
// (datastore.ChunkSink). It fails once the import has failed by itself.
func (s *StreamImport) Buffer() ([]byte, error) {
	s.start()
	return s.pipe.buffer()
}

// Submit takes back a chunk from Buffer filled with the next bytes (an
// empty one is just returned) (datastore.ChunkSink).
func (s *StreamImport) Submit(b []byte) error { return s.pipe.submit(b) }

// Restart drops everything and starts from the archive's first byte
// (datastore.Sink).
func (s *StreamImport) Restart() error {
	s.stop(errStreamRestarted)
	s.discard()
	return s.fresh()
}

// Verify ends a complete download: it reads the archive to its end and
// checks its sha256. On a failure nothing is left: no ingest, no
// checkpoint.
func (s *StreamImport) Verify() error {
	s.start()
	s.pipe.CloseWrite(nil)
	err := <-s.done
	s.started = false
	if err != nil {
		err = fmt.Errorf("%w (the archive's sha256 was not checked)", err)
	} else if got, herr := s.hr.sum(); herr != nil {
		err = herr
	} else if got != s.sha256 {
		err = fmt.Errorf("import: the archive's sha256 is %s, expected %s (%d bytes); nothing imported: %w", got, s.sha256, s.hr.Total(), errdefs.ErrDataLoss)
	}
	s.hr.close()
	if err != nil {
		s.discard()
	}
	s.verified = err == nil
	return err
}

// Commit commits every blob of a verified archive, picks the image and
// labels it. On a failure no ingest or checkpoint is left (blobs
// committed already go with the lease).
func (s *StreamImport) Commit() (Imported, error) {
	if !s.verified {
		return Imported{}, fmt.Errorf("import: commit before the archive is verified: %w", errdefs.ErrFailedPrecondition)
	}
	err := s.a.commitPending(s.ctx)
	var imp Imported
	if err == nil {
		imp, err = s.a.finish(s.ctx, s.opts.Name, s.want)
	}
	s.discard()
	return imp, err
}

// Stop ends an import whose download failed with cause. What was written
// stays for a resume, unless the import had failed by itself (then it is
// dropped, and Err says why).
func (s *StreamImport) Stop(cause error) {
	s.stop(fmt.Errorf("%w: %w", errStreamInterrupted, cause))
	if s.err != nil {
		s.discard()
	}
	s.hr.close()
}

// Discard drops what a stopped import kept: ingests and checkpoint (the
// download cannot be resumed, or should not be).
func (s *StreamImport) Discard() { s.discard() }

// Err is the import's own failure (a malformed archive, a full disk), nil
// if it failed only because its download did.
func (s *StreamImport) Err() error { return s.err }

// start runs the scan on its own goroutine, reading what Write sends.
func (s *StreamImport) start() {
	if s.started {
		return
	}
	p := newChunkPipe()
	s.pipe, s.done, s.started = p, make(chan error, 1), true
	s.hr.r = p
	go func() {
		err := s.scan()
		p.CloseRead(err) // a Write after a failure returns it
		s.done <- err
	}()
}

// stop ends the scan with err as the stream's end and keeps what it
// left: a checkpoint if the import was interrupted, else its own error.
func (s *StreamImport) stop(err error) {
	if !s.started {
		if s.resumeW != nil { // resumed, not yet continued
			s.resumeW.Close()
			s.resumeW = nil
		}
		s.a.closePending()
		return
	}
	s.pipe.CloseWrite(err)
	serr := <-s.done
	s.started = false
	switch {
	case errors.Is(serr, errStreamInterrupted):
		if cerr := s.save(); cerr != nil {
			log.G(s.ctx).WithError(cerr).Warn("import: cannot write the checkpoint; the next pull starts over")
		}
		s.a.closePending()
	case errors.Is(serr, errStreamRestarted):
	case serr != nil:
		s.err = serr
	}
}

// discard aborts every ingest of the import and removes the checkpoint.
func (s *StreamImport) discard() {
	if s.resumeW != nil {
		s.resumeW.Close()
		s.resumeW = nil
	}
	if s.current != nil {
		abort(s.ctx, s.local, s.current.Ref)
		s.current = nil
	}
	s.a.abortPending(s.ctx)
	// A killed run of this prefix may have left ingests that this run
	// did not reach again (a blob another pull committed meanwhile).
	if prefix := s.a.refPrefix; prefix != "" {
		if _, _, err := sweepPrefix(s.ctx, s.local, prefix); err != nil {
			log.G(s.ctx).WithError(err).Warn("import: cannot remove the import's ingests")
		}
	}
	if err := os.Remove(s.checkpoint); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(s.ctx).WithError(err).Warn("import: cannot remove the checkpoint")
	}
}

// scan reads the archive from the stream: first the rest of an entry a
// resume stopped in, then entries up to the end-of-archive marker, then
// the stream to its end (padding), so the archive hash covers all of it.
func (s *StreamImport) scan() error {
	// Not cancelled with the pull: a stop comes through the stream (Stop
	// ends it as interrupted), so the scan always reaches a point it can
	// checkpoint.
	ctx, a := context.WithoutCancel(s.ctx), s.a
	if cur := s.current; cur != nil {
		if err := s.finishEntry(ctx, cur); err != nil {
			return err
		}
	}
	// A header starts on a 512-byte block.
	if pad := (512 - s.hr.Total()%512) % 512; pad > 0 {
		if _, err := io.CopyN(io.Discard, s.hr, pad); err != nil {
			return fmt.Errorf("import: read archive: %w", readErr(err))
		}
	}
	if err := a.scanTar(ctx, s.hr); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, s.hr); err != nil {
		return fmt.Errorf("import: read archive end: %w", readErr(err))
	}
	return nil
}

// finishEntry writes the rest of the entry a resume stopped in.
func (s *StreamImport) finishEntry(ctx context.Context, cur *streamEntry) error {
	a, w := s.a, s.resumeW
	s.resumeW = nil
	if w == nil { // the store has the blob by now
		if err := s.skip(s.hr, cur.Desc.Size); err != nil {
			return fmt.Errorf("import: archive entry %s: %w", cur.Name, err)
		}
		a.pending = append(a.pending, pendingBlob{ref: cur.Ref, desc: cur.Desc, name: cur.Name, off: cur.DataStart})
		a.entries++
		s.current = nil
		return nil
	}
	if err := a.copyRest(ctx, w, s.hr, cur.Desc.Size, cur.Pos); err != nil {
		w.Close()
		if !errors.Is(err, errStreamInterrupted) {
			abort(ctx, s.local, cur.Ref)
			s.current = nil
		}
		return fmt.Errorf("import: archive entry %s: %w", cur.Name, err)
	}
	p := pendingBlob{w: w, ref: cur.Ref, desc: cur.Desc, name: cur.Name, off: cur.DataStart}
	if p.desc.Digest == "" {
		p.desc.Digest, p.unnamed = w.Digest(), true
		a.blobs[cur.Name] = p.desc
	}
	a.pending = append(a.pending, p)
	a.entries++
	s.current = nil
	return nil
}

// The archive's hooks, called on the scan goroutine.

// boundary is a point between two entries: remember it, and checkpoint
// now and then.
func (s *StreamImport) boundary(off int64, entries int) error {
	st, err := s.hr.state()
	if err != nil {
		return err
	}
	s.last = boundaryState{offset: off, hash: st, entries: entries}
	if off-s.savedAt >= s.every {
		if err := s.save(); err != nil {
			log.G(s.ctx).WithError(err).Warn("import: cannot write a checkpoint")
		}
	}
	return nil
}

// enter starts an entry written into an ingest.
func (s *StreamImport) enter(e streamEntry) error {
	st, err := s.hr.state()
	if err != nil {
		return err
	}
	e.HashAtStart = st
	s.current = &e
	// The first ingest of a run is checkpointed at once (its ingest at
	// length 0): a process killed before the first periodic checkpoint
	// then leaves ingests that the next run finds by their ref prefix
	// and writes again, instead of starting over under a new prefix and
	// leaving them to the sweep of abandoned imports.
	if !s.saved {
		s.saved = true
		if err := s.save(); err != nil {
			log.G(s.ctx).WithError(err).Warn("import: cannot write the first checkpoint")
		}
	}
	return nil
}

// wrote records how far the entry got when the stream broke, with the
// digest of those bytes, which a resume checks the ingest against (a
// power cut may leave a file of the right length with other bytes), and
// makes them durable for the checkpoint.
func (s *StreamImport) wrote(pos int64, w content.Writer) {
	cur := s.current
	if cur == nil {
		return
	}
	cur.Pos, cur.PrefixDigest, cur.syncErr = pos, w.Digest(), s.sync.ingest(w)
}

// skip reads the current entry's data up to size without keeping it,
// counting how far it got.
func (s *StreamImport) skip(r io.Reader, size int64) error {
	cur := s.current
	n, err := io.CopyN(io.Discard, r, size-cur.Pos)
	cur.Pos += n
	if err != nil {
		return fmt.Errorf("read %d of %d bytes: %w", cur.Pos, size, shortRead(err))
	}
	return nil
}

// leave ends the entry.
func (s *StreamImport) leave() { s.current = nil }
