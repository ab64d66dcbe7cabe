package archiveimport

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/localds/localds/internal/progress"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	// maxArchiveEntries bounds the work one archive can cause.
	maxArchiveEntries = 100000
	// maxArchiveJSON bounds what is held in memory: oci-layout,
	// index.json, manifest.json, and the manifests and configs read back.
	maxArchiveJSON = 8 << 20
	// maxLinkHops bounds chains of links in docker save archives.
	maxLinkHops = 8
	// importChunk is the size of one write into the content store (see
	// copyBlob); containerd's and the daemon's gRPC take up to 16 MiB.
	importChunk = 8 << 20
	// localChunk is the size of one write into the local store: small
	// enough that a chunk stays in the CPU cache from the read through
	// the hash to the write. On the 2-core test VM the kernel's page
	// cache copy of 1 MiB writes cost 3-4x that of 256 KiB ones (pull
	// sys time 0.7-1.0 s against 0.16-0.24 s for 256 MiB), 8 MiB ~5x more.
	localChunk = 256 << 10
)

// Archive formats Import understands.
const (
	FormatOCI    = "oci"    // OCI image layout: oci-layout, index.json, blobs/<alg>/<hex>
	FormatDocker = "docker" // `docker save` before Docker 25: manifest.json, <id>/layer.tar
)

// ImportOptions select what Import keeps of an archive.
type ImportOptions struct {
	// Platform is the platform whose image must be complete in the
	// archive and is kept, like "linux/arm64" or "linux/arm/v7"; empty
	// means the node's own (platforms.DefaultString()). Matching is
	// containerd's platforms.Only: arm64 also accepts arm/v8, amd64 its
	// micro-architecture levels.
	Platform string
	// Name selects one image of an archive that holds several (by its
	// io.containerd.image.name or org.opencontainers.image.ref.name
	// annotation, or a docker RepoTag). An archive with one image is
	// imported whatever Name is: the caller names the image record.
	Name string
	// Local, if set, is the store that backs cs (the localds CAS at
	// <root>/vault/cas, from Open, while cs is containerd's content store
	// in front of the localds daemon). Blobs are then written into Local
	// directly, a file write instead of a stream through containerd and
	// the daemon, and registered with cs, which finds them in its backend
	// and takes no data (containerd's shared content policy, its
	// default). Import first checks with a probe blob that cs really sees
	// Local's blobs; if not, or if a blob vanishes before it is
	// registered (a GC sweep in between), the data goes through cs after
	// all, read again from the archive: r must then be an io.ReaderAt
	// (an *os.File).
	Local content.Store
	// Progress, if set, is told how many bytes of the archive were read.
	Progress func(read int64)
}

// Imported is what Import found and kept.
type Imported struct {
	// Format is FormatOCI or FormatDocker.
	Format string
	// Name is the archive's own name for the image ("" if it has none),
	// normalized like docker.io/library/app:1 for docker RepoTags.
	Name string
	// Target is what an image record points at: an index (multi-platform)
	// or a manifest.
	Target ocispec.Descriptor
	// Manifest is the manifest of the selected platform within Target.
	Manifest ocispec.Descriptor
	// Platform is the selected manifest's platform, from its config.
	Platform ocispec.Platform
	// Platforms lists every platform the archive's target names.
	Platforms []ocispec.Platform
	// Blobs counts the blobs read from the archive; Written those of them
	// that were not in the store yet (bytes in WrittenBytes).
	Blobs, Written int
	WrittenBytes   int64
	// Direct tells whether the blobs were written into ImportOptions.Local
	// directly.
	Direct bool
}

// Import reads an image archive (an OCI image layout tar, or a `docker
// save` tar) from r in one streaming pass and writes its blobs into cs,
// then checks that the selected image is complete and labels it for
// containerd's garbage collector.
//
// Every blob is verified while it is written: a blobs/<alg>/<hex> entry
// is committed only under the digest its path names (the store's Commit
// refuses anything else), and a docker save file is committed under the
// digest computed while streaming it. Entries with ".." or absolute
// paths, links pointing out of the archive and special files are refused.
// A manifest that references a blob missing from the archive (or with
// another size) is an error.
//
// Import writes blobs before it knows whether the archive is whole, so
// it must run under a containerd lease (see Leased): when it fails the
// lease goes and containerd's GC removes whatever was written, and when
// it succeeds the caller creates the image record (which references
// Target) before the lease goes. Only the selected platform's blobs are
// labeled as children of Target, so blobs of other platforms are
// collected too.
func Import(ctx context.Context, cs content.Store, r io.Reader, opts ImportOptions) (Imported, error) {
	want, err := parseWant(opts.Platform)
	if err != nil {
		return Imported{}, err
	}
	a := newArchive(cs, opts.Progress)
	if opts.Local != nil {
		if err := a.useLocal(ctx, opts.Local, r); err != nil {
			return Imported{}, err
		}
	}
	if err := a.scan(ctx, r); err != nil {
		return Imported{}, err
	}
	return a.finish(ctx, opts.Name, want)
}

