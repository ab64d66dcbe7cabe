package archiveimport_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testimage"
)

// importEnv is containerd's metadata layer (namespaces, leases, image
// records, GC) over the localds store at root, as in the daemon, but in
// process.
type importEnv struct {
	ctx     context.Context
	root    string
	backend content.Store // the localds store under the metadata
	db      *metadata.DB
	leases  leases.Manager
	images  images.Store
	// direct makes importAs write into backend directly
	// (ImportOptions.Local), as localds pull does on a node.
	direct bool
}

// modes runs fn once through containerd's content store only and once
// writing into the backing store directly.
func modes(t *testing.T, fn func(t *testing.T, direct bool)) {
	t.Run("through-containerd", func(t *testing.T) { fn(t, false) })
	t.Run("direct", func(t *testing.T) { fn(t, true) })
}

func newImportEnv(t testing.TB) *importEnv {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	root := t.TempDir()
	backend, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(filepath.Join(t.TempDir(), "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bdb.Close() })
	db := metadata.NewDB(bdb, backend, map[string]snapshots.Snapshotter{})
	if err := db.Init(ctx); err != nil {
		t.Fatal(err)
	}
	return &importEnv{ctx: ctx, root: root, backend: backend, db: db, leases: metadata.NewLeaseManager(db), images: metadata.NewImageStore(db)}
}

// importAs imports the archive under a lease and, if that works, creates
// an image record named ref, as localds pull does; then it collects
// garbage, so the store holds exactly what the record keeps.
func (e *importEnv) importAs(t *testing.T, archive []byte, ref string, opts archiveimport.ImportOptions) (archiveimport.Imported, error) {
	t.Helper()
	var imp archiveimport.Imported
	if e.direct {
		opts.Local = e.backend
	}
	err := archiveimport.Leased(e.ctx, e.leases, func(ctx context.Context) error {
		var err error
		imp, err = archiveimport.Import(ctx, e.db.ContentStore(), bytes.NewReader(archive), opts)
		if err == nil && imp.Direct != e.direct {
			return fmt.Errorf("imported directly: %v, want %v", imp.Direct, e.direct)
		}
		if err != nil {
			return err
		}
		_, err = e.images.Create(ctx, images.Image{Name: ref, Target: imp.Target})
		return err
	})
	e.gc(t)
	return imp, err
}

func (e *importEnv) gc(t testing.TB) {
	t.Helper()
	if _, err := e.db.GarbageCollect(e.ctx); err != nil {
		t.Fatal(err)
	}
}

// blobs lists the digests stored under <root>/vault/cas/blobs, and fails
// if an ingest was left behind.
func (e *importEnv) blobs(t *testing.T) []digest.Digest {
	t.Helper()
	cas := cas.Dir(e.root)
	var out []digest.Digest
	err := filepath.WalkDir(filepath.Join(cas, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, digest.NewDigestFromEncoded(digest.Algorithm(filepath.Base(filepath.Dir(p))), d.Name()))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ingests, err := os.ReadDir(filepath.Join(cas, "ingest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ingests) != 0 {
		t.Errorf("%d ingests left in %s", len(ingests), filepath.Join(cas, "ingest"))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func (e *importEnv) requireEmpty(t *testing.T) {
	t.Helper()
	if b := e.blobs(t); len(b) != 0 {
		t.Fatalf("the failed import left %d blobs in the CAS: %v", len(b), b)
	}
}

// imageDigests are the manifest, config and layer digests of img.
func imageDigests(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	m, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	c, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := []digest.Digest{digest.Digest(m.String()), digest.Digest(c.String())}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, digest.Digest(d.String()))
	}
	return out
}

func requireBlobs(t *testing.T, have []digest.Digest, want ...digest.Digest) {
	t.Helper()
	set := map[digest.Digest]bool{}
	for _, d := range have {
		set[d] = true
	}
	for _, d := range want {
		if !set[d] {
			t.Errorf("blob %s is not in the CAS (have %v)", d, have)
		}
	}
}

func randomImage(t *testing.T, layers int64, platform string) v1.Image {
	t.Helper()
	img, err := random.Image(2048, layers)
	if err != nil {
		t.Fatal(err)
	}
	if platform != "" {
		p, err := v1.ParsePlatform(platform)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

type tarEntry struct {
	name, link string
	typ        byte
	data       []byte
}

func rawTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Linkname: e.link, Typeflag: typ, Size: int64(len(e.data)), Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarEntries reads an archive back so tests can alter it.
func tarEntries(t *testing.T, archive []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{name: h.Name, link: h.Linkname, typ: h.Typeflag, data: b})
	}
}

func TestImportOCILayout(t *testing.T) { modes(t, testImportOCILayout) }

func testImportOCILayout(t *testing.T, direct bool) {
	e := newImportEnv(t)
	e.direct = direct
	img := randomImage(t, 3, "linux/amd64")
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(img, "app:1"))

	imp, err := e.importAs(t, archive, "app:1", archiveimport.ImportOptions{Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	want := imageDigests(t, img)
	if imp.Format != archiveimport.FormatOCI || imp.Name != "app:1" || imp.Target.Digest != want[0] || imp.Manifest.Digest != want[0] {
		t.Fatalf("imported %+v, want OCI app:1 with target and manifest %s", imp, want[0])
	}
	if imp.Platform.Architecture != "amd64" || imp.Blobs != 5 || imp.Written != 5 {
		t.Fatalf("imported %+v, want amd64, 5 blobs all written", imp)
	}
	have := e.blobs(t)
	requireBlobs(t, have, want...)
	// The image record alone keeps them: without it the GC takes all.
	if err := e.images.Delete(e.ctx, "app:1"); err != nil {
		t.Fatal(err)
	}
	e.gc(t)
	e.requireEmpty(t)

	// Importing the same archive twice writes nothing new.
	if _, err := e.importAs(t, archive, "app:1", archiveimport.ImportOptions{Platform: "linux/amd64"}); err != nil {
		t.Fatal(err)
	}
	imp, err = e.importAs(t, archive, "app:2", archiveimport.ImportOptions{Platform: "linux/amd64"})
	if err != nil || imp.Written != 0 {
		t.Fatalf("second import: %+v, %v; want nothing written", imp, err)
	}
}

func TestImportDockerSave(t *testing.T) { modes(t, testImportDockerSave) }

func testImportDockerSave(t *testing.T, direct bool) {
	e := newImportEnv(t)
	e.direct = direct
	img := randomImage(t, 2, "linux/amd64")
	tag, err := name.NewTag("tool:1.0")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarball.Write(tag, img, &buf); err != nil {
		t.Fatal(err)
	}
	imp, err := e.importAs(t, buf.Bytes(), "tool:1.0", archiveimport.ImportOptions{Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if imp.Format != archiveimport.FormatDocker || imp.Name != "docker.io/library/tool:1.0" || imp.Target.MediaType != images.MediaTypeDockerSchema2Manifest {
		t.Fatalf("imported %+v, want a docker manifest named docker.io/library/tool:1.0", imp)
	}
	want := imageDigests(t, img)
	have := e.blobs(t)
	requireBlobs(t, have, append(want[1:], imp.Target.Digest)...)
	mf, err := images.Manifest(e.ctx, e.db.ContentStore(), imp.Target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range mf.Layers {
		if l.MediaType != images.MediaTypeDockerSchema2LayerGzip || l.Digest != want[2+i] {
			t.Errorf("layer %d: %s %s, want gzip %s", i, l.MediaType, l.Digest, want[2+i])
		}
	}
	// manifest.json, repositories and the like are not blobs: with the
	// record, exactly manifest, config and layers remain.
	if len(have) != len(want) {
		t.Errorf("CAS holds %d blobs, want %d: %v", len(have), len(want), have)
	}
}

func TestImportMultiArch(t *testing.T) { modes(t, testImportMultiArch) }

func testImportMultiArch(t *testing.T, direct bool) {
	plats := []string{"linux/amd64", "linux/arm/v7", "linux/arm64"}
	idx := v1.ImageIndex(empty.Index)
	imgs := map[string]v1.Image{}
	for _, p := range plats {
		img := randomImage(t, 2, p)
		imgs[p] = img
		vp, _ := v1.ParsePlatform(p)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: vp}})
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	archive := testimage.OCILayoutTar(t, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: idx}))

	for _, p := range plats {
		t.Run(strings.ReplaceAll(p, "/", "-"), func(t *testing.T) {
			e := newImportEnv(t)
			e.direct = direct
			imp, err := e.importAs(t, archive, "multi:1", archiveimport.ImportOptions{Platform: p})
			if err != nil {
				t.Fatal(err)
			}
			want := imageDigests(t, imgs[p])
			if imp.Target.Digest.String() != idxDigest.String() || imp.Manifest.Digest != want[0] || platformString(imp.Platform) != p {
				t.Fatalf("imported %+v; want target %s, manifest %s for %s", imp, idxDigest, want[0], p)
			}
			if len(imp.Platforms) != 3 {
				t.Errorf("platforms %v, want the three of the index", imp.Platforms)
			}
			have := e.blobs(t)
			requireBlobs(t, have, append(want, digest.Digest(idxDigest.String()))...)
			// Only the asked platform stays: the others are collected.
			if len(have) != len(want)+1 {
				t.Errorf("CAS holds %d blobs, want %d (index + %s only): %v", len(have), len(want)+1, p, have)
			}
		})
	}
	t.Run("no-match", func(t *testing.T) {
		e := newImportEnv(t)
		e.direct = direct
		_, err := e.importAs(t, archive, "multi:1", archiveimport.ImportOptions{Platform: "linux/s390x"})
		if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "linux/amd64, linux/arm/v7, linux/arm64") || !strings.Contains(err.Error(), "linux/s390x") {
			t.Fatalf("import for s390x: %v; want not found naming the available platforms", err)
		}
		e.requireEmpty(t)
	})
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func TestImportLoneManifestPlatform(t *testing.T) {
	e := newImportEnv(t)
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 1, "linux/arm64"), "a:1"))
	_, err := e.importAs(t, archive, "a:1", archiveimport.ImportOptions{Platform: "linux/amd64"})
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "linux/arm64") {
		t.Fatalf("arm64 image on amd64: %v; want not found naming linux/arm64", err)
	}
	e.requireEmpty(t)
	if _, err := e.importAs(t, archive, "a:1", archiveimport.ImportOptions{Platform: "linux/arm64"}); err != nil {
		t.Fatal(err)
	}
}

