package prefetch

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/localds/localds/internal/cas"
)

// containerdView is containerd's content store over the daemon's, as a
// proxy plugin wires it: containerd's metadata store (bolt) over the
// content proxy, over gRPC, to the content service over Store.
type containerdView struct {
	inner   content.Store // the CAS the prefetches commit to
	tracker *Tracker
	bolt    *bolt.DB
	db      *metadata.DB  // containerd's metadata, for its garbage collection
	cs      content.Store // what containerd's fetch writes to
}

func newContainerdView(t *testing.T, opts ...TrackerOption) *containerdView {
	t.Helper()
	ctx := context.Background()
	inner, err := cas.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tracker := NewTracker(nil, opts...)
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	contentapi.RegisterContentServer(srv, contentserver.New(NewStore(inner, tracker)))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///localds",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	bdb, err := bolt.Open(filepath.Join(t.TempDir(), "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bdb.Close() })
	mdb := metadata.NewDB(bdb, proxy.NewContentStore(conn), nil)
	if err := mdb.Init(ctx); err != nil {
		t.Fatal(err)
	}
	return &containerdView{inner: inner, tracker: tracker, bolt: bdb, db: mdb, cs: mdb.ContentStore()}
}

// pullContext is a pull's context in containerd's "default" namespace,
// bounded so that a deadlock fails the test instead of hanging it.
func pullContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// prefetched commits blob to the daemon's store as a prefetch does.
func (v *containerdView) prefetched(ctx context.Context, t *testing.T, desc ocispec.Descriptor, blob []byte) {
	t.Helper()
	if err := content.WriteBlob(ctx, v.inner, RefPrefix+desc.Digest.String(), bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}
}

// heldFetch begins a prefetch of blob and containerd's fetch of it, and
// returns once the fetch waits for the prefetch.
func (v *containerdView) heldFetch(ctx context.Context, blob []byte) (desc ocispec.Descriptor, end func(), errc <-chan error, fetched *int) {
	desc = layer(blob)
	end, _ = v.tracker.Begin(desc.Digest)
	fetched = new(int)
	errc = v.fetch(ctx, desc, blob, fetched)
	v.waiting(ctx)
	return desc, end, errc, fetched
}

// waiting returns once a fetch waits for a prefetch (or ctx ends).
func (v *containerdView) waiting(ctx context.Context) {
	for v.tracker.waits.Load() == 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
}

func layer(data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// fetch is containerd's fetch of desc (remotes.Fetch, as a pull runs
// it); fetched counts the downloads it had to make.
func (v *containerdView) fetch(ctx context.Context, desc ocispec.Descriptor, data []byte, fetched *int) <-chan error {
	errc := make(chan error, 1)
	go func() {
		errc <- remotes.Fetch(ctx, v.cs, remotes.FetcherFunc(func(context.Context, ocispec.Descriptor) (io.ReadCloser, error) {
			*fetched++
			return io.NopCloser(bytes.NewReader(data)), nil
		}), desc)
	}()
	return errc
}

// fetchDone waits for a fetch containerdView.fetch started and checks that
// containerd downloaded the blob want times (0: it took the prefetched
// one).
func fetchDone(t *testing.T, errc <-chan error, fetched *int, want int) {
	t.Helper()
	if err := <-errc; err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if *fetched != want {
		t.Errorf("containerd downloaded the blob %d times, want %d", *fetched, want)
	}
}

// TestFetchWaitsOutsideTheLock: containerd's fetch of a blob being
// prefetched waits for the prefetch and then records the prefetched blob
// without downloading it, and while it waits containerd's metadata
// database is free: another blob's ingest and a label update complete.
// The prefetch ends only after they did, so a wait inside containerd's
// write transaction deadlocks this test (caught by its timeout) instead
// of passing slowly.
func TestFetchWaitsOutsideTheLock(t *testing.T) {
	v := newContainerdView(t)
	ctx := pullContext(t)
	blob := []byte("prefetched layer bytes")
	desc := layer(blob)
	end, ok := v.tracker.Begin(desc.Digest)
	if !ok {
		t.Fatal("Begin refused")
	}
	var fetched int
	errc := v.fetch(ctx, desc, blob, &fetched)
	for v.tracker.waits.Load() == 0 {
		select {
		case err := <-errc:
			t.Fatalf("fetch ended before the prefetch did: %v (downloads %d)", err, fetched)
		case <-ctx.Done():
			t.Fatal("containerd's fetch never waited for the prefetch")
		case <-time.After(time.Millisecond):
		}
	}

	other := []byte("another blob")
	od := layer(other)
	if err := content.WriteBlob(ctx, v.cs, remotes.MakeRefKey(ctx, od), bytes.NewReader(other), od); err != nil {
		t.Fatalf("another blob's ingest while a fetch waits for a prefetch: %v", err)
	}
	if _, err := v.cs.Update(ctx, content.Info{Digest: od.Digest, Labels: map[string]string{"x": "y"}}, "labels.x"); err != nil {
		t.Fatalf("label update while a fetch waits for a prefetch: %v", err)
	}
	select {
	case err := <-errc:
		t.Fatalf("fetch ended before the prefetch did: %v", err)
	default:
	}

	// The prefetch commits the blob to the daemon's store, then ends.
	v.prefetched(ctx, t, desc, blob)
	end()
	fetchDone(t, errc, &fetched, 0)
	if info, err := v.cs.Info(ctx, desc.Digest); err != nil || info.Size != desc.Size {
		t.Errorf("containerd's record of the prefetched blob: %+v, %v", info, err)
	}
	assertNoIngests(ctx, t, v)
}

// TestFetchAfterFailedPrefetch: a prefetch that ends without the blob
// (failed), or outlives its hold, leaves the download to containerd,
// which then commits the blob as usual.
func TestFetchAfterFailedPrefetch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hold  time.Duration
		ended bool
	}{
		{"failed", DefaultHold, true},
		{"past the hold", 50 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newContainerdView(t, WithHold(tc.hold))
			ctx := pullContext(t)
			blob := []byte("layer whose prefetch fails: " + tc.name)
			desc := layer(blob)
			end, _ := v.tracker.Begin(desc.Digest)
			if !tc.ended {
				defer end()
			}
			var fetched int
			errc := v.fetch(ctx, desc, blob, &fetched)
			if tc.ended {
				v.waiting(ctx)
				end()
			}
			fetchDone(t, errc, &fetched, 1)
			ra, err := v.inner.ReaderAt(ctx, desc)
			if err != nil {
				t.Fatalf("blob not in the daemon's store: %v", err)
			}
			ra.Close()
			assertNoIngests(ctx, t, v)
		})
	}
}

