package differ_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/differ"
)

// A layer of large random files (the 1 GiB benchmark image's shape, an
// uncompressed OCI tar): the usage counted on the way is fs.DiskUsage's,
// and after the file system wrote the files back it is short by at most
// the extent blocks of files the writeback fragmented (allocation is
// delayed).
func TestStageLargeFilesUsage(t *testing.T) {
	requireRoot(t)
	size := int64(64 << 20)
	switch {
	case testing.Short():
		size = 8 << 20
	case os.Getenv("LOCALDS_REAL_LAYERS") == "full":
		size = 256 << 20
	}
	ctx := context.Background()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"data/a.bin", "data/b.bin"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(tw, rand.Reader, size); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	blob := buf.Bytes()
	s, err := differ.NewStaging(ctx, filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	st := s.Begin(ctx, desc)
	if st == nil {
		t.Fatal("not staged")
	}
	if n, err := st.Copy(io.Discard, bytes.NewReader(blob)); n != desc.Size || err != nil {
		t.Fatalf("copy %d, %v", n, err)
	}
	st.Commit(desc.Digest)
	dir, usage, diffID, _, ok := s.Published(desc.Digest)
	if !ok || diffID != desc.Digest {
		t.Fatalf("published %v, diff ID %s", ok, diffID)
	}
	checkUsage(t, dir, usage)
	checkUsageAfterWriteback(t, dir, usage)
}
