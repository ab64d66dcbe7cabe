package cas_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/cas"
)

// TestConformance runs containerd's own content store suite directly
// against Open.
func TestConformance(t *testing.T) {
	testsuite.ContentSuite(t, "localds", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		cs, err := cas.Open(ctx, root)
		return ctx, cs, func() error { return nil }, err
	})
}

func TestOpenLayout(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hello localds")
	d := digest.FromBytes(data)
	if err := content.WriteBlob(ctx, cs, "ref1", bytes.NewReader(data), ocispec.Descriptor{Size: int64(len(data)), Digest: d}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "vault", "cas", "blobs", "sha256", d.Encoded())
	if got, err := cas.BlobPath(root, d); err != nil || got != p {
		t.Fatalf("BlobPath = %q, %v; want %q", got, err, p)
	}
	b, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(b, data) {
		t.Fatalf("blob at %s: %q, %v", p, b, err)
	}
	if st, err := os.Stat(filepath.Join(root, "vault")); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("vault dir: %v, %v; want mode 0700", st, err)
	}
	if _, err := cas.BlobPath(root, "md5:abc"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("BlobPath(md5) = %v, want invalid argument", err)
	}
	if _, err := cas.Open(ctx, ""); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Open(\"\") = %v, want invalid argument", err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cas.Open(ctx, notDir); err == nil {
		t.Fatal("Open on a regular file as root succeeded")
	}
}

// TestCommitVerifies proves what the package comment claims of containerd's
// local store: a wrong digest, a short write or an oversized write is
// refused at Commit with FailedPrecondition and never becomes a blob.
func TestCommitVerifies(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	good := digest.FromBytes(data)
	cases := []struct {
		name   string
		write  []byte
		size   int64
		expect digest.Digest
	}{
		{"wrong digest", append([]byte("X"), data[1:]...), int64(len(data)), good},
		{"short write", data[:len(data)-1], int64(len(data)), good},
		{"short write, digest only", data[:len(data)/2], 0, good},
		{"oversized write", append(data, 'x'), int64(len(data)), good},
		{"oversized write, digest only", append(data, 'x'), 0, good},
		{"right bytes, wrong size", data, int64(len(data)) + 1, good},
		{"right bytes, other algorithm digest", data, int64(len(data)), digest.SHA512.FromBytes(append([]byte("y"), data...))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			cs, err := cas.Open(ctx, root)
			if err != nil {
				t.Fatal(err)
			}
			w, err := cs.Writer(ctx, content.WithRef("bad"), content.WithDescriptor(ocispec.Descriptor{Size: tc.size, Digest: tc.expect}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(tc.write); err != nil {
				t.Fatal(err)
			}
			err = w.Commit(ctx, tc.size, tc.expect)
			w.Close()
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("Commit = %v, want failed precondition", err)
			}
			assertNoBlobs(t, ctx, cs, root)
			// The partial write stays an ingest, resumable or abortable,
			// and is never listed as content.
			if _, err := cs.Status(ctx, "bad"); err != nil {
				t.Fatalf("Status of the failed ingest: %v", err)
			}
			if err := cs.Abort(ctx, "bad"); err != nil {
				t.Fatal(err)
			}
			if rep, err := cas.Fsck(ctx, root, false); err != nil || !rep.Clean() || rep.Blobs != 0 || rep.Ingests != 0 {
				t.Fatalf("fsck after abort: %+v, %v", rep, err)
			}
		})
	}
}

// TestUncommittedInvisible: data written but not committed (the writer
// closed, as after a dropped connection) is not content.
func TestUncommittedInvisible(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(strings.Repeat("partial ", 1000))
	d := digest.FromBytes(data)
	w, err := cs.Writer(ctx, content.WithRef("part"), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data)), Digest: d}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[:100]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoBlobs(t, ctx, cs, root)
	if _, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: d}); !errdefs.IsNotFound(err) {
		t.Fatalf("ReaderAt of uncommitted = %v, want not found", err)
	}
	// A fresh store on the same root (a restarted daemon) resumes it.
	cs2, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	w, err = cs2.Writer(ctx, content.WithRef("part"), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data)), Digest: d}))
	if err != nil {
		t.Fatal(err)
	}
	st, err := w.Status()
	if err != nil || st.Offset != 100 {
		t.Fatalf("resumed status %+v, %v; want offset 100", st, err)
	}
	if _, err := w.Write(data[100:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(data)), d); err != nil {
		t.Fatal(err)
	}
	if info, err := cs2.Info(ctx, d); err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Info after resumed commit: %+v, %v", info, err)
	}
}

func TestLabelsPersist(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("labelled")
	d := digest.FromBytes(data)
	labels := map[string]string{"containerd.io/gc.root": "now", "k": "v"}
	if err := content.WriteBlob(ctx, cs, "l", bytes.NewReader(data), ocispec.Descriptor{Size: int64(len(data)), Digest: d}, content.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	cs2, err := cas.Open(ctx, root) // as after a restart
	if err != nil {
		t.Fatal(err)
	}
	info, err := cs2.Info(ctx, d)
	if err != nil || info.Labels["k"] != "v" || len(info.Labels) != 2 {
		t.Fatalf("labels after reopen: %+v, %v", info.Labels, err)
	}
	if _, err := cs2.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"k": ""}}, "labels.k"); err != nil {
		t.Fatal(err)
	}
	if info, _ := cs2.Info(ctx, d); len(info.Labels) != 1 {
		t.Fatalf("labels after removing k: %+v", info.Labels)
	}
	if err := cs2.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := cs2.Delete(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("second Delete = %v, want not found", err)
	}
	// Re-adding the blob must not resurrect the old labels.
	if err := content.WriteBlob(ctx, cs2, "l2", bytes.NewReader(data), ocispec.Descriptor{Size: int64(len(data)), Digest: d}); err != nil {
		t.Fatal(err)
	}
	if info, err := cs2.Info(ctx, d); err != nil || len(info.Labels) != 0 {
		t.Fatalf("labels of re-added blob: %+v, %v", info.Labels, err)
	}
}

// assertNoBlobs checks both the API and the disk: nothing under blobs/.
func assertNoBlobs(t *testing.T, ctx context.Context, cs content.Store, root string) {
	t.Helper()
	n := 0
	if err := cs.Walk(ctx, func(content.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("Walk lists %d blobs, want none", n)
	}
	err := filepath.WalkDir(filepath.Join(cas.Dir(root), "blobs"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			t.Errorf("file under blobs/: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
