package differ_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/differ"
	"github.com/localds/localds/internal/fstree"
	"github.com/localds/localds/internal/testimage"
)

// realLayerPaths are the host paths of the "real" image's layers
// (testimage.RealGroups): with -short about 300 a layer, by default
// about 1000, with LOCALDS_REAL_LAYERS=full all of them (the benchmark
// image, ~18k entries).
func realLayerPaths(t testing.TB) [][]string {
	t.Helper()
	limit := 1000
	if testing.Short() {
		limit = 300
	}
	if os.Getenv("LOCALDS_REAL_LAYERS") == "full" {
		limit = 0
	}
	var out [][]string
	for _, g := range testimage.RealGroups() {
		paths, err := testimage.Walk(g...)
		if err != nil {
			t.Fatal(err)
		}
		if limit > 0 && len(paths) > limit {
			// Every k-th path, so each layer keeps its shape (deep and
			// shallow directories, links); WriteLayer adds the parents.
			var sample []string
			for i := 0; i < len(paths); i += (len(paths) + limit - 1) / limit {
				sample = append(sample, paths[i])
			}
			paths = sample
		}
		out = append(out, paths)
	}
	if len(out) == 0 {
		t.Skip("none of the real image's host trees on this machine")
	}
	return out
}

// Real-shaped gzip layers go through a stage as the prefetch sends them:
// the published tree is what containerd's archive.Apply extracts from the
// same blob, entry by entry (directory times included), the diff ID is
// the tar's, and the usage counted on the way is fs.DiskUsage's, right
// after the extraction and after the file system wrote everything back.
func TestStageRealShapedLayers(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	tmp := t.TempDir()
	files, stats, err := testimage.WriteLayers(tmp, realLayerPaths(t))
	if err != nil {
		t.Fatal(err)
	}
	s, err := differ.NewStaging(ctx, filepath.Join(tmp, "root"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, f := range files {
		blob, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		st := s.Begin(ctx, desc)
		if st == nil {
			t.Fatal("not staged")
		}
		if n, err := st.Copy(io.Discard, &pieceReader{r: bytes.NewReader(blob), max: 100 << 10}); n != desc.Size || err != nil {
			t.Fatalf("layer %d: copy %d, %v", i, n, err)
		}
		st.Commit(desc.Digest)
		dir, usage, diffID, implicit, ok := s.Published(desc.Digest)
		if !ok {
			t.Fatalf("layer %d (%d entries) not staged", i, stats[i].Entries)
		}

		ref := filepath.Join(tmp, "ref", string(rune('0'+i)))
		if err := os.MkdirAll(ref, 0o700); err != nil {
			t.Fatal(err)
		}
		ds, err := compression.DecompressStream(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		h := digest.Canonical.Digester()
		if _, err := archive.Apply(ctx, ref, io.TeeReader(ds, h.Hash()), archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)); err != nil {
			t.Fatal(err)
		}
		io.Copy(h.Hash(), ds)
		ds.Close()
		if diffID != h.Digest() {
			t.Fatalf("layer %d: diff ID %s, the tar's %s", i, diffID, h.Digest())
		}
		// Snapshots before the usage walks, which read directories
		// (moving their access times).
		compareTrees(t, snapshotTree(t, ref), snapshotTree(t, dir), fstree.NowTimes{Both: implicit})
		checkUsage(t, dir, usage)
		checkUsageAfterWriteback(t, dir, usage)
		t.Logf("layer %d: %d entries, %d tar bytes, usage %+v", i, stats[i].Entries, stats[i].TarBytes, usage)
	}
}

// checkUsageAfterWriteback: after syncfs the usage counted while
// extracting is still fs.DiskUsage's, within checkUsage's one block per
// large file: ext4 allocates late, and an extent tree block for a file
// the writeback fragments exists only then. fs.DiskUsage at commit, in
// stock containerd's snapshotters as in ours, cannot see it either.
func checkUsageAfterWriteback(t *testing.T, dir string, usage snapshots.Usage) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, dir, usage)
}
