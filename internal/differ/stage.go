package differ

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Stage is one layer being extracted into the staging area while it is
// fetched. The fetcher hands the blob over with Copy, then calls Commit
// once the blob is verified and stored, or Abort. When the extraction
// cannot be used (an entry the shortcut does not replicate, a bad tar, a
// full disk) the fetch goes on regardless and the layer is extracted the
// normal way at Apply.
type Stage struct {
	s    *Staging
	ctx  context.Context
	desc ocispec.Descriptor
	dir  string

	n int64 // bytes copied
	// reserved is what this stage holds of Staging's byte bound: the
	// blob's size at first, grown as the extraction writes more (see
	// bound).
	reserved  int64
	extracted int64 // entry sizes extracted so far (plus a per-entry cost)
	copied    bool  // Copy ran to the end of the blob
	err       error // why the extraction is not usable
	decoded   bool  // read through DecompressStream (layerDecoding)
	// diffID and diffSize of what was decompressed; empty when the blob
	// is the tar (then the verified blob digest is the diff ID)
	diffID    digest.Digest
	diffSize  int64
	whiteouts bool
	implicit  []string
	usage     snapshots.Usage // of the extracted tree (see stagedTree)
	ended     bool            // Commit or Abort was called
}

func startStage(ctx context.Context, s *Staging, desc ocispec.Descriptor, dir string) *Stage {
	decoded, _ := layerDecoding(desc.MediaType)
	return &Stage{s: s, ctx: ctx, desc: desc, dir: dir, decoded: decoded, reserved: desc.Size, err: errors.New("not copied")}
}

// Copy copies the blob from src to dst (the store's writer, which hashes
// it) and extracts it on the way: the extraction reads the blob through a
// reader that writes every byte it reads to dst, so each byte is read from
// the network once (on the extraction's reading goroutine, see
// readAhead; Copy returns after it). The extraction reads to the blob's
// end even when it stops early, and whatever is left after that is copied
// as is. The error is the fetch's (reading src, writing dst), never the
// extraction's.
func (st *Stage) Copy(dst io.Writer, src io.Reader) (int64, error) {
	tr := &teeReader{src: src, dst: dst, buf: make([]byte, teeChunk)}
	chk := newEntryCheck()
	err := st.extract(tr, chk)
	if tr.err != nil {
		st.n, st.err = tr.n, tr.err
		return tr.n, tr.err
	}
	// Trailing bytes after the tar's end are read (and hashed) by
	// containerd's apply too; here they go to dst like the rest (what
	// the reader holds was written already).
	var rest int64
	var cerr error
	if !tr.srcEOF {
		rest, cerr = io.CopyBuffer(dst, src, tr.buf)
	}
	st.n = tr.n + rest
	st.err, st.whiteouts, st.implicit = err, chk.whiteouts, chk.implicit
	if err != nil {
		// Never published: the tree goes now, not when the fetch ends
		// (a full disk or a corrupt layer must not hold its bytes).
		st.dropTree()
	}
	st.copied = cerr == nil
	return st.n, cerr
}

// extract extracts the layer read from r into the stage's directory as
// containerd's own apply would (see extractor), decompressed as its apply
// does (see layerDecoding); the check refuses entries whose result would
// depend on the target (see entryCheck), so the tree is what Apply would
// make. Reading, decompressing and hashing run on a goroutine of their
// own (readAhead), overlapping the extraction. For a decompressed layer
// it hashes all that the decompressor gives, as containerd's apply does
// for the diff ID.
func (st *Stage) extract(r io.Reader, chk *entryCheck) error {
	filter := st.bound(chk.filter)
	if !st.decoded {
		_, err := st.extractFrom(r, nil, filter)
		return err
	}
	ds, err := compression.DecompressStream(r)
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	// Drained before it is closed, also when the extraction fails
	// (extractFrom reads it to its end): with an external decompressor
	// (unpigz, igzip) a goroutine of os/exec reads r until the
	// decompressor is done, and the caller goes on reading src only
	// after that.
	defer ds.Close()
	if ds.GetCompression() == compression.Uncompressed {
		// The blob is the tar (a docker tar type): no second hash.
		_, err := st.extractFrom(ds, nil, filter)
		return err
	}
	h := digest.Canonical.Digester()
	n, err := st.extractFrom(ds, h.Hash(), filter)
	if err != nil {
		return err
	}
	st.diffID, st.diffSize = h.Digest(), n
	return nil
}

// extractFrom extracts the tar read from r, which a readAhead reads (to
// its end, hashing it with h if not nil) on its own goroutine, and sets
// the stage's usage. n is the bytes read from r.
func (st *Stage) extractFrom(r io.Reader, h hash.Hash, filter func(*tar.Header) (bool, error)) (n int64, err error) {
	ra := startReadAhead(r, h)
	usage, err := extractTar(st.ctx, st.dir, ra, filter)
	if rerr := ra.close(); err == nil && rerr != nil {
		err = fmt.Errorf("read layer: %w", rerr)
	}
	if err != nil {
		return ra.n, err
	}
	st.usage = usage
	return ra.n, nil
}

