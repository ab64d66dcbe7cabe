package archiveimport_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testimage"
)

// errCut is the download error a test stops a stream import with.
var errCut = errors.New("connection cut by the test")

// streamRun is one stream import of an archive, as localds pull runs it:
// under a lease, then an image record.
type streamRun struct {
	e       *importEnv
	local   content.Store
	archive []byte
	sum     string
	ckpt    string
}

func newStreamRun(t *testing.T, e *importEnv, archive []byte) *streamRun {
	h := sha256.Sum256(archive)
	return &streamRun{e: e, local: e.backend, archive: archive, sum: hex.EncodeToString(h[:]), ckpt: filepath.Join(t.TempDir(), "archive.import")}
}

// open makes a StreamImport and resumes its checkpoint, returning where
// the download would continue.
func (r *streamRun) open(t *testing.T, ctx context.Context, every int64) (*archiveimport.StreamImport, int64) {
	t.Helper()
	si, err := archiveimport.NewStreamImport(ctx, r.e.db.ContentStore(), r.sum, r.ckpt, archiveimport.ImportOptions{Platform: "linux/amd64", Local: r.local})
	if err != nil {
		t.Fatal(err)
	}
	if every > 0 {
		archiveimport.SetCheckpointEvery(si, every)
	}
	off, err := si.Resume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return si, off
}

// feed sends archive[from:to] in chunks of an odd size, so cuts land
// anywhere in headers and blobs, by turns written (Write) and filled into
// a chunk the import lends (Buffer, Submit), as the downloader does.
func (r *streamRun) feed(si *archiveimport.StreamImport, from, to int64) error {
	for i, off := 0, from; off < to; i++ {
		n := min(to-off, 7001)
		if i%2 == 0 {
			if _, err := si.Write(r.archive[off : off+n]); err != nil {
				return err
			}
		} else {
			buf, err := si.Buffer()
			if err != nil {
				return err
			}
			if int64(len(buf)) < n {
				return fmt.Errorf("lent a buffer of %d bytes", len(buf))
			}
			if err := si.Submit(buf[:copy(buf, r.archive[off:off+n])]); err != nil {
				return err
			}
		}
		off += n
	}
	return nil
}

// complete feeds the archive from off, verifies, commits and records
// the image ref.
func (r *streamRun) complete(t *testing.T, off int64, ref string) (archiveimport.Imported, error) {
	t.Helper()
	return r.completeAfter(t, off, ref, nil)
}

// completeAfter is complete with first run on the import before the feed.
func (r *streamRun) completeAfter(t *testing.T, off int64, ref string, first func(*archiveimport.StreamImport) error) (archiveimport.Imported, error) {
	t.Helper()
	var imp archiveimport.Imported
	err := archiveimport.Leased(r.e.ctx, r.e.leases, func(ctx context.Context) error {
		si, got := r.open(t, ctx, 0)
		if got != off {
			return fmt.Errorf("resume at %d, want %d", got, off)
		}
		if first != nil {
			if err := first(si); err != nil {
				return err
			}
		}
		if err := r.feed(si, off, int64(len(r.archive))); err != nil {
			si.Stop(err)
			return err
		}
		if err := si.Verify(); err != nil {
			return err
		}
		var err error
		if imp, err = si.Commit(); err != nil {
			return err
		}
		_, err = r.e.images.Create(ctx, images.Image{Name: ref, Target: imp.Target})
		return err
	})
	r.e.gc(t)
	return imp, err
}

