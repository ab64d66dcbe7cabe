//go:build linux

package snapshot

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Benchmarks. Images are generated here (pseudo-random file contents,
// nothing downloaded) into a containerd content store under b.TempDir(),
// and unpacked with containerd's own applier (core/diff/apply, what the
// walking differ runs), so both snapshotters get exactly containerd's
// unpack path. Run with
//
//	go test -run '^$' -bench 'VolumeCreate|Unpack' -benchtime 5x ./internal/snapshot/

// testImage is a set of uncompressed layers in a content store.
type testImage struct {
	layers  []ocispec.Descriptor
	diffIDs []digest.Digest
	size    int64
}

// newApplier opens a content store in dir and containerd's applier on it.
func newApplier(tb testing.TB, dir string) (content.Store, diff.Applier) {
	tb.Helper()
	cs, err := local.NewStore(dir)
	if err != nil {
		tb.Fatal(err)
	}
	return cs, apply.NewFileSystemApplier(cs)
}

// writeLayer streams the tar that gen writes into cs as an uncompressed
// layer blob (its digest is its diff ID).
func writeLayer(tb testing.TB, ctx context.Context, cs content.Store, gen func(*tar.Writer) error) ocispec.Descriptor {
	tb.Helper()
	ref := fmt.Sprintf("layer-%d", time.Now().UnixNano())
	w, err := content.OpenWriter(ctx, cs, content.WithRef(ref))
	if err != nil {
		tb.Fatal(err)
	}
	defer w.Close()
	cw := &countWriter{w: w}
	tw := tar.NewWriter(cw)
	if err := gen(tw); err != nil {
		tb.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	d := w.Digest()
	if err := w.Commit(ctx, cw.n, d); err != nil && !errdefs.IsAlreadyExists(err) {
		tb.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: d, Size: cw.n}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// genImage makes an image of about size bytes in n layers, each a mix of
// one large file and many small ones (like a base image: a few big
// libraries, lots of small files), from a seeded generator.
func genImage(tb testing.TB, ctx context.Context, cs content.Store, size int64, n int, seed uint64) testImage {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var img testImage
	per := size / int64(n)
	for l := 0; l < n; l++ {
		desc := writeLayer(tb, ctx, cs, func(tw *tar.Writer) error {
			mt := time.Unix(1700000000, 0)
			buf := make([]byte, 1<<20)
			writeFile := func(name string, sz int64) error {
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: sz, ModTime: mt}); err != nil {
					return err
				}
				for left := sz; left > 0; {
					chunk := buf[:min(left, int64(len(buf)))]
					for i := 0; i+8 <= len(chunk); i += 8 {
						v := rng.Uint64()
						for j := 0; j < 8; j++ {
							chunk[i+j] = byte(v >> (8 * j))
						}
					}
					if _, err := tw.Write(chunk); err != nil {
						return err
					}
					left -= int64(len(chunk))
				}
				return nil
			}
			dir := fmt.Sprintf("layer%d", l)
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: mt}); err != nil {
				return err
			}
			if err := writeFile(dir+"/big.bin", per/2); err != nil {
				return err
			}
			var written int64
			for i := 0; written < per/2; i++ {
				sz := int64(4<<10 + rng.IntN(60<<10))
				if err := writeFile(fmt.Sprintf("%s/f%05d", dir, i), sz); err != nil {
					return err
				}
				written += sz
			}
			return nil
		})
		img.layers = append(img.layers, desc)
		img.diffIDs = append(img.diffIDs, desc.Digest)
		img.size += desc.Size
	}
	return img
}

// unpack applies img into sn the way containerd's unpacker does: per
// layer an "extract-" key on the previous chain, the applier, a commit
// named by the chain ID. It returns the top chain ID.
func unpack(tb testing.TB, ctx context.Context, sn snapshots.Snapshotter, a diff.Applier, img testImage) string {
	tb.Helper()
	parent := ""
	for i, l := range img.layers {
		chain := identity.ChainID(img.diffIDs[:i+1]).String()
		key := fmt.Sprintf("extract-%d %s", time.Now().UnixNano(), chain)
		mounts, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := a.Apply(ctx, l, mounts); err != nil {
			tb.Fatal(err)
		}
		if err := sn.Commit(ctx, chain, key); err != nil {
			tb.Fatal(err)
		}
		parent = chain
	}
	return parent
}

