package prefetch

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/cas"
)

func TestRefDigest(t *testing.T) {
	d := digest.FromString("layer")
	for _, tc := range []struct {
		ref  string
		want digest.Digest
	}{
		{"default/12/layer-" + d.String(), d},
		{"default/3/docker.io/library/app:1@" + d.String(), d},
		{"layer-" + d.String(), d},
		{"default/4/manifest-sha256:abc", ""}, // not a digest
		{"default/5/upload-1234", ""},         // no digest at all
		{"default/6/layer-sha512:" + d.Encoded(), ""},
	} {
		got, ok := refDigest(tc.ref)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("refDigest(%q) = %q, %v; want %q", tc.ref, got, ok, tc.want)
		}
	}
}

// While a blob is prefetched, containerd's writer for it is refused as
// Unavailable (content.OpenWriter retries that) and Info waits for the
// prefetch; once it has committed, Info finds the blob. Other blobs are
// written as usual.
func TestStore(t *testing.T) {
	ctx := context.Background()
	inner, err := cas.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte("prefetched layer bytes")
	d := digest.FromBytes(blob)
	prefetches := NewTracker(nil)
	end, ok := prefetches.Begin(d)
	if !ok {
		t.Fatal("Begin of a blob nobody prefetches refused")
	}
	s := NewStore(inner, prefetches)

	_, err = s.Writer(ctx, content.WithRef("default/7/layer-"+d.String()), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(blob))}))
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("writer for a blob being prefetched: %v, want Unavailable", err)
	}

	other := []byte("another blob")
	od := digest.FromBytes(other)
	if err := content.WriteBlob(ctx, s, "default/8/layer-"+od.String(), bytes.NewReader(other), ocispec.Descriptor{Digest: od, Size: int64(len(other))}); err != nil {
		t.Fatalf("writing a blob nobody prefetches: %v", err)
	}

	// The "prefetch" commits the blob to the inner store, then ends.
	go func() {
		time.Sleep(50 * time.Millisecond)
		if err := content.WriteBlob(ctx, inner, "localds-prefetch-"+d.String(), bytes.NewReader(blob), ocispec.Descriptor{Digest: d, Size: int64(len(blob))}); err != nil {
			t.Error(err)
		}
		end()
	}()
	info, err := s.Info(ctx, d)
	if err != nil || info.Size != int64(len(blob)) {
		t.Fatalf("Info during the prefetch: %+v, %v; want it to wait and find the blob", info, err)
	}
	w, err := s.Writer(ctx, content.WithRef("default/9/layer-"+d.String()))
	if err != nil {
		t.Fatalf("writer after the prefetch: %v", err)
	}
	w.Close()

	// A prefetch that never ends: Info gives up after infoWait (so
	// containerd's metadata lock is not held longer) and says NotFound.
	stuck := digest.FromString("stuck")
	if _, ok := prefetches.Begin(stuck); !ok {
		t.Fatal("Begin of the stuck blob refused")
	}
	start := time.Now()
	if _, err := s.Info(ctx, stuck); !errdefs.IsNotFound(err) {
		t.Fatalf("Info of a blob whose prefetch does not end: %v, want NotFound", err)
	}
	if took := time.Since(start); took < infoWait {
		t.Fatalf("Info returned after %v, before its wait bound %v", took, infoWait)
	}
}