// parseWant parses ImportOptions.Platform.
func parseWant(plat string) (wantPlatform, error) {
	if plat == "" {
		plat = platforms.DefaultString()
	}
	spec, err := platforms.Parse(plat)
	if err != nil {
		return wantPlatform{}, fmt.Errorf("import: platform %q: %v: %w", plat, err, errdefs.ErrInvalidArgument)
	}
	return wantPlatform{spec: spec, name: platforms.FormatAll(spec), m: platforms.Only(spec)}, nil
}

func newArchive(cs content.Store, progress func(int64)) *archive {
	return &archive{cs: cs, blobs: map[string]ocispec.Descriptor{}, links: map[string]string{}, progress: progress}
}

// finish picks the image of a scanned archive, checks it is complete and
// labels it.
func (a *archive) finish(ctx context.Context, name string, want wantPlatform) (Imported, error) {
	cs := a.cs
	var imp Imported
	var err error
	switch {
	case a.ociLayout != nil:
		imp, err = a.selectOCI(ctx, cs, name)
	case a.dockerManifest != nil:
		imp, err = a.selectDocker(ctx, cs, name)
	default:
		err = fmt.Errorf("import: the archive is neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json): %w", errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return Imported{}, err
	}
	if err := completeImage(ctx, cs, &imp, want); err != nil {
		return Imported{}, err
	}
	imp.Blobs, imp.Written, imp.WrittenBytes, imp.Direct = a.blobCount, a.written, a.writtenBytes, a.local != nil
	log.G(ctx).WithFields(log.Fields{
		"format": imp.Format, "target": imp.Target.Digest, "manifest": imp.Manifest.Digest,
		"platform": platforms.FormatAll(imp.Platform), "blobs": imp.Blobs, "written": imp.Written, "direct": imp.Direct,
	}).Debug("archive imported")
	return imp, nil
}

// archive is one import: where it writes, and what one pass over the tar
// found.
type archive struct {
	cs content.Store
	// local and ra are set when blobs go into the backing store directly
	// (see ImportOptions.Local); ra re-reads a blob from the archive.
	local    content.Store
	ra       io.ReaderAt
	progress func(int64)
	// refPrefix makes this import's ingest refs unique.
	refPrefix string

	ociLayout, index, dockerManifest []byte
	// blobs maps an archive path to the blob written from it.
	blobs map[string]ocispec.Descriptor
	// links maps an archive path to the archive path it links to.
	links map[string]string

	entries            int // tar entries read so far
	blobCount, written int
	writtenBytes       int64
	buf                []byte    // copyBlob's, reused for every blob
	bufs               [2][]byte // copyOverlapped's

	// stream is set for a StreamImport: written blobs wait in pending
	// for their commit until the whole archive is verified.
	stream  *StreamImport
	pending []pendingBlob
}

// scan reads the tar once: metadata files into memory, every other
// regular file into the store.
func (a *archive) scan(ctx context.Context, r io.Reader) error {
	if err := a.newRefPrefix(); err != nil {
		return err
	}
	// Counting below the tar reader gives each entry's offset in the
	// archive (the tar reader reads no further ahead than a header).
	return a.scanTar(ctx, &progress.Reader{R: r, Report: a.progress})
}

// newRefPrefix makes this import's ingest refs unique.
func (a *archive) newRefPrefix() error {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	a.refPrefix = "localds-import-" + hex.EncodeToString(id[:]) + "-"
	return nil
}

// countingReader is the archive stream under the tar reader: Total is
// how many bytes of the archive the tar reader has taken.
type countingReader interface {
	io.Reader
	Total() int64
}

// scanTar reads tar entries from r until the end-of-archive marker,
// counting entries on from a.entries. A stream import (a.stream) is told
// of every point between two entries, where it can checkpoint.
func (a *archive) scanTar(ctx context.Context, r countingReader) error {
	tr := tar.NewReader(r)
	for ; ; a.entries++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("import: %w", err)
		}
		if a.entries >= maxArchiveEntries {
			return fmt.Errorf("import: the archive has more than %d entries: %w", maxArchiveEntries, errdefs.ErrInvalidArgument)
		}
		if a.stream != nil {
			// Take the rest of the last entry, so the offset is where
			// its data ends (the padding to the next header follows).
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return fmt.Errorf("import: read archive after %d entries: %w", a.entries, readErr(err))
			}
			if err := a.stream.boundary(r.Total(), a.entries); err != nil {
				return err
			}
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("import: read archive after %d entries: %w", a.entries, readErr(err))
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := entryPath(h.Name)
		if err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeSymlink, tar.TypeLink:
			target, err := linkTarget(name, h)
			if err != nil {
				return err
			}
			a.links[name] = target
			continue
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tars still carry TypeRegA
		default:
			return fmt.Errorf("import: archive entry %q is not a regular file, directory or link (type %q): %w", h.Name, h.Typeflag, errdefs.ErrInvalidArgument)
		}
		if err := a.readFile(ctx, tr, h, name, a.refPrefix+fmt.Sprint(a.entries), r.Total()); err != nil {
			return err
		}
	}
}

