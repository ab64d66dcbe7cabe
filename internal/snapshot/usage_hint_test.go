//go:build linux

package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/continuity/fs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/differ"
)

// countingHints counts the usages the snapshotter took from the hints.
type countingHints struct {
	*differ.UsageHints
	taken int
}

func (c *countingHints) TakeUsage(dir string) (snapshots.Usage, bool) {
	u, ok := c.UsageHints.TakeUsage(dir)
	if ok {
		c.taken++
	}
	return u, ok
}

// usageLayer is a tar with what makes usage counting hard: nested
// directories, files of several sizes (sparse tails, more than one
// block), a hard link (one inode, counted once), a symlink, a big
// directory.
func usageLayer(t *testing.T, name string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.ModTime = time.Unix(1700000000, 0)
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: name + "/a/b/", Typeflag: tar.TypeDir, Mode: 0o700}, nil) // a/ implicit
	for i, n := range []int{0, 1, 4095, 4097, 70000} {
		add(&tar.Header{Name: name + "/a/b/f" + strings.Repeat("x", i), Typeflag: tar.TypeReg, Mode: 0o644}, bytes.Repeat([]byte{'z'}, n))
	}
	add(&tar.Header{Name: name + "/hard", Typeflag: tar.TypeLink, Linkname: name + "/a/b/fxxxx"}, nil)
	add(&tar.Header{Name: name + "/sym", Typeflag: tar.TypeSymlink, Linkname: "a/b"}, nil)
	for i := range 300 {
		add(&tar.Header{Name: name + "/many/" + strings.Repeat("n", 40) + string(rune('a'+i%26)) + string(rune('a'+i/26)), Typeflag: tar.TypeReg, Mode: 0o600}, []byte("x"))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestCommitTakesStagedUsage: a layer the diff service moved onto the
// snapshot from the staging is committed with the usage the extraction
// counted, without a walk, and that usage is what a walk reports; a
// snapshot whose upper directory changed after the move is walked.
func TestCommitTakesStagedUsage(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	root := t.TempDir()
	hints := &countingHints{UsageHints: differ.NewUsageHints()}
	sn, err := New(root, WithUsageHints(hints))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	store, err := local.NewStore(filepath.Join(root, "cas"))
	if err != nil {
		t.Fatal(err)
	}
	staging, err := differ.NewStaging(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer staging.Close()
	var taken []bool
	applier := differ.New(store, differ.WithStaging(staging, func(ok bool) { taken = append(taken, ok) }), differ.WithUsageHints(hints.UsageHints))

	parent := ""
	for i, tc := range []struct {
		name   string
		change func(upper string) // between Apply and Commit
	}{
		{name: "first"},  // no parent: a bind mount
		{name: "second"}, // an overlay upperdir
		{name: "changed", change: func(upper string) {
			if err := os.WriteFile(filepath.Join(upper, "late"), bytes.Repeat([]byte{'l'}, 9000), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		blob := usageLayer(t, tc.name)
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		if err := content.WriteBlob(ctx, store, desc.Digest.String(), bytes.NewReader(blob), desc); err != nil {
			t.Fatal(err)
		}
		st := staging.Begin(ctx, desc)
		if st == nil {
			t.Fatal("layer not staged")
		}
		if _, err := st.Copy(&bytes.Buffer{}, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
		st.Commit(desc.Digest)

		key := "extract-" + tc.name
		mounts, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := applier.Apply(ctx, desc, mounts); err != nil {
			t.Fatal(err)
		}
		if len(taken) != i+1 || !taken[i] {
			t.Fatalf("%s: the staged tree was not taken (%v)", tc.name, taken)
		}
		upper := mountUpper(t, mounts)
		if tc.change != nil {
			tc.change(upper)
		}
		before := hints.taken
		if err := sn.Commit(ctx, tc.name, key); err != nil {
			t.Fatal(err)
		}
		if used, want := hints.taken > before, tc.change == nil; used != want {
			t.Errorf("%s: Commit took the staged usage: %v, want %v", tc.name, used, want)
		}
		got, err := sn.Usage(ctx, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		walked, err := fs.DiskUsage(ctx, upper)
		if err != nil {
			t.Fatal(err)
		}
		if got != snapshots.Usage(walked) {
			t.Errorf("%s: committed usage %+v, a walk of the tree says %+v", tc.name, got, walked)
		}
		parent = tc.name
	}
}

func mountUpper(t testing.TB, mounts []mount.Mount) string {
	t.Helper()
	m := mounts[0]
	if m.Type == "bind" {
		return m.Source
	}
	for _, o := range m.Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			return v
		}
	}
	t.Fatalf("no upper directory in %+v", mounts)
	return ""
}