// entryCost is what an entry costs besides its content: an inode, a
// directory entry, a block at least. Counted so that millions of empty
// files are bounded too.
const entryCost = 4096

// bound wraps filter with the staging's byte bound counted in what the
// extraction writes, not in blob bytes: a layer of a few KiB of gzip can
// decompress to gigabytes, and none of it is verified until the whole
// blob is. Before an entry is extracted its size (the tar header's, which
// is also what a sparse file expands to) is reserved in the Staging; an
// entry that does not fit stops the extraction, and the stage is
// abandoned (removed at Commit or Abort) before the entry is written.
func (st *Stage) bound(filter func(*tar.Header) (bool, error)) func(*tar.Header) (bool, error) {
	return func(hdr *tar.Header) (bool, error) {
		cost := int64(entryCost)
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA {
			cost += max(hdr.Size, 0)
		}
		st.extracted += cost
		if grow := st.extracted - st.reserved; grow > 0 {
			if !st.s.reserve(grow) {
				return false, fmt.Errorf("%w: layer %s extracts to more than the %d bytes the staging may hold (%d bytes of it so far); abandoned, it is extracted at apply once verified",
					errNotStageable, st.desc.Digest, st.s.maxBytes, st.extracted)
			}
			st.reserved += grow
		}
		return filter(hdr)
	}
}

// teeChunk is how much teeReader reads ahead and writes to the store at
// once: page-cache writes of 1 MiB cost the kernel about half as much per
// byte as the extractor's 32 KiB reads would.
const teeChunk = 1 << 20

// teeReader reads src ahead into buf, writes each chunk to dst as soon as
// it is read, then hands it to the reader (the extractor). It tells src's
// and dst's errors (the fetch's) from the extractor's.
type teeReader struct {
	src      io.Reader
	dst      io.Writer
	buf      []byte
	off, end int   // buf[off:end] is written to dst, not yet read
	n        int64 // bytes written to dst
	srcEOF   bool
	err      error // first error of src or dst, io.EOF excluded
}

func (t *teeReader) Read(p []byte) (int, error) {
	if t.off == t.end {
		if t.err != nil {
			return 0, t.err
		}
		if t.srcEOF {
			return 0, io.EOF
		}
		t.fill()
		if t.end == 0 {
			if t.err != nil {
				return 0, t.err
			}
			return 0, io.EOF
		}
	}
	n := copy(p, t.buf[t.off:t.end])
	t.off += n
	return n, nil
}

// fill reads src until buf is full or src ends, and writes what it read
// to dst.
func (t *teeReader) fill() {
	t.off, t.end = 0, 0
	for t.end < len(t.buf) {
		n, err := t.src.Read(t.buf[t.end:])
		t.end += n
		if err == io.EOF {
			t.srcEOF = true
			break
		}
		if err != nil {
			t.err = err
			break
		}
	}
	if t.end > 0 {
		if _, err := t.dst.Write(t.buf[:t.end]); err != nil {
			t.err, t.end = err, 0
			return
		}
		t.n += int64(t.end)
	}
}

// Commit ends the stage after the fetch verified the blob as desc (its
// length and digest) and committed it: it publishes the tree for Apply,
// whose diff ID for an uncompressed layer is the verified blob digest. A
// stage that did not see exactly the verified bytes, or whose extraction
// failed, is removed.
func (st *Stage) Commit(verified digest.Digest) {
	if st.ended {
		return
	}
	st.ended = true
	err := st.err
	switch {
	case err != nil:
	case !st.copied || st.n != st.desc.Size:
		err = fmt.Errorf("staged %d bytes of a %d-byte layer", st.n, st.desc.Size)
	case verified != st.desc.Digest:
		err = fmt.Errorf("blob verified as %s, staged as %s", verified, st.desc.Digest)
	}
	t := &stagedTree{dir: st.dir, size: st.desc.Size, reserved: st.reserved, decoded: st.decoded, diffID: st.diffID, diffSize: st.diffSize, whiteouts: st.whiteouts, implicit: st.implicit, usage: st.usage}
	if t.diffID == "" {
		// The blob is the tar: its verified digest is the diff ID.
		t.diffID, t.diffSize = st.desc.Digest, st.desc.Size
	}
	if err != nil {
		log.G(st.ctx).WithError(err).WithField("digest", st.desc.Digest).Debug("layer not staged; it will be extracted at apply")
		st.s.discard(st.ctx, t)
		return
	}
	st.s.publish(st.ctx, st.desc, t)
	log.G(st.ctx).WithField("digest", st.desc.Digest).Debug("layer staged")
}

// dropTree removes a failed extraction's tree and releases what it
// reserved; Commit or Abort find nothing left.
func (st *Stage) dropTree() {
	st.s.discard(st.ctx, &stagedTree{dir: st.dir, reserved: st.reserved})
	st.reserved = 0
}

// Abort ends the stage of a fetch that failed: nothing is published.
func (st *Stage) Abort() {
	if st.ended {
		return
	}
	st.ended = true
	st.s.discard(st.ctx, &stagedTree{dir: st.dir, size: st.desc.Size, reserved: st.reserved})
}
