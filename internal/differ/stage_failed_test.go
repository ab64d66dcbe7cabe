package differ

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestStageFailedExtractionRemovedAtOnce: a layer whose gzip stream is
// cut after its first 2 MiB file fails to extract; the fetch still copies
// the blob whole, and the half-extracted tree is gone (its reservation
// released) as soon as the copy returns, before the fetch ends.
func TestStageFailedExtractionRemovedAtOnce(t *testing.T) {
	ctx := context.Background()
	s, err := NewStaging(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, name := range []string{"a", "b"} {
		data := make([]byte, 2<<20)
		rand.Read(data)
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	gz.Close()
	blob := buf.Bytes()[:buf.Len()*3/4] // b is cut: a corrupt layer
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	st := s.Begin(ctx, desc)
	if st == nil {
		t.Skip("staging unavailable here (user namespace?)")
	}
	var stored bytes.Buffer
	if n, err := st.Copy(&stored, bytes.NewReader(blob)); err != nil || n != desc.Size {
		t.Fatalf("the fetch itself must go on: %d bytes, %v", n, err)
	}
	if st.err == nil {
		t.Fatal("the cut layer extracted")
	}
	if got := diskBytes(t, s.Dir()); got != 0 {
		t.Errorf("%d bytes left in the staging after the extraction failed, before the fetch ended", got)
	}
	s.mu.Lock()
	reserved := s.reserved
	s.mu.Unlock()
	if reserved != 0 {
		t.Errorf("%d bytes still reserved after the extraction failed", reserved)
	}
	st.Commit(desc.Digest)
	if s.take(desc.Digest) != nil {
		t.Error("the cut layer's tree was published")
	}
	if s.reserved != 0 {
		t.Errorf("%d bytes reserved after Commit", s.reserved)
	}
}
