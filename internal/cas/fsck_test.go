package cas_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/cas"
)

// fill writes n blobs of increasing size and returns their digests.
func fill(t *testing.T, root string, n int) []digest.Digest {
	t.Helper()
	ctx := context.Background()
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	for i := range n {
		data := bytes.Repeat([]byte{byte('a' + i)}, 1000*(i+1)+(3<<20)*(i%2)) // some > 1 buffer
		d := digest.FromBytes(data)
		if err := content.WriteBlob(ctx, cs, d.String(), bytes.NewReader(data), ocispec.Descriptor{Size: int64(len(data)), Digest: d}); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

func TestFsckClean(t *testing.T) {
	root := t.TempDir()
	ds := fill(t, root, 6)
	rep, err := cas.Fsck(context.Background(), root, false)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() || rep.Blobs != len(ds) || rep.Bytes == 0 {
		t.Fatalf("clean store: %+v", rep)
	}
	// A fresh, empty store is clean too.
	empty := t.TempDir()
	if _, err := cas.Open(context.Background(), empty); err != nil {
		t.Fatal(err)
	}
	if rep, err := cas.Fsck(context.Background(), empty, false); err != nil || !rep.Clean() || rep.Blobs != 0 {
		t.Fatalf("empty store: %+v, %v", rep, err)
	}
}

func TestFsckMissingStore(t *testing.T) {
	_, err := cas.Fsck(context.Background(), filepath.Join(t.TempDir(), "nope"), false)
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "no content store") {
		t.Fatalf("Fsck of a missing root = %v, want a clear not-found error", err)
	}
}

func TestFsckFindsAndRemoves(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	ds := fill(t, root, 4)
	blob := func(d digest.Digest) string {
		p, err := cas.BlobPath(root, d)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Corrupt one byte in the middle of a large blob (read-only on disk).
	corrupt := blob(ds[1])
	if err := os.Chmod(corrupt, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(corrupt, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, 2<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Truncate another.
	truncated := blob(ds[2])
	if err := os.Truncate(truncated, 10); err != nil {
		t.Fatal(err)
	}
	casDir := cas.Dir(root)
	stray := filepath.Join(casDir, "blobs", "sha256", "not-a-digest")
	strayTop := filepath.Join(casDir, "blobs", "README")
	unknownAlg := filepath.Join(casDir, "blobs", "md5")
	dirAsBlob := filepath.Join(casDir, "blobs", "sha256", strings.Repeat("ab", 32))
	for _, p := range []string{stray, strayTop} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{unknownAlg, dirAsBlob} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Labels of the corrupt blob must go with it.
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Update(ctx, content.Info{Digest: ds[1], Labels: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		corrupt:    "digest mismatch",
		truncated:  "digest mismatch: content (10 bytes)",
		stray:      "stray entry",
		strayTop:   "stray file",
		unknownAlg: `unknown digest algorithm "md5"`,
		dirAsBlob:  "not a regular file",
	}
	check := func(rep cas.Report, removed bool) {
		t.Helper()
		if rep.Clean() || len(rep.Bad) != len(want) || rep.Blobs != len(ds)-2 {
			t.Fatalf("report: %+v", rep)
		}
		for _, p := range rep.Bad {
			w, ok := want[p.Path]
			if !ok || !strings.Contains(p.Reason, w) || p.Removed != removed || p.RemoveErr != nil {
				t.Errorf("unexpected problem %s (want reason %q, removed=%v)", p, w, removed)
			}
		}
		for _, p := range rep.Bad {
			if p.Path == corrupt && p.Digest != ds[1] {
				t.Errorf("corrupt blob named %q, want %s", p.Digest, ds[1])
			}
		}
	}
	rep, err := cas.Fsck(ctx, root, false)
	if err != nil {
		t.Fatal(err)
	}
	check(rep, false)
	for p := range want {
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("fsck without remove removed %s: %v", p, err)
		}
	}

	rep, err = cas.Fsck(ctx, root, true)
	if err != nil {
		t.Fatal(err)
	}
	check(rep, true)
	for p := range want {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("fsck --remove left %s: %v", p, err)
		}
	}
	rep, err = cas.Fsck(ctx, root, false)
	if err != nil || !rep.Clean() || rep.Blobs != len(ds)-2 {
		t.Fatalf("after remove: %+v, %v", rep, err)
	}
	// The good blobs are untouched; the removed one is gone with its labels.
	if _, err := cs.Info(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Info(ctx, ds[1]); !errdefs.IsNotFound(err) {
		t.Fatalf("Info of removed blob = %v", err)
	}
	if _, err := os.Stat(filepath.Join(casDir, "labels", "sha256", ds[1].Encoded())); !os.IsNotExist(err) {
		t.Fatalf("labels of removed blob still there: %v", err)
	}
}

func TestFsckUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads files whatever their mode; unreadable blobs cannot be made this way")
	}
	root := t.TempDir()
	ds := fill(t, root, 1)
	p, _ := cas.BlobPath(root, ds[0])
	if err := os.Chmod(p, 0); err != nil {
		t.Fatal(err)
	}
	rep, err := cas.Fsck(context.Background(), root, false)
	if err != nil || len(rep.Bad) != 1 || !strings.Contains(rep.Bad[0].Reason, "unreadable") {
		t.Fatalf("report %+v, %v", rep, err)
	}
}

func TestFsckCancelled(t *testing.T) {
	root := t.TempDir()
	fill(t, root, 2)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep, err := cas.Fsck(ctx, root, true)
	if err == nil || !rep.Clean() {
		t.Fatalf("cancelled fsck: %+v, %v; want an error and nothing marked bad", rep, err)
	}
}
