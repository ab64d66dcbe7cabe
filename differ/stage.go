package differ

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Stage is one layer being extracted into the staging area while it is
// fetched. The fetcher writes every byte of the blob to it, in order, then
// calls Commit once the blob is verified and stored, or Abort. Write never
// fails, so a Stage in an io.MultiWriter never breaks the fetch: when the
// extraction cannot be used (an entry the shortcut does not replicate, a
// bad tar, a full disk) the Stage stops taking data and the layer is
// extracted the normal way at Apply.
type Stage struct {
	s    *Staging
	ctx  context.Context
	desc ocispec.Descriptor
	dir  string

	pw     *io.PipeWriter
	n      int64 // bytes written
	failed bool  // the extractor stopped reading
	done   chan struct{}
	// valid after done is closed
	err       error
	whiteouts bool
	implicit  []string
	ended     bool // Commit or Abort was called
}

// errStageStopped tells the fetcher's Write (through the pipe) that the
// extractor has given up; the fetch goes on without it.
var errStageStopped = errors.New("layer staging stopped")

func startStage(ctx context.Context, s *Staging, desc ocispec.Descriptor, dir string) *Stage {
	pr, pw := io.Pipe()
	st := &Stage{s: s, ctx: ctx, desc: desc, dir: dir, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(st.done)
		chk := newEntryCheck()
		// containerd's own extractor, as its overlay apply calls it; the
		// check refuses entries whose result would depend on the target
		// (see entryCheck), so the tree is what Apply would make.
		_, err := archive.Apply(ctx, dir, pr,
			archive.WithConvertWhiteout(archive.OverlayConvertWhiteout),
			archive.WithFilter(chk.filter))
		if err == nil {
			// Trailing bytes after the tar's end are read (and hashed) by
			// containerd's apply too; here the fetch hashes them.
			_, err = io.Copy(io.Discard, pr)
		}
		st.err, st.whiteouts, st.implicit = err, chk.whiteouts, chk.implicit
		pr.CloseWithError(errStageStopped)
	}()
	return st
}

// Write passes p to the extractor; it always reports success (see Stage).
func (st *Stage) Write(p []byte) (int, error) {
	if st.failed {
		return len(p), nil
	}
	n, err := st.pw.Write(p)
	st.n += int64(n)
	if err != nil {
		st.failed = true
	}
	return len(p), nil
}

// Commit ends the stage after the fetch verified the blob as desc (its
// length and digest) and committed it: it waits for the extraction to
// finish and publishes the tree for Apply, whose diff ID for an
// uncompressed layer is the verified blob digest. A stage that did not
// see exactly the verified bytes, or whose extraction failed, is removed.
func (st *Stage) Commit(verified digest.Digest) {
	if st.ended {
		return
	}
	st.ended = true
	st.pw.Close()
	<-st.done
	err := st.err
	switch {
	case err != nil:
	case st.failed || st.n != st.desc.Size:
		err = fmt.Errorf("staged %d bytes of a %d-byte layer", st.n, st.desc.Size)
	case verified != st.desc.Digest:
		err = fmt.Errorf("blob verified as %s, staged as %s", verified, st.desc.Digest)
	}
	t := &stagedTree{dir: st.dir, size: st.desc.Size, diffID: st.desc.Digest, whiteouts: st.whiteouts, implicit: st.implicit}
	if err != nil {
		log.G(st.ctx).WithError(err).WithField("digest", st.desc.Digest).Debug("layer not staged; it will be extracted at apply")
		st.s.discard(st.ctx, t)
		return
	}
	st.s.publish(st.ctx, st.desc, t)
	log.G(st.ctx).WithField("digest", st.desc.Digest).Debug("layer staged")
}

// Abort ends the stage of a fetch that failed: nothing is published.
func (st *Stage) Abort() {
	if st.ended {
		return
	}
	st.ended = true
	st.pw.CloseWithError(errStageStopped)
	<-st.done
	st.s.discard(st.ctx, &stagedTree{dir: st.dir, size: st.desc.Size})
}
