package differ

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/testimage"
)

// BenchmarkStageExtract measures a stage's extraction of the "real"
// image's gzip layers (testimage.RealGroups: /usr/include, /usr/share/doc,
// a Python standard library, Perl; LOCALDS_REAL_LAYERS=sample for every
// 10th path only), the layers one after another as one op, each side
// reading the blobs from memory through the stage's tee:
//   - archive.Apply: containerd's extractor, as the stage ran it before
//     (DecompressStream, sha256 of the tar, archive.Apply with the
//     stage's filter);
//   - extractor: the stage's extractor (Stage.extract);
//   - inflate+hash: only decompressing and hashing, the floor.
//
// Each round of each side runs on a freshly made, loop-mounted journaled
// ext4 (ext4 is slow to make files right after a tree was deleted, see
// issue 15), or a fresh temporary directory without root or mkfs.ext4.
// Reported: MB/s of tar and CPU seconds (user+system of the process) per
// op. Run it alone: flock /tmp/localds-bench.lock go test -run '^$'
// -bench StageExtract -benchtime 3x ./internal/differ/
func BenchmarkStageExtract(b *testing.B) {
	groups := testimage.RealGroups()
	if len(groups) == 0 {
		b.Skip("none of the real image's host trees on this machine")
	}
	var sets [][]string
	for _, g := range groups {
		paths, err := testimage.Walk(g...)
		if err != nil {
			b.Fatal(err)
		}
		if os.Getenv("LOCALDS_REAL_LAYERS") == "sample" {
			var s []string
			for i := 0; i < len(paths); i += 10 {
				s = append(s, paths[i])
			}
			paths = s
		}
		sets = append(sets, paths)
	}
	files, stats, err := testimage.WriteLayers(b.TempDir(), sets)
	if err != nil {
		b.Fatal(err)
	}
	var blobs [][]byte
	var tarBytes int64
	entries := 0
	for i, f := range files {
		blob, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		blobs = append(blobs, blob)
		tarBytes += stats[i].TarBytes
		entries += stats[i].Entries
	}
	b.Logf("%d layers, %d entries, %d tar bytes", len(blobs), entries, tarBytes)
	for _, side := range []struct {
		name    string
		extract func(st *Stage, r io.Reader, chk *entryCheck) error
	}{
		{"archive.Apply", (*Stage).extractWithApply},
		{"extractor", (*Stage).extract},
		{"inflate+hash", (*Stage).inflateOnly},
	} {
		b.Run(side.name, func(b *testing.B) {
			b.SetBytes(tarBytes)
			var cpu time.Duration
			for range b.N {
				b.StopTimer()
				root, drop := scratchFS(b)
				s, err := NewStaging(context.Background(), root)
				if err != nil {
					b.Fatal(err)
				}
				before := cpuTime(b)
				b.StartTimer()
				for _, blob := range blobs {
					desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
					st := s.Begin(context.Background(), desc)
					if st == nil {
						b.Fatal("not staged")
					}
					tr := &teeReader{src: bytes.NewReader(blob), dst: io.Discard, buf: make([]byte, teeChunk)}
					if err := side.extract(st, tr, newEntryCheck()); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				cpu += cpuTime(b) - before
				// The trees go with the file system.
				s.Close()
				drop()
				b.StartTimer()
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// extractWithApply is the stage's extraction as it was before its own
// extractor: containerd's archive.Apply.
func (st *Stage) extractWithApply(r io.Reader, chk *entryCheck) error {
	ds, err := compression.DecompressStream(r)
	if err != nil {
		return err
	}
	defer func() {
		io.Copy(io.Discard, ds)
		ds.Close()
	}()
	h := digest.Canonical.Digester()
	opts := []archive.ApplyOpt{archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithFilter(st.bound(chk.filter))}
	if _, err := archive.Apply(st.ctx, st.dir, io.TeeReader(ds, h.Hash()), opts...); err != nil {
		return err
	}
	io.Copy(h.Hash(), ds)
	st.diffID = h.Digest()
	return nil
}

func (st *Stage) inflateOnly(r io.Reader, _ *entryCheck) error {
	ds, err := compression.DecompressStream(r)
	if err != nil {
		return err
	}
	defer ds.Close()
	h := digest.Canonical.Digester()
	_, err = io.Copy(h.Hash(), ds)
	st.diffID = h.Digest()
	return err
}

// scratchFS is a new, empty, journaled ext4 mounted for this round, or
// a new temporary directory; drop unmounts and removes it.
func scratchFS(b *testing.B) (string, func()) {
	dir, err := os.MkdirTemp("", "stage-bench-")
	if err != nil {
		b.Fatal(err)
	}
	drop := func() { os.RemoveAll(dir) }
	if os.Geteuid() != 0 {
		return dir, drop
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return dir, drop
	}
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(2 << 30); err != nil {
		b.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		b.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		b.Fatalf("mount: %v: %s", err, out)
	}
	return mnt, func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			b.Errorf("umount %s: %v: %s", mnt, err, out)
			return
		}
		os.RemoveAll(dir)
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