func TestImportSelectsByName(t *testing.T) {
	e := newImportEnv(t)
	a, b := randomImage(t, 1, "linux/amd64"), randomImage(t, 1, "linux/amd64")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: a, Descriptor: v1.Descriptor{Annotations: map[string]string{images.AnnotationImageName: "docker.io/library/web:1"}}},
		mutate.IndexAddendum{Add: b, Descriptor: v1.Descriptor{Annotations: map[string]string{images.AnnotationImageName: "docker.io/library/db:2"}}},
	)
	archive := testimage.OCILayoutTar(t, idx)
	_, err := e.importAs(t, archive, "x", archiveimport.ImportOptions{Platform: "linux/amd64"})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "web:1") || !strings.Contains(err.Error(), "db:2") {
		t.Fatalf("unnamed import of two images: %v; want an error listing both", err)
	}
	e.requireEmpty(t)
	imp, err := e.importAs(t, archive, "db:2", archiveimport.ImportOptions{Platform: "linux/amd64", Name: "db:2"})
	if err != nil {
		t.Fatal(err)
	}
	if want := imageDigests(t, b)[0]; imp.Manifest.Digest != want {
		t.Fatalf("picked %s, want db:2 = %s", imp.Manifest.Digest, want)
	}
}

func TestImportRefusesEscapes(t *testing.T) {
	layoutFile := tarEntry{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)}
	blob := []byte("data")
	blobName := "blobs/sha256/" + digest.FromBytes(blob).Encoded()
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"dotdot", []tarEntry{{name: blobName, data: blob}, {name: "../evil", data: blob}, layoutFile}, `".."`},
		{"dotdot-inside", []tarEntry{{name: blobName, data: blob}, {name: "blobs/../../evil", data: blob}}, `".."`},
		{"absolute", []tarEntry{{name: blobName, data: blob}, {name: "/etc/evil", data: blob}}, "absolute"},
		{"symlink-out", []tarEntry{{name: blobName, data: blob}, {name: "layer.tar", link: "../../etc/shadow", typ: tar.TypeSymlink}}, "outside the archive"},
		{"symlink-absolute", []tarEntry{{name: blobName, data: blob}, {name: "layer.tar", link: "/etc/shadow", typ: tar.TypeSymlink}}, "outside the archive"},
		{"hardlink-out", []tarEntry{{name: blobName, data: blob}, {name: "layer.tar", link: "../x", typ: tar.TypeLink}}, "outside the archive"},
		{"device", []tarEntry{{name: blobName, data: blob}, {name: "dev", typ: tar.TypeChar}}, "not a regular file"},
		{"bad-blob-name", []tarEntry{{name: "blobs/sha256/nothex", data: blob}}, "not named by a digest"},
		{"neither-format", []tarEntry{{name: blobName, data: blob}}, "neither an OCI image layout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newImportEnv(t)
			_, err := e.importAs(t, rawTar(t, tc.entries...), "x:1", archiveimport.ImportOptions{})
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("import: %v; want invalid argument containing %s", err, tc.want)
			}
			e.requireEmpty(t)
		})
	}
}

