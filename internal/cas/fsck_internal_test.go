package cas

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func writeBlobs(t *testing.T, root string, blobs ...string) []digest.Digest {
	t.Helper()
	ctx := context.Background()
	cs, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	for _, b := range blobs {
		d := digest.FromString(b)
		if err := content.WriteBlob(ctx, cs, b, strings.NewReader(b), ocispec.Descriptor{Size: int64(len(b)), Digest: d}); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

// eioReader fails like a disk with a bad sector.
type eioReader struct{}

func (eioReader) Read([]byte) (int, error) {
	return 0, &os.PathError{Op: "read", Path: "blob", Err: syscall.EIO}
}
func (eioReader) Close() error { return nil }

// TestFsckKeepsUnreadable: a blob that fails with EIO (on open or read) is
// reported as unreadable and never removed, even with Remove: a read error
// is the disk's, not proof that the blob is bad.
func TestFsckKeepsUnreadable(t *testing.T) {
	root := t.TempDir()
	ds := writeBlobs(t, root, "eio on read", "eio on open", "fine")
	paths := map[string]bool{}
	for _, d := range ds[:2] {
		p, _ := BlobPath(root, d)
		paths[p] = true
	}
	onRead, _ := BlobPath(root, ds[0])
	opts := FsckOptions{Remove: true, open: func(p string) (io.ReadCloser, error) {
		switch {
		case p == onRead:
			return eioReader{}, nil
		case paths[p]:
			return nil, &os.PathError{Op: "open", Path: p, Err: syscall.EIO}
		}
		return os.Open(p)
	}}
	rep, err := Check(context.Background(), root, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) != 2 || rep.Blobs != 1 {
		t.Fatalf("report %+v, want 2 unreadable, 1 good", rep)
	}
	for _, p := range rep.Bad {
		if p.Removed || p.Removable() || !strings.Contains(p.Reason, "unreadable") || !strings.Contains(p.Reason, "input/output error") {
			t.Errorf("problem %s: want unreadable, EIO named, not removed", p)
		}
	}
	for p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("fsck --remove removed unreadable %s: %v", p, err)
		}
	}
}

// TestFsckKeepsUnreadableDir: a ReadDir of blobs/sha256 that fails is
// reported; the directory and every blob in it stay.
func TestFsckKeepsUnreadableDir(t *testing.T) {
	root := t.TempDir()
	ds := writeBlobs(t, root, "a", "b")
	algDir := filepath.Join(Dir(root), blobsDir, "sha256")
	opts := FsckOptions{Remove: true, readDir: func(p string) ([]os.DirEntry, error) {
		if p == algDir {
			return nil, &os.PathError{Op: "readdirent", Path: p, Err: syscall.EIO}
		}
		return os.ReadDir(p)
	}}
	rep, err := Check(context.Background(), root, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) != 1 || rep.Bad[0].Removed || !strings.Contains(rep.Bad[0].Reason, "unreadable directory") {
		t.Fatalf("report %+v", rep)
	}
	for _, d := range ds {
		p, _ := BlobPath(root, d)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("blob %s gone after a failing ReadDir: %v", d, err)
		}
	}
}

type recordingForgetter struct {
	asked []digest.Digest
	err   error
}

func (r *recordingForgetter) Forget(_ context.Context, d digest.Digest) ([]string, error) {
	r.asked = append(r.asked, d)
	if r.err != nil {
		return nil, r.err
	}
	return []string{"default"}, nil
}

// TestFsckForgetsBeforeRemoving: a mismatched blob is forgotten (containerd's
// metadata) before it leaves the disk, and kept when it cannot be.
func TestFsckForgetsBeforeRemoving(t *testing.T) {
	for _, failing := range []bool{false, true} {
		root := t.TempDir()
		ds := writeBlobs(t, root, "good", "rotten")
		p, _ := BlobPath(root, ds[1])
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("rotXen"), 0o444); err != nil {
			t.Fatal(err)
		}
		fg := &recordingForgetter{}
		if failing {
			fg.err = errors.New("containerd: unavailable")
		}
		rep, err := Check(context.Background(), root, FsckOptions{Remove: true, Forget: fg})
		if err != nil {
			t.Fatal(err)
		}
		if len(fg.asked) != 1 || fg.asked[0] != ds[1] || len(rep.Bad) != 1 {
			t.Fatalf("failing=%v: forgetter asked %v, report %+v", failing, fg.asked, rep)
		}
		_, statErr := os.Stat(p)
		bad := rep.Bad[0]
		if failing {
			if bad.Removed || bad.RemoveErr == nil || statErr != nil {
				t.Fatalf("unforgotten blob: %s, stat %v; want kept with the reason", bad, statErr)
			}
		} else if !bad.Removed || !os.IsNotExist(statErr) || !strings.Contains(bad.String(), "forgot it in namespace default") {
			t.Fatalf("forgotten blob: %s, stat %v", bad, statErr)
		}
	}
}

// TestFsckStaleIngests: ingests untouched for IngestAge are counted and, with
// Remove, removed; a fresh one (a running write) stays.
func TestFsckStaleIngests(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	cs, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"localds-prefetch-old", "running"} {
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, bytes.NewReader(make([]byte, 100))); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	old := time.Now().Add(-2 * time.Hour)
	ingests, _ := ListIngests(root)
	var oldDir string
	for _, in := range ingests {
		if b, _ := os.ReadFile(filepath.Join(in.Dir, "ref")); string(b) == "localds-prefetch-old" {
			oldDir = in.Dir
			if err := os.Chtimes(filepath.Join(in.Dir, "data"), old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	rep, err := Check(ctx, root, FsckOptions{})
	if err != nil || rep.Ingests != 2 || len(rep.StaleIngests) != 1 || rep.StaleIngests[0].Ref != "localds-prefetch-old" || rep.StaleIngests[0].Removed {
		t.Fatalf("report %+v, %v", rep, err)
	}
	rep, err = Check(ctx, root, FsckOptions{Remove: true})
	if err != nil || len(rep.StaleIngests) != 1 || !rep.StaleIngests[0].Removed {
		t.Fatalf("report %+v, %v", rep, err)
	}
	if _, err := os.Stat(oldDir); !os.IsNotExist(err) {
		t.Fatalf("stale ingest left: %v", err)
	}
	if st, err := cs.Status(ctx, "running"); err != nil || st.Offset != 100 {
		t.Fatalf("running ingest: %+v, %v", st, err)
	}
}

// TestRemoveIngestsByRef: a dead daemon's prefetch ingests go at start,
// any other ingest (a localds pull's) stays.
func TestRemoveIngestsByRef(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	cs, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"localds-prefetch-sha256:aa", "localds-prefetch-sha256:bb", "import-1"} {
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	n, size, err := RemoveIngestsByRef(root, "localds-prefetch-")
	if err != nil || n != 2 || size != 20 {
		t.Fatalf("removed %d (%d bytes), %v; want 2 (20 bytes)", n, size, err)
	}
	if st, err := cs.Status(ctx, "import-1"); err != nil || st.Offset != 10 {
		t.Fatalf("other ingest: %+v, %v", st, err)
	}
	if _, err := cs.Status(ctx, "localds-prefetch-sha256:aa"); err == nil {
		t.Fatal("prefetch ingest still there")
	}
}