// readErr keeps an interrupted stream's error (the download broke, see
// StreamImport) and calls anything else a malformed archive.
func readErr(err error) error {
	if streamEnded(err) {
		return err
	}
	return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
}

// readFile takes one regular file of the archive; off is where its data
// starts in the archive.
func (a *archive) readFile(ctx context.Context, r io.Reader, h *tar.Header, name, ref string, off int64) error {
	if _, dup := a.blobs[name]; dup {
		return fmt.Errorf("import: archive entry %q appears twice: %w", h.Name, errdefs.ErrInvalidArgument)
	}
	var meta *[]byte
	switch name {
	case ocispec.ImageLayoutFile:
		meta = &a.ociLayout
	case ocispec.ImageIndexFile:
		meta = &a.index
	case "manifest.json":
		meta = &a.dockerManifest
	case "repositories":
		return nil // docker's legacy tag file; manifest.json says the same
	}
	if meta != nil {
		if *meta != nil {
			return fmt.Errorf("import: archive entry %q appears twice: %w", h.Name, errdefs.ErrInvalidArgument)
		}
		b, err := readSmall(r, h.Size, name)
		if err != nil {
			return err
		}
		*meta = b
		return nil
	}
	if rest, ok := strings.CutPrefix(name, "blobs/"); ok {
		d := digest.Digest(strings.Replace(rest, "/", ":", 1))
		if err := d.Validate(); err != nil || strings.Count(rest, "/") != 1 {
			return fmt.Errorf("import: archive entry %q under blobs/ is not named by a digest (blobs/<algorithm>/<hex>): %w", h.Name, errdefs.ErrInvalidArgument)
		}
		desc := ocispec.Descriptor{Digest: d, Size: h.Size}
		return a.writeBlob(ctx, name, r, desc, off)
	}
	if a.ociLayout != nil {
		// An OCI layout keeps its content under blobs/; anything else
		// (docker 25's manifest.json companions) is not needed.
		return nil
	}
	// A docker save file (<id>/layer.tar, <id>.json): not named by its
	// digest, so hash it while writing and commit under that hash.
	desc, err := a.writeUnnamed(ctx, name, ref, r, h.Size, off)
	if err != nil {
		return fmt.Errorf("import: archive entry %q: %w", h.Name, err)
	}
	a.blobs[name] = desc
	return nil
}