// A held writer leaves no ingest behind, in the daemon or in containerd.
func assertNoIngests(ctx context.Context, t *testing.T, v *containerdView) {
	t.Helper()
	for name, s := range map[string]content.Store{"daemon": v.inner, "containerd": v.cs} {
		st, err := s.ListStatuses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != 0 {
			t.Errorf("%s ingests left: %+v", name, st)
		}
	}
}

// TestFetchAfterPartialIngest: an ingest left under the fetch's ref while
// it waited (another writer of the same ref that stopped halfway) is not
// resumed from its offset, which the client never negotiated: the fetch
// downloads the whole blob and commits it.
func TestFetchAfterPartialIngest(t *testing.T) {
	v := newContainerdView(t)
	ctx := pullContext(t)
	blob := []byte("a layer whose ingest someone left half written")
	desc, end, errc, fetched := v.heldFetch(ctx, blob)
	// containerd's metadata store names the backend ingest
	// "<namespace>/<sequence>/<ref>"; this is the database's first.
	bref := "default/1/" + remotes.MakeRefKey(ctx, desc)
	w, err := v.inner.Writer(ctx, content.WithRef(bref))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob[:len(blob)/2]); err != nil {
		t.Fatal(err)
	}
	w.Close()
	end() // the prefetch failed: the fetch must download
	fetchDone(t, errc, fetched, 1)
	if info, err := v.cs.Info(ctx, desc.Digest); err != nil || info.Size != desc.Size {
		t.Errorf("containerd's record of the blob: %+v, %v", info, err)
	}
}

// TestHeldCommitOfCollectedBlob: a prefetched blob deleted after the held
// writer found it and before containerd commits (containerd's content
// garbage collection, run by another client's image removal, deletes
// what no namespace records yet) is not recorded as present: the commit
// fails, and containerd's metadata has no such blob. The content service
// looks the digest up at the commit, under containerd's content lock,
// and only then answers AlreadyExists; else the held writer's real
// ingest is committed empty, which fails.
func TestHeldCommitOfCollectedBlob(t *testing.T) {
	v := newContainerdView(t)
	ctx := pullContext(t)
	blob := []byte("a prefetched layer collected too early")
	desc := layer(blob)
	end, _ := v.tracker.Begin(desc.Digest)
	w, err := v.cs.Writer(ctx, content.WithRef(remotes.MakeRefKey(ctx, desc)), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	v.prefetched(ctx, t, desc, blob)
	end()
	st, err := w.Status()
	if err != nil || st.Offset != desc.Size {
		t.Fatalf("status after the prefetch: %+v, %v (want the blob complete)", st, err)
	}
	if err := v.inner.Delete(ctx, desc.Digest); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest); err == nil || errdefs.IsAlreadyExists(err) {
		t.Fatalf("commit of a blob gone from the store: %v", err)
	}
	if info, err := v.cs.Info(ctx, desc.Digest); !errdefs.IsNotFound(err) {
		t.Fatalf("containerd records a blob the store lacks: %+v, %v", info, err)
	}
}

// TestHeldFetchShowsProgress: while containerd's fetch of a blob waits for
// its prefetch, containerd's list of ingests, which `ctr image pull` draws
// its progress from, shows the fetch's ref at the offset the prefetch has
// reached; once the prefetch is done, the fetch records the blob without
// downloading it and no ingest is left.
func TestHeldFetchShowsProgress(t *testing.T) {
	v := newContainerdView(t)
	ctx := pullContext(t)
	blob := bytes.Repeat([]byte("a layer being prefetched "), 1000)
	desc := layer(blob)
	const source = "ubuntu-4321-http-server.local:5000"
	end, ok := v.tracker.BeginFrom(source, desc.Digest)
	if !ok {
		t.Fatal("BeginFrom refused")
	}
	pw, err := content.OpenWriter(ctx, v.inner, content.WithRef(IngestRef(source, desc.Digest)), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	half := len(blob) / 2
	if _, err := pw.Write(blob[:half]); err != nil {
		t.Fatal(err)
	}
	var fetched int
	errc := v.fetch(ctx, desc, blob, &fetched)
	v.waiting(ctx)

	sts, err := v.cs.ListStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := remotes.MakeRefKey(ctx, desc); len(sts) != 1 || sts[0].Ref != want || sts[0].Offset != int64(half) || sts[0].Total != desc.Size {
		t.Fatalf("containerd's ingests while its fetch waits for a prefetch at %d of %d bytes: %+v (want %s there)", half, desc.Size, sts, want)
	}

	if _, err := pw.Write(blob[half:]); err != nil {
		t.Fatal(err)
	}
	if err := pw.Commit(ctx, desc.Size, desc.Digest); err != nil {
		t.Fatal(err)
	}
	end()
	fetchDone(t, errc, &fetched, 0)
	assertNoIngests(ctx, t, v)
}
