package prefetch

import (
	"bytes"
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
)

// TestCollectionSparesPrefetches: containerd's garbage collection, run
// while a pull's blobs are being prefetched (another client removed an
// image), neither aborts a prefetch's ingest nor deletes a blob a
// prefetch committed that containerd has not recorded yet: the pull's
// fetch then records the prefetched blob without downloading it. Once
// recorded, a blob is collected as any other.
func TestCollectionSparesPrefetches(t *testing.T) {
	v := newContainerdView(t)
	ctx := pullContext(t)
	const source = "ubuntu-4321-http-server.local:5000"
	partial := bytes.Repeat([]byte("a layer still being prefetched "), 100)
	pd := layer(partial)
	done := []byte("a layer prefetched, not yet recorded by containerd")
	dd := layer(done)

	endP, _ := v.tracker.BeginFrom(source, pd.Digest)
	pw, err := content.OpenWriter(ctx, v.inner, content.WithRef(IngestRef(source, pd.Digest)), content.WithDescriptor(pd))
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	if _, err := pw.Write(partial[:100]); err != nil {
		t.Fatal(err)
	}
	endD, _ := v.tracker.BeginFrom(source, dd.Digest)
	v.tracker.Committed(dd.Digest) // as the mirror's prefetch does, before the commit
	if err := content.WriteBlob(ctx, v.inner, IngestRef(source, dd.Digest), bytes.NewReader(done), dd); err != nil {
		t.Fatal(err)
	}
	endD()

	// Another client's blob, removed: containerd's content is dirty and
	// its collection sweeps the store.
	other := []byte("another client's blob")
	od := layer(other)
	if err := content.WriteBlob(ctx, v.cs, remotes.MakeRefKey(ctx, od), bytes.NewReader(other), od); err != nil {
		t.Fatal(err)
	}
	v.removeAndCollect(ctx, t, od.Digest)

	if _, err := pw.Write(partial[100:]); err != nil {
		t.Fatal(err)
	}
	v.tracker.Committed(pd.Digest)
	if err := pw.Commit(ctx, pd.Size, pd.Digest); err != nil {
		t.Fatalf("the prefetch's commit after containerd's collection: %v", err)
	}
	endP()
	for _, d := range []struct {
		desc content.Info
		data []byte
	}{{content.Info{Digest: pd.Digest, Size: pd.Size}, partial}, {content.Info{Digest: dd.Digest, Size: dd.Size}, done}} {
		var fetched int
		if err := <-v.fetch(ctx, layer(d.data), d.data, &fetched); err != nil {
			t.Fatalf("fetch of %s: %v", d.desc.Digest, err)
		}
		if fetched != 0 {
			t.Errorf("containerd downloaded %s, prefetched before its collection, %d times", d.desc.Digest, fetched)
		}
	}

	// Recorded, the blobs are containerd's: removed from its namespace,
	// the next collection deletes them from the store at once.
	v.removeAndCollect(ctx, t, pd.Digest, dd.Digest)
}

// removeAndCollect removes blobs from containerd's namespace and runs its
// garbage collection, which must delete them from the store.
func (v *containerdView) removeAndCollect(ctx context.Context, t *testing.T, blobs ...digest.Digest) {
	t.Helper()
	for _, d := range blobs {
		if err := v.cs.Delete(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.db.GarbageCollect(ctx); err != nil {
		t.Fatalf("containerd's garbage collection: %v", err)
	}
	for _, d := range blobs {
		if _, err := v.inner.Info(ctx, d); err == nil {
			t.Errorf("%s, recorded by containerd and then removed, is still in the store after its collection", d)
		}
	}
}

// TestCollectionAfterHeldFetch: a blob whose fetch waited for its
// prefetch (a held writer) is containerd's once the fetch recorded it:
// removed from containerd's namespace, the next collection deletes it
// from the store at once.
func TestCollectionAfterHeldFetch(t *testing.T) {
	v := newContainerdView(t)
	ctx := pullContext(t)
	blob := []byte("a layer whose fetch waited for its prefetch")
	desc, end, errc, fetched := v.heldFetch(ctx, blob)
	v.tracker.Committed(desc.Digest)
	v.prefetched(ctx, t, desc, blob)
	end()
	if err := <-errc; err != nil || *fetched != 0 {
		t.Fatalf("fetch after the prefetch: %v (downloads %d)", err, *fetched)
	}
	v.removeAndCollect(ctx, t, desc.Digest)
}