// writeBlob writes a blob whose digest is known from its path; the store
// commits it only if the bytes have that digest and size.
func (a *archive) writeBlob(ctx context.Context, name string, r io.Reader, desc ocispec.Descriptor, off int64) error {
	a.blobCount++
	a.blobs[name] = desc
	if a.local != nil {
		if err := a.writeDirect(ctx, name, r, desc, off); err != nil {
			return fmt.Errorf("import: archive entry %s does not hold blob %s: %w", name, desc.Digest, err)
		}
		return nil
	}
	cs := a.cs
	// The ref is per digest, as containerd's fetcher names it, so two
	// imports of one blob wait for each other instead of writing twice.
	ref := "localds-import-" + desc.Digest.String()
	cw, err := content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("import: write %s: %w", name, err)
	}
	defer cw.Close()
	err = a.copyBlob(ctx, cw, r, desc)
	if err == nil {
		err = commit(ctx, cw, desc)
	}
	if err != nil {
		abort(ctx, cs, ref)
		return fmt.Errorf("import: archive entry %s does not hold blob %s: %w", name, desc.Digest, err)
	}
	a.written++
	a.writtenBytes += desc.Size
	return nil
}

// copyBlob streams desc.Size bytes from r into cw in large writes; commit
// then commits them under desc.Digest (the store refuses other bytes).
//
// Large writes matter: through containerd's content API (and on to the
// localds daemon behind it) every Write is a synchronous round trip per
// hop, so containerd's own 1 MiB copy makes a 256 MiB import latency
// bound.
func (a *archive) copyBlob(ctx context.Context, cw content.Writer, r io.Reader, desc ocispec.Descriptor) error {
	st, err := cw.Status()
	if err != nil {
		return err
	}
	off := st.Offset
	if off > desc.Size {
		if err := cw.Truncate(0); err != nil {
			return err
		}
		off = 0
	}
	// An earlier, interrupted import left off bytes: they were verified
	// as far as the hash goes only at commit, like these.
	if off > 0 {
		if _, err := io.CopyN(io.Discard, r, off); err != nil {
			return fmt.Errorf("skip %d bytes already written: %w", off, err)
		}
	}
	return a.copyRest(ctx, cw, r, desc.Size, off)
}

// copyRest writes bytes off..size of a file from r, which is at off.
func (a *archive) copyRest(ctx context.Context, cw content.Writer, r io.Reader, size, off int64) error {
	if a.stream != nil {
		return a.copyOverlapped(ctx, cw, r, size, off)
	}
	if a.buf == nil {
		n := importChunk
		if a.local != nil {
			n = localChunk
		}
		a.buf = make([]byte, n)
	}
	for left := size - off; left > 0; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(r, a.buf[:min(int64(len(a.buf)), left)])
		if n > 0 {
			if _, werr := cw.Write(a.buf[:n]); werr != nil {
				return werr
			}
			left -= int64(n)
		}
		if err != nil {
			return fmt.Errorf("read %d of %d bytes: %w", size-left, size, shortRead(err))
		}
	}
	return nil
}

// shortRead is the error for a file that ended early: the stream's own if
// it was interrupted, else io.ErrUnexpectedEOF.
func shortRead(err error) error {
	if streamEnded(err) {
		return err
	}
	return io.ErrUnexpectedEOF
}

// commit commits what copyBlob wrote; a blob the store has meanwhile is
// fine.
func commit(ctx context.Context, cw content.Writer, desc ocispec.Descriptor) error {
	if err := cw.Commit(ctx, desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// writeUnnamed writes a file of unknown digest and returns its descriptor.
func (a *archive) writeUnnamed(ctx context.Context, name, ref string, r io.Reader, size, off int64) (ocispec.Descriptor, error) {
	a.blobCount++
	if a.local != nil {
		return a.writeUnnamedDirect(ctx, name, ref, r, size, off)
	}
	cs := a.cs
	cw, err := content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Size: size}))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer cw.Close()
	h := digest.Canonical.Digester()
	n, err := io.Copy(cw, io.TeeReader(r, h.Hash()))
	if err == nil && n != size {
		err = fmt.Errorf("read %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	}
	desc := ocispec.Descriptor{Digest: h.Digest(), Size: size}
	if err == nil {
		// The store hashes too and refuses a mismatch: what is committed
		// is what was read.
		err = cw.Commit(ctx, size, desc.Digest)
		if errdefs.IsAlreadyExists(err) {
			return desc, nil
		}
	}
	if err != nil {
		abort(ctx, cs, ref)
		return ocispec.Descriptor{}, err
	}
	a.written++
	a.writtenBytes += size
	return desc, nil
}

// abort drops a failed ingest so no partial data stays behind.
func abort(ctx context.Context, cs content.Store, ref string) {
	if err := cs.Abort(context.WithoutCancel(ctx), ref); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).WithField("ref", ref).Warn("import: cannot abort ingest")
	}
}
