package differ

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// gzipBomb is a gzip layer of a few KiB holding one file of size zeros.
func gzipBomb(t *testing.T, size int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 1<<20)
	for n := int64(0); n < size; n += int64(len(zero)) {
		if _, err := tw.Write(zero[:min(int64(len(zero)), size-n)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// diskBytes is what the files under dir hold.
func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// TestStageGzipBombAbandoned: a 64 MiB file in a ~65 KB gzip layer is
// not written into the staging: the bound counts extracted bytes, the
// entry is refused before it is written, the fetch goes on (the blob
// reaches the store whole) and nothing is published or left reserved.
func TestStageGzipBombAbandoned(t *testing.T) {
	const maxBytes, bombSize = 4 << 20, 64 << 20
	ctx := context.Background()
	s, err := NewStaging(ctx, t.TempDir(), WithStagingLimits(maxBytes, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	blob := gzipBomb(t, bombSize)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	t.Logf("bomb: %d bytes of gzip for a %d-byte file", len(blob), bombSize)
	st := s.Begin(ctx, desc)
	if st == nil {
		t.Skip("staging unavailable here (user namespace?)")
	}
	var stored bytes.Buffer
	n, err := st.Copy(&stored, bytes.NewReader(blob))
	if err != nil || n != desc.Size || !bytes.Equal(stored.Bytes(), blob) {
		t.Fatalf("the fetch itself must go on: %d bytes, %v", n, err)
	}
	if got := diskBytes(t, s.Dir()); got > maxBytes {
		t.Errorf("staging holds %d bytes after the bomb, bound %d", got, maxBytes)
	}
	if st.err == nil {
		t.Error("the stage of the bomb was not abandoned")
	}
	st.Commit(desc.Digest)
	if s.take(desc.Digest) != nil {
		t.Error("the bomb's tree was published")
	}
	s.mu.Lock()
	reserved := s.reserved
	s.mu.Unlock()
	if reserved != 0 {
		t.Errorf("%d bytes still reserved", reserved)
	}
	if got := diskBytes(t, s.Dir()); got != 0 {
		t.Errorf("%d bytes left in the staging", got)
	}
}
