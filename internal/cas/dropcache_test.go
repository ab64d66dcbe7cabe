package cas

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/writeback"
)

// TestWriterDropCache: with DropCache, each range whose writeback was
// started is dropped one hint later (none without it), and the blob
// committed is the bytes written, with the real posix_fadvise too.
func TestWriterDropCache(t *testing.T) {
	data := make([]byte, 3*writeback.Chunk+writeback.Chunk/2)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	type span struct{ off, n int64 }
	for _, tc := range []struct {
		name string
		drop bool
		fake bool
		want []span
	}{
		{"drop", true, true, []span{{0, writeback.Chunk}, {writeback.Chunk, writeback.Chunk}}},
		{"keep", false, true, nil},
		{"fadvise", true, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []span
			if tc.fake {
				real := dropCache
				dropCache = func(_ *os.File, off, n int64) { got = append(got, span{off, n}) }
				defer func() { dropCache = real }()
			}
			ctx := context.Background()
			cs, err := Open(ctx, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			d := digest.FromBytes(data)
			desc := ocispec.Descriptor{Digest: d, Size: int64(len(data))}
			w, err := cs.Writer(ctx, content.WithRef("drop-"+tc.name), content.WithDescriptor(desc))
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if tc.drop {
				dc, ok := w.(interface{ DropCache() })
				if !ok {
					t.Fatalf("the store's writer %T has no DropCache", w)
				}
				dc.DropCache()
			}
			for off := 0; off < len(data); off += 1 << 20 {
				if _, err := w.Write(data[off:min(off+1<<20, len(data))]); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Commit(ctx, desc.Size, d); err != nil {
				t.Fatal(err)
			}
			if tc.fake && !slices.Equal(got, tc.want) {
				t.Errorf("dropped %v, want %v", got, tc.want)
			}
			back, err := content.ReadBlob(ctx, cs, desc)
			if err != nil || !bytes.Equal(back, data) {
				t.Fatalf("blob read back: %d bytes, equal %v, %v", len(back), bytes.Equal(back, data), err)
			}
		})
	}
}
