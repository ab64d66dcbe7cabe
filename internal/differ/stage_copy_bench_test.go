package differ

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BenchmarkStageCopyUncompressed: the CPU time of staging a 256 MiB
// uncompressed layer of 4 random files while it is written to a store
// file and hashed, as the prefetch does (the concurrent and 1 GiB pull
// shapes' path), on a fresh file system each round. The CPU figure is
// steadier than the pull benchmarks' wall times: it settled that reading
// the socket straight into the extractor's chunks (one copy less) costs
// more than it saves, through smaller page-cache writes.
func BenchmarkStageCopyUncompressed(b *testing.B) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"a", "b", "c", "d"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 64 << 20}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyN(tw, rand.Reader, 64<<20); err != nil {
			b.Fatal(err)
		}
	}
	tw.Close()
	blob := buf.Bytes()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	ctx := context.Background()
	var cpu float64
	b.SetBytes(int64(len(blob)))
	for range b.N {
		b.StopTimer()
		root, drop := scratchFS(b)
		s, err := NewStaging(ctx, filepath.Join(root, "staging"))
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(filepath.Join(root, "blob"))
		if err != nil {
			b.Fatal(err)
		}
		before := cpuTime(b)
		b.StartTimer()
		st := s.Begin(ctx, desc)
		if _, err := st.Copy(io.MultiWriter(sha256.New(), f), bytes.NewReader(blob)); err != nil {
			b.Fatal(err)
		}
		st.Commit(desc.Digest)
		b.StopTimer()
		cpu += (cpuTime(b) - before).Seconds()
		f.Close()
		s.Close()
		drop()
	}
	b.ReportMetric(cpu/float64(b.N), "cpu-s/op")
}