// cut feeds archive[:at] and stops as a broken download does; it returns
// the offset a resume continues at.
func (r *streamRun) cut(t *testing.T, at int64, every int64) int64 {
	t.Helper()
	var off int64
	err := archiveimport.Leased(r.e.ctx, r.e.leases, func(ctx context.Context) error {
		si, _ := r.open(t, ctx, every)
		if err := r.feed(si, 0, at); err != nil {
			return err
		}
		si.Stop(errCut)
		if err := si.Err(); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("cut at %d: %v", at, err)
	}
	si, err := archiveimport.NewStreamImport(r.e.ctx, r.e.db.ContentStore(), r.sum, r.ckpt, archiveimport.ImportOptions{Platform: "linux/amd64", Local: r.local})
	if err != nil {
		t.Fatal(err)
	}
	if off, err = si.Resume(r.e.ctx); err != nil {
		t.Fatal(err)
	}
	si.Stop(errCut) // a peek: keeps the checkpoint as it is
	return off
}

func (r *streamRun) requireNoCheckpoint(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(r.ckpt); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("checkpoint %s left: %v", r.ckpt, err)
	}
}

// dataRanges are the [start, end) offsets of the regular files' data in
// an archive.
func dataRanges(t *testing.T, archive []byte) [][2]int64 {
	t.Helper()
	cr := &countReader{r: bytes.NewReader(archive)}
	tr := tar.NewReader(cr)
	var out [][2]int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			out = append(out, [2]int64{cr.n, cr.n + h.Size})
		}
	}
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func dockerSaveTar(t *testing.T) []byte {
	t.Helper()
	tag, err := name.NewTag("tool:1.0")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarball.Write(tag, randomImage(t, 2, "linux/amd64"), &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestStreamImport: an OCI layout and a docker save archive imported
// from a stream: every blob in the CAS, no ingest, no checkpoint.
func TestStreamImport(t *testing.T) {
	img := randomImage(t, 3, "linux/amd64")
	for _, tc := range []struct {
		name    string
		archive []byte
		blobs   int
	}{
		{"oci", testimage.OCILayoutTar(t, testimage.NamedIndex(img, "app:1")), 5},
		{"docker-save", dockerSaveTar(t), 3}, // config and 2 layers; the manifest is made, not read
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newImportEnv(t)
			r := newStreamRun(t, e, tc.archive)
			imp, err := r.complete(t, 0, "app:1")
			if err != nil {
				t.Fatal(err)
			}
			if !imp.Direct || imp.Blobs != tc.blobs || imp.Written != imp.Blobs {
				t.Fatalf("imported %+v, want %d blobs, all written into the local store", imp, tc.blobs)
			}
			have := e.blobs(t) // also fails on a left ingest
			if len(have) < imp.Blobs {
				t.Fatalf("CAS holds %v", have)
			}
			if _, err := images.Manifest(e.ctx, e.db.ContentStore(), imp.Target, nil); err != nil {
				t.Fatalf("manifest of the imported image: %v", err)
			}
			r.requireNoCheckpoint(t)
			if tc.name == "oci" {
				requireBlobs(t, have, imageDigests(t, img)...)
			}
		})
	}
}

// TestStreamImportResume: a download cut anywhere (in headers, metadata
// files, blobs, padding, the end marker) resumes from the checkpoint
// Stop writes: exactly at the cut inside a blob, else at most a header
// before it, and the import then completes with every blob.
func TestStreamImportResume(t *testing.T) {
	for _, tc := range []struct {
		name    string
		archive []byte
	}{
		{"oci", testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 2, "linux/amd64"), "app:1"))},
		{"docker-save", dockerSaveTar(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ranges := dataRanges(t, tc.archive)
			size := int64(len(tc.archive))
			var cuts []int64
			for c := int64(1); c < size; c += 1499 {
				cuts = append(cuts, c)
			}
			for _, rg := range ranges {
				cuts = append(cuts, rg[0], rg[0]+1, (rg[0]+rg[1])/2, rg[1]-1, rg[1], rg[1]+1)
			}
			for _, at := range cuts {
				if at <= 0 || at >= size {
					continue
				}
				e := newImportEnv(t)
				r := newStreamRun(t, e, tc.archive)
				off := r.cut(t, at, 0)
				inBlob := false
				for _, rg := range ranges {
					inBlob = inBlob || (at > rg[0] && at < rg[1] && rg[1]-rg[0] > 4096)
				}
				switch {
				case off > at || at-off > 4096:
					t.Fatalf("cut at %d of %d: resumes at %d", at, size, off)
				case inBlob && off != at:
					t.Fatalf("cut at %d inside a blob: resumes at %d, want exactly there", at, off)
				}
				if _, err := r.complete(t, off, "app:1"); err != nil {
					t.Fatalf("cut at %d, resumed at %d: %v", at, off, err)
				}
				e.blobs(t)
				r.requireNoCheckpoint(t)
			}
		})
	}
}

