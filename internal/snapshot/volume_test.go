//go:build linux

package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
)

// newTestSnapshotter opens a snapshotter in a fresh root and closes it at
// the end of the test.
func newTestSnapshotter(t *testing.T, opts ...Opt) (*snapshotter, string, context.Context) {
	t.Helper()
	requireRoot(t)
	root := t.TempDir()
	ctx := logtest.WithT(context.Background(), t)
	sn, err := newSnapshotter(ctx, root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn, root, ctx
}

// commitLayer makes a committed snapshot name (parent parent) holding
// files, written straight into its directory: no mount needed.
func commitLayer(t *testing.T, ctx context.Context, sn *snapshotter, name, parent string, files map[string]string) {
	t.Helper()
	key := "extract-" + name
	mounts, err := sn.Prepare(ctx, key, parent)
	if err != nil {
		t.Fatal(err)
	}
	upper := upperOf(t, mounts)
	for p, data := range files {
		if err := os.WriteFile(filepath.Join(upper, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := sn.Commit(ctx, name, key); err != nil {
		t.Fatal(err)
	}
}

// upperOf returns the writable directory of an active snapshot's mounts.
func upperOf(t *testing.T, mounts []mount.Mount) string {
	t.Helper()
	if len(mounts) != 1 {
		t.Fatalf("want one mount, got %+v", mounts)
	}
	m := mounts[0]
	if m.Type == "bind" {
		return m.Source
	}
	for _, o := range m.Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			return v
		}
	}
	t.Fatalf("no upperdir in %+v", m)
	return ""
}

func TestVolumePlacementOnDisk(t *testing.T) {
	sn, root, ctx := newTestSnapshotter(t)
	commitLayer(t, ctx, sn, "layer1", "", map[string]string{"hello": "from the image\n"})

	vault := testUUID + "#1"
	novault := testUUID + "#2"
	viaContainerd := "default/17/6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c11#1"
	for _, c := range []struct {
		key     string
		labels  map[string]string
		wantDir string
	}{
		{vault, nil, filepath.Join(root, "vault/volumes", vault+".container")},
		{novault, map[string]string{LabelNovault: "true"}, filepath.Join(root, "novault/volumes", novault+".container")},
		{viaContainerd, map[string]string{LabelNovaultInherited: "true"}, filepath.Join(root, "novault/volumes/6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c11#1.container")},
	} {
		mounts, err := sn.Prepare(ctx, c.key, "layer1", snapshots.WithLabels(c.labels))
		if err != nil {
			t.Fatalf("prepare %s: %v", c.key, err)
		}
		if got := upperOf(t, mounts); got != filepath.Join(c.wantDir, "fs") {
			t.Errorf("%s: upperdir %s, want %s/fs", c.key, got, c.wantDir)
		}
		opts := strings.Join(mounts[0].Options, ",")
		if !strings.Contains(opts, "workdir="+filepath.Join(c.wantDir, "work")) || !strings.Contains(opts, "lowerdir="+filepath.Join(root, "vault/snapshots/snapshots")) {
			t.Errorf("%s: mount options %s", c.key, opts)
		}
		for _, sub := range []string{"fs", "work", ownerFile} {
			if _, err := os.Stat(filepath.Join(c.wantDir, sub)); err != nil {
				t.Errorf("%s: %v", c.key, err)
			}
		}
	}

	// Usage measures the volume's own writes.
	if err := os.WriteFile(filepath.Join(root, "vault/volumes", vault+".container/fs/data"), make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := sn.Usage(ctx, vault)
	if err != nil || u.Size < 64<<10 {
		t.Errorf("Usage(%s) = %+v, %v; want at least 64 KiB", vault, u, err)
	}

	// Preparing a key twice, or a second namespace's key for the same
	// volume directory, is refused and leaves the first untouched.
	if _, err := sn.Prepare(ctx, vault, "layer1"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second prepare of %s: %v; want AlreadyExists", vault, err)
	}
	if _, err := sn.Prepare(ctx, "other/3/"+vault, "layer1"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("prepare of other/3/%s: %v; want AlreadyExists (directory taken)", vault, err)
	}
	if _, err := os.Stat(filepath.Join(root, "vault/volumes", vault+".container/fs/data")); err != nil {
		t.Errorf("first volume damaged: %v", err)
	}

	// A volume's place is fixed; volumes are not committed; volume keys
	// are for active snapshots only.
	if _, err := sn.Update(ctx, snapshots.Info{Name: vault, Labels: map[string]string{LabelNovault: "true"}}, "labels."+LabelNovault); !errdefs.IsInvalidArgument(err) {
		t.Errorf("moving %s to novault by Update: %v; want InvalidArgument", vault, err)
	}
	if _, err := sn.Update(ctx, snapshots.Info{Name: vault, Labels: map[string]string{LabelImage: "ds.local/app:1"}}, "labels."+LabelImage); err != nil {
		t.Errorf("labelling %s: %v", vault, err)
	}
	if err := sn.Commit(ctx, "committed-volume", vault); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("commit of %s: %v; want FailedPrecondition", vault, err)
	}
	if _, err := sn.View(ctx, testUUID+"#9", "layer1"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("view with a volume key: %v; want InvalidArgument", err)
	}
	if err := sn.Commit(ctx, testUUID+"#9", "extract-x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("commit to a volume name: %v; want InvalidArgument", err)
	}

	// The layer has dependants: refused. The volumes go, with their dirs.
	if err := sn.Remove(ctx, "layer1"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("remove of a layer with dependants: %v; want FailedPrecondition", err)
	}
	for _, k := range []string{vault, novault, viaContainerd} {
		removeVolume(t, ctx, sn, k)
	}
	for _, d := range []string{"vault/volumes", "novault/volumes"} {
		if names, _ := readDirNames(filepath.Join(root, d)); len(names) != 0 {
			t.Errorf("%s not empty after removing every volume: %v", d, names)
		}
	}
	if err := sn.Remove(ctx, "layer1"); err != nil {
		t.Fatal(err)
	}
	if names, _ := readDirNames(filepath.Join(root, "vault/snapshots/snapshots")); len(names) != 0 {
		t.Errorf("snapshots/ not empty after removing everything: %v", names)
	}
}

func TestHostileKeysRefused(t *testing.T) {
	sn, root, ctx := newTestSnapshotter(t)
	commitLayer(t, ctx, sn, "layer1", "", map[string]string{"a": "a"})
	for _, k := range []string{
		"../x#1", testUUID + "#-1", testUUID + "#1/..", strings.ToUpper(testUUID) + "#1",
		testUUID + "#99999999999", "default/1/../" + testUUID + "#1", "",
	} {
		if _, err := sn.Prepare(ctx, k, "layer1"); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Prepare(%q): %v; want InvalidArgument", k, err)
		}
	}
	if _, err := sn.Prepare(ctx, "sha256:abc", "layer1", snapshots.WithLabels(map[string]string{LabelNovault: "true"})); !errdefs.IsInvalidArgument(err) {
		t.Errorf("novault on an ordinary key: %v; want InvalidArgument", err)
	}
	// Keys that are not volumes may be anything; they never reach a path.
	for _, k := range []string{"../../../../etc", "/etc/passwd", "a/../../b", "..", "x\x00y"} {
		mounts, err := sn.Prepare(ctx, k, "layer1")
		if err != nil {
			t.Errorf("Prepare(%q): %v", k, err)
			continue
		}
		if up := upperOf(t, mounts); !strings.HasPrefix(up, filepath.Join(root, "vault/snapshots/snapshots")+"/") {
			t.Errorf("Prepare(%q): upper %s outside snapshots/", k, up)
		}
	}
	for _, d := range []string{"vault/volumes", "novault/volumes"} {
		if names, _ := readDirNames(filepath.Join(root, d)); len(names) != 0 {
			t.Errorf("%s: refused keys left %v", d, names)
		}
	}
}