func TestImportMissingBlob(t *testing.T) { modes(t, testImportMissingBlob) }

func testImportMissingBlob(t *testing.T, direct bool) {
	img := randomImage(t, 3, "linux/amd64")
	want := imageDigests(t, img)
	full := tarEntries(t, testimage.OCILayoutTar(t, testimage.NamedIndex(img, "app:1")))
	for _, missing := range []struct {
		what string
		d    digest.Digest
	}{{"manifest", want[0]}, {"config", want[1]}, {"layer", want[3]}} {
		t.Run(missing.what, func(t *testing.T) {
			var kept []tarEntry
			for _, en := range full {
				if en.name != "blobs/sha256/"+missing.d.Encoded() {
					kept = append(kept, en)
				}
			}
			if len(kept) != len(full)-1 {
				t.Fatalf("blob %s not found in the archive", missing.d)
			}
			e := newImportEnv(t)
			e.direct = direct
			_, err := e.importAs(t, rawTar(t, kept...), "app:1", archiveimport.ImportOptions{Platform: "linux/amd64"})
			if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), missing.d.String()) || !strings.Contains(err.Error(), "not in the archive") {
				t.Fatalf("import without %s: %v; want not found naming %s", missing.what, err, missing.d)
			}
			e.requireEmpty(t)
		})
	}
}

func TestImportCorruptOrTruncated(t *testing.T) { modes(t, testImportCorruptOrTruncated) }

func testImportCorruptOrTruncated(t *testing.T, direct bool) {
	img := randomImage(t, 2, "linux/amd64")
	want := imageDigests(t, img)
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(img, "app:1"))
	entries := tarEntries(t, archive)
	for i := range entries {
		if entries[i].name == "blobs/sha256/"+want[2].Encoded() {
			d := bytes.Clone(entries[i].data)
			d[len(d)/2] ^= 0xff
			entries[i].data = d
		}
	}
	e := newImportEnv(t)
	e.direct = direct
	_, err := e.importAs(t, rawTar(t, entries...), "app:1", archiveimport.ImportOptions{Platform: "linux/amd64"})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), want[2].String()) {
		t.Fatalf("corrupt layer: %v; want failed precondition naming %s", err, want[2])
	}
	e.requireEmpty(t)

	// Cut in the middle of the last blob (tar entries are in name order).
	_, err = e.importAs(t, archive[:len(archive)*3/4], "app:1", archiveimport.ImportOptions{Platform: "linux/amd64"})
	if err == nil {
		t.Fatal("truncated archive imported")
	}
	e.requireEmpty(t)
}