// TestStreamImportKilled: a process killed without Stop leaves the
// checkpoint it wrote last (between entries) and its ingests as they
// were; the next import, in a new process (a new store instance, without
// the dead writers' locks), resumes there.
func TestStreamImportKilled(t *testing.T) {
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 3, "linux/amd64"), "app:1"))
	ranges := dataRanges(t, archive)
	for _, at := range []int64{ranges[2][0] + 10, (ranges[3][0] + ranges[3][1]) / 2, ranges[len(ranges)-1][1] + 3} {
		killAndComplete(t, archive, at, 1) // a checkpoint at every entry
	}
}

// killAndComplete imports archive up to at (checkpointing every every
// bytes, 0 for the default), kills the import, then completes it in a
// new process, which must resume somewhere in (0, at], and leave no
// ingest behind.
func killAndComplete(t *testing.T, archive []byte, at, every int64) {
	t.Helper()
	e := newImportEnv(t)
	r := newStreamRun(t, e, archive)
	si, _ := r.open(t, e.ctx, every)
	if err := r.feed(si, 0, at); err != nil {
		t.Fatal(err)
	}
	archiveimport.Kill(si)

	next, err := cas.Open(e.ctx, e.root)
	if err != nil {
		t.Fatal(err)
	}
	r.local = next
	probe, err := archiveimport.NewStreamImport(e.ctx, e.db.ContentStore(), r.sum, r.ckpt, archiveimport.ImportOptions{Platform: "linux/amd64", Local: next})
	if err != nil {
		t.Fatal(err)
	}
	off, err := probe.Resume(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	probe.Stop(errCut)
	if off <= 0 || off > at {
		t.Fatalf("killed at %d: resumes at %d", at, off)
	}
	if _, err := r.complete(t, off, "app:1"); err != nil {
		t.Fatalf("killed at %d, resumed at %d: %v", at, off, err)
	}
	e.blobs(t) // fails on an ingest left behind
}

// TestStreamImportIngestChanged: an ingest that is not as long as the
// checkpoint says (a power cut lost its tail) makes that entry start
// again from its first byte, and the import still completes.
func TestStreamImportIngestChanged(t *testing.T) {
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 2, "linux/amd64"), "app:1"))
	ranges := dataRanges(t, archive)
	big := ranges[0]
	for _, rg := range ranges {
		if rg[1]-rg[0] > big[1]-big[0] {
			big = rg
		}
	}
	at := (big[0] + big[1]) / 2
	e := newImportEnv(t)
	r := newStreamRun(t, e, archive)
	if off := r.cut(t, at, 0); off != at {
		t.Fatalf("cut at %d resumes at %d", at, off)
	}
	ingests, err := cas.ListIngests(e.root)
	if err != nil {
		t.Fatal(err)
	}
	cut := 0
	for _, in := range ingests {
		if in.Size == at-big[0] {
			if err := os.Truncate(filepath.Join(in.Dir, "data"), in.Size/2); err != nil {
				t.Fatal(err)
			}
			cut++
		}
	}
	if cut != 1 {
		t.Fatalf("found %d ingests of the cut blob among %v", cut, ingests)
	}
	if _, err := r.complete(t, big[0], "app:1"); err != nil {
		t.Fatal(err)
	}
	e.blobs(t)
}