// removeChain removes the committed chain of img from sn, top first.
func removeChain(tb testing.TB, ctx context.Context, sn snapshots.Snapshotter, img testImage) {
	tb.Helper()
	for i := len(img.diffIDs); i > 0; i-- {
		if err := sn.Remove(ctx, identity.ChainID(img.diffIDs[:i]).String()); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkVolumeCreate measures creating a volume (Prepare of a
// <uuid>#<gen> key on the image's chain) from an unpacked 10 MiB and an
// unpacked 1 GiB image in one run. It is O(1) in the image's size: both
// should take the same few milliseconds (one bolt transaction with its
// fsync, three mkdirs, one rename).
func BenchmarkVolumeCreate(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	base := b.TempDir()
	cs, a := newApplier(b, filepath.Join(base, "content"))
	sn, err := New(filepath.Join(base, "persist"))
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	small := genImage(b, ctx, cs, 10<<20, 2, 1)
	big := genImage(b, ctx, cs, 1<<30, 4, 2)
	start := time.Now()
	smallChain := unpack(b, ctx, sn, a, small)
	bigChain := unpack(b, ctx, sn, a, big)
	b.Logf("setup: unpacked %d MiB in %v", (small.size+big.size)>>20, time.Since(start).Round(time.Millisecond))

	var tSmall, tBig time.Duration
	var n int
	for b.Loop() {
		for _, c := range []struct {
			chain string
			t     *time.Duration
		}{{smallChain, &tSmall}, {bigChain, &tBig}} {
			key := fmt.Sprintf("%s#%d", testUUID, n)
			t0 := time.Now()
			if _, err := sn.Prepare(ctx, key, c.chain); err != nil {
				b.Fatal(err)
			}
			*c.t += time.Since(t0)
			b.StopTimer()
			removeVolume(b, ctx, sn, key)
			b.StartTimer()
			n++
		}
	}
	iters := float64(n / 2)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / iters }
	b.ReportMetric(ms(tSmall), "ms/create-10MiB")
	b.ReportMetric(ms(tBig), "ms/create-1GiB")
	b.ReportMetric(ms(tBig)/ms(tSmall), "ratio-1GiB/10MiB")
}

// BenchmarkUnpack measures unpack throughput of one image (128 MiB, 4
// layers) into localds and into containerd's built-in overlayfs
// snapshotter, both in every iteration (alternating who goes first), and
// reports both and their ratio (localds/overlayfs, goal >= 1.0).
func BenchmarkUnpack(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	base := b.TempDir()
	cs, a := newApplier(b, filepath.Join(base, "content"))
	lds, err := New(filepath.Join(base, "persist"))
	if err != nil {
		b.Fatal(err)
	}
	defer lds.Close()
	ovl, err := overlay.NewSnapshotter(filepath.Join(base, "overlayfs"))
	if err != nil {
		b.Fatal(err)
	}
	defer ovl.Close()
	img := genImage(b, ctx, cs, 128<<20, 4, 3)

	var tLds, tOvl time.Duration
	var n int
	for b.Loop() {
		order := []struct {
			sn snapshots.Snapshotter
			t  *time.Duration
		}{{lds, &tLds}, {ovl, &tOvl}}
		if n%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, o := range order {
			t0 := time.Now()
			unpack(b, ctx, o.sn, a, img)
			*o.t += time.Since(t0)
			b.StopTimer()
			removeChain(b, ctx, o.sn, img)
			b.StartTimer()
		}
		n++
	}
	mbps := func(d time.Duration) float64 { return float64(img.size) * float64(n) / (1 << 20) / d.Seconds() }
	b.SetBytes(img.size * 2)
	b.ReportMetric(mbps(tLds), "localds-MiB/s")
	b.ReportMetric(mbps(tOvl), "overlayfs-MiB/s")
	b.ReportMetric(mbps(tLds)/mbps(tOvl), "ratio-localds/overlayfs")
}