// TestStreamImportBad: a wrong sha256, a stream that is no archive, and
// an archive missing a blob: clear errors, and nothing stays: no blob,
// no ingest, no checkpoint.
func TestStreamImportBad(t *testing.T) {
	good := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 2, "linux/amd64"), "app:1"))
	t.Run("wrong-sha256", func(t *testing.T) {
		e := newImportEnv(t)
		r := newStreamRun(t, e, good)
		r.sum = hex.EncodeToString(make([]byte, 32))
		_, err := r.complete(t, 0, "app:1")
		if !errdefs.IsDataLoss(err) {
			t.Fatalf("got %v, want a sha256 mismatch (data loss)", err)
		}
		e.requireEmpty(t)
		r.requireNoCheckpoint(t)
	})
	t.Run("not-an-archive", func(t *testing.T) {
		e := newImportEnv(t)
		junk := bytes.Repeat([]byte("not a tar header "), 4096)
		r := newStreamRun(t, e, junk)
		_, err := r.complete(t, 0, "app:1")
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("got %v, want invalid argument", err)
		}
		e.requireEmpty(t)
		r.requireNoCheckpoint(t)
	})
	t.Run("missing-blob", func(t *testing.T) {
		var entries []tarEntry
		dropped := false
		for _, en := range tarEntries(t, good) {
			if !dropped && len(en.data) > 1024 && filepath.Dir(filepath.Dir(en.name)) == "blobs" {
				dropped = true
				continue
			}
			entries = append(entries, en)
		}
		e := newImportEnv(t)
		r := newStreamRun(t, e, rawTar(t, entries...))
		if _, err := r.complete(t, 0, "app:1"); err == nil {
			t.Fatal("an archive missing a layer was imported")
		}
		e.requireEmpty(t)
		r.requireNoCheckpoint(t)
	})
}

// TestStreamImportRestart: a download that starts over (the file changed
// on the server) drops what the import had and imports the new bytes.
func TestStreamImportRestart(t *testing.T) {
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 2, "linux/amd64"), "app:1"))
	e := newImportEnv(t)
	r := newStreamRun(t, e, archive)
	_, err := r.completeAfter(t, 0, "app:1", func(si *archiveimport.StreamImport) error {
		if err := r.feed(si, 0, int64(len(archive))/2); err != nil {
			return err
		}
		return si.Restart()
	})
	if err != nil {
		t.Fatal(err)
	}
	e.blobs(t)
	r.requireNoCheckpoint(t)
}

// TestStreamImportOtherArchive: a checkpoint of another archive at the
// same path is not resumed; its ingests are dropped.
func TestStreamImportOtherArchive(t *testing.T) {
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 2, "linux/amd64"), "app:1"))
	e := newImportEnv(t)
	r := newStreamRun(t, e, archive)
	at := int64(len(archive)) / 2
	if off := r.cut(t, at, 0); off == 0 {
		t.Fatalf("no checkpoint at %d", at)
	}
	other := newStreamRun(t, e, testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 1, "linux/amd64"), "b:1")))
	other.ckpt = r.ckpt
	if _, err := other.complete(t, 0, "b:1"); err != nil {
		t.Fatal(err)
	}
	e.blobs(t) // the first archive's ingests are gone too
}

// TestStreamImportKilledBeforeCheckpoint: a process killed before its
// first periodic checkpoint (inside the first blobs of the archive) left
// a checkpoint naming its ingests, so the next run continues under the
// same ref prefix and nothing of the killed run is left once it is done.
func TestStreamImportKilledBeforeCheckpoint(t *testing.T) {
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 3, "linux/amd64"), "app:1"))
	ranges := dataRanges(t, archive)
	for _, at := range []int64{ranges[0][0] + 10, (ranges[1][0] + ranges[1][1]) / 2, ranges[3][0] + 1} {
		killAndComplete(t, archive, at, 0) // the default: no periodic checkpoint in this small archive
	}
}
