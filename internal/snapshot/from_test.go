//go:build linux

package snapshot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/sysx"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/fstree"
)

const (
	fromVol1 = testUUID + "#1"
	fromVol2 = testUUID + "#2"
)

// fromLabels asks Prepare for a copy of volume from.
func fromLabels(from string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{LabelFromInherited: from})
}

// fillUpper writes into a volume's upper directory what an app and
// overlayfs leave there: data with owners, modes and xattrs, a symlink,
// hard links, a fifo, a whiteout (a deleted image file), an opaque
// directory (an image directory replaced) and overlay's origin mark.
func fillUpper(t *testing.T, upper string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(upper, "data/sub"), 0o755))
	must(os.Chmod(filepath.Join(upper, "data/sub"), 0o1750))
	must(os.Lchown(filepath.Join(upper, "data/sub"), 1001, 1002))
	must(os.WriteFile(filepath.Join(upper, "data/db"), []byte("rows\n"), 0o640))
	must(os.Lchown(filepath.Join(upper, "data/db"), 1234, 5678))
	must(sysx.LSetxattr(filepath.Join(upper, "data/db"), "user.app", []byte("kept"), 0))
	must(os.Link(filepath.Join(upper, "data/db"), filepath.Join(upper, "data/db.hard")))
	must(os.Link(filepath.Join(upper, "data/db"), filepath.Join(upper, "data/sub/db.hard2")))
	must(os.Symlink("../db", filepath.Join(upper, "data/sub/link")))
	must(os.Lchown(filepath.Join(upper, "data/sub/link"), 7, 8))
	must(unix.Mkfifo(filepath.Join(upper, "data/fifo"), 0o600))
	must(unix.Mknod(filepath.Join(upper, "gone"), unix.S_IFCHR, 0)) // whiteout
	must(os.Mkdir(filepath.Join(upper, "etc"), 0o755))
	must(sysx.LSetxattr(filepath.Join(upper, "etc"), "trusted.overlay.opaque", []byte("y"), 0))
	must(os.WriteFile(filepath.Join(upper, "etc/only"), []byte("the app's own etc\n"), 0o644))
	must(os.WriteFile(filepath.Join(upper, "copied-up"), []byte("changed by the app\n"), 0o600))
	must(sysx.LSetxattr(filepath.Join(upper, "copied-up"), "trusted.overlay.origin", []byte{0, 1, 2}, 0))
}

// noAtimes drops access times: reading a tree may move them.
func noAtimes(tree map[string]fstree.Node) map[string]fstree.Node {
	for p, n := range tree {
		n.Atime = 0
		tree[p] = n
	}
	return tree
}

func snapshotTree(t *testing.T, root string) map[string]fstree.Node {
	t.Helper()
	tree, err := fstree.Snapshot(root)
	if err != nil {
		t.Fatal(err)
	}
	return noAtimes(tree)
}

// TestVolumeFromCopiesUpper: a volume made --from another gets the other's
// whole writable layer as is (owners, modes, xattrs, symlinks, hard
// links, fifos, whiteouts, opaque directories) but not overlay's origin
// marks, on its own image; the source is not touched; through a mount,
// the app's deletions and replacements apply to the new image.
func TestVolumeFromCopiesUpper(t *testing.T) {
	sn, root, ctx := newTestSnapshotter(t)
	commitLayer(t, ctx, sn, "img1", "", map[string]string{"gone": "in image 1\n", "copied-up": "image 1\n", "app": "v1\n"})
	commitLayer(t, ctx, sn, "img2", "", map[string]string{"gone": "in image 2\n", "copied-up": "image 2\n", "app": "v2\n", "new-in-2": "two\n"})
	// img2's etc/ holds a file the app's opaque etc/ hides.
	m, err := sn.Prepare(ctx, "extract-etc", "img2")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(upperOf(t, m), "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upperOf(t, m), "etc/image2"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "img2-etc", "extract-etc"); err != nil {
		t.Fatal(err)
	}

	m1, err := sn.Prepare(ctx, fromVol1, "img1")
	if err != nil {
		t.Fatal(err)
	}
	upper1 := upperOf(t, m1)
	fillUpper(t, upper1)
	before := snapshotTree(t, upper1)

	m2, err := sn.Prepare(ctx, fromVol2, "img2-etc", fromLabels(fromVol1))
	if err != nil {
		t.Fatalf("prepare %s from %s: %v", fromVol2, fromVol1, err)
	}
	upper2 := upperOf(t, m2)
	if want := filepath.Join(root, "vault/volumes", fromVol2+".container/fs"); upper2 != want {
		t.Fatalf("new volume's upper is %s; want %s", upper2, want)
	}

	if d := fstree.Diff(before, snapshotTree(t, upper1), fstree.NowTimes{}); len(d) != 0 {
		t.Errorf("the source volume changed:\n%s", strings.Join(d, "\n"))
	}
	want := before
	n := want["copied-up"]
	n.Xattrs = "" // overlay's origin points into image 1's layers
	want["copied-up"] = n
	got := snapshotTree(t, upper2)
	if d := fstree.Diff(want, got, fstree.NowTimes{}); len(d) != 0 {
		t.Errorf("the copy differs from the source:\n%s", strings.Join(d, "\n"))
	}
	if len(got) != len(want) {
		t.Errorf("the copy has %d entries, the source %d", len(got), len(want))
	}
	if got["data/db.hard"].HardlinkOfFirst == "" || got["data/sub/db.hard2"].HardlinkOfFirst == "" {
		t.Errorf("hard links became copies: %+v %+v", got["data/db.hard"], got["data/sub/db.hard2"])
	}
	if info, err := sn.Stat(ctx, fromVol2); err != nil || info.Labels[LabelFromInherited] != fromVol1 {
		t.Errorf("stat %s: %+v, %v; want the from label kept as provenance", fromVol2, info.Labels, err)
	}

	// Through overlay: the app's data on image 2.
	target := t.TempDir()
	if err := mount.All(m2, target); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(target, 0)
	for p, want := range map[string]string{"app": "v2\n", "new-in-2": "two\n", "copied-up": "changed by the app\n", "data/db": "rows\n", "data/sub/link": "rows\n", "etc/only": "the app's own etc\n"} {
		if b, err := os.ReadFile(filepath.Join(target, p)); err != nil || string(b) != want {
			t.Errorf("mounted %s: %q, %v; want %q", p, b, err, want)
		}
	}
	for _, p := range []string{"gone", "etc/image2"} {
		if _, err := os.Lstat(filepath.Join(target, p)); !os.IsNotExist(err) {
			t.Errorf("mounted %s: %v; want it deleted as the app deleted it on image 1", p, err)
		}
	}
}

// TestVolumeFromRefused: what a copy must not do fails with a clear error
// and leaves no directory behind.
func TestVolumeFromRefused(t *testing.T) {
	sn, root, ctx := newTestSnapshotter(t)
	commitLayer(t, ctx, sn, "img", "", map[string]string{"a": "a"})
	if _, err := sn.Prepare(ctx, fromVol1, "img"); err != nil {
		t.Fatal(err)
	}
	novault := snapshots.WithLabels(map[string]string{LabelFromInherited: fromVol1, LabelNovaultInherited: "true"})
	cases := []struct {
		name, key, want string
		opt             snapshots.Opt
		is              func(error) bool
	}{
		{"missing source", fromVol2, "no volume", fromLabels(testUUID + "#9"), errdefs.IsNotFound},
		{"itself", fromVol1, "from itself", fromLabels(fromVol1), errdefs.IsInvalidArgument},
		{"bad source key", fromVol2, "UUID", fromLabels("../x#1"), errdefs.IsInvalidArgument},
		{"not a volume", "extract-1", "only to volume keys", fromLabels(fromVol1), errdefs.IsInvalidArgument},
		{"out of the vault", fromVol2, "must not leave", novault, errdefs.IsFailedPrecondition},
		{"other namespace", "other/3/" + fromVol2, "namespace", fromLabels(fromVol1), errdefs.IsFailedPrecondition},
		{"with adopt", fromVol2, "exclude each other", snapshots.WithLabels(map[string]string{LabelFromInherited: fromVol1, LabelAdoptInherited: "true"}), errdefs.IsInvalidArgument},
	}
	for _, c := range cases {
		_, err := sn.Prepare(ctx, c.key, "img", c.opt)
		if err == nil || !c.is(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error saying %q of the right kind", c.name, err, c.want)
		}
	}
	if _, err := sn.Prepare(ctx, fromVol2, "img"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, fromVol2, "img", fromLabels(fromVol1)); !errdefs.IsAlreadyExists(err) {
		t.Errorf("copy onto an existing volume: %v; want AlreadyExists", err)
	}
	for _, d := range []string{"vault/volumes", "novault/volumes"} {
		for _, n := range dirNames(t, filepath.Join(root, d)) {
			if n != fromVol1+".container" && n != fromVol2+".container" {
				t.Errorf("%s holds %s after refused copies", d, n)
			}
		}
	}
}

// TestVolumeFromFullDisk: a copy that runs out of space half way (a real
// ENOSPC on a small tmpfs) leaves no volume, no directory and the source
// as it was.
func TestVolumeFromFullDisk(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	ctx := logtest.WithT(context.Background(), t)
	sn, err := newSnapshotter(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	m1, err := sn.Prepare(ctx, fromVol1, "")
	if err != nil {
		t.Fatal(err)
	}
	upper1 := upperOf(t, m1)
	chunk := strings.Repeat("x", 512<<10)
	for i := range 5 { // 2.5 MiB: fits once, not twice
		if err := os.WriteFile(filepath.Join(upper1, "f"+string(rune('a'+i))), []byte(chunk), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshotTree(t, upper1)

	_, err = sn.Prepare(ctx, fromVol2, "", fromLabels(fromVol1))
	if err == nil || !strings.Contains(err.Error(), "copy the data of "+fromVol1) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("copy onto a full disk: %v; want ENOSPC from the copy", err)
	}
	if _, err := sn.Stat(ctx, fromVol2); !errdefs.IsNotFound(err) {
		t.Errorf("stat %s after the failed copy: %v; want NotFound", fromVol2, err)
	}
	if names := dirNames(t, filepath.Join(root, "vault/volumes")); len(names) != 1 || names[0] != fromVol1+".container" {
		t.Errorf("vault/volumes after the failed copy: %v; want only the source", names)
	}
	if d := fstree.Diff(before, snapshotTree(t, upper1), fstree.NowTimes{}); len(d) != 0 {
		t.Errorf("the source volume changed:\n%s", strings.Join(d, "\n"))
	}
	// With the space back, the same copy works.
	if err := os.Remove(filepath.Join(upper1, "fa")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(upper1, "fb")); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, fromVol2, "", fromLabels(fromVol1)); err != nil {
		t.Fatalf("copy after freeing space: %v", err)
	}
}

// TestVolumeFromCleanupDuringCopy: containerd's Cleanup (after every GC)
// while a copy fills its temporary directory leaves that directory alone;
// one left by a crash goes.
func TestVolumeFromCleanupDuringCopy(t *testing.T) {
	sn, root, ctx := newTestSnapshotter(t)
	vols := filepath.Join(root, "vault/volumes")
	busy, err := sn.copying.mkdirTemp(vols, volumeTempPat)
	if err != nil {
		t.Fatal(err)
	}
	crashed, err := os.MkdirTemp(vols, volumeTempPat)
	if err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("cleanup removed a directory a copy is filling: %v", err)
	}
	if _, err := os.Stat(crashed); !os.IsNotExist(err) {
		t.Errorf("cleanup left a crashed copy's directory: %v", err)
	}
	sn.copying.done(busy)
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(busy); !os.IsNotExist(err) {
		t.Errorf("cleanup left a finished copy's temporary: %v", err)
	}
}

// TestVolumeFromCrash: killed at each step of a copy, a restart leaves
// either no new volume and no directory, or (killed after it returned)
// the whole volume.
func TestVolumeFromCrash(t *testing.T) {
	requireRoot(t)
	for _, stage := range []string{crashAfterCopy, crashBeforeRename, crashAfterRename, crashAfterPrepare} {
		t.Run(stage, func(t *testing.T) {
			root := t.TempDir()
			ctx := logtest.WithT(context.Background(), t)
			sn, err := newSnapshotter(ctx, root)
			if err != nil {
				t.Fatal(err)
			}
			commitLayer(t, ctx, sn, "layer1", "", map[string]string{"a": "a"})
			m, err := sn.Prepare(ctx, fromVol1, "layer1")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(upperOf(t, m), "data"), []byte("kept\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			sn.Close()

			t.Setenv(crashEnvFrom, fromVol1)
			runCrashHelper(t, root, fromVol2, stage, false)

			sn, err = newSnapshotter(ctx, root) // the restart's cleanup
			if err != nil {
				t.Fatal(err)
			}
			defer sn.Close()
			names := dirNames(t, filepath.Join(root, "vault/volumes"))
			_, statErr := sn.Stat(ctx, fromVol2)
			if stage == crashAfterPrepare {
				b, err := os.ReadFile(filepath.Join(root, "vault/volumes", fromVol2+".container/fs/data"))
				if statErr != nil || err != nil || string(b) != "kept\n" {
					t.Fatalf("after restart: stat %v, data %q %v; want the copied volume", statErr, b, err)
				}
				return
			}
			if !errdefs.IsNotFound(statErr) || len(names) != 1 || names[0] != fromVol1+".container" {
				t.Fatalf("after restart: stat %v, vault/volumes %v; want no trace of %s", statErr, names, fromVol2)
			}
			if _, err := sn.Prepare(ctx, fromVol2, "layer1", fromLabels(fromVol1)); err != nil {
				t.Fatalf("copy again after the crash: %v", err)
			}
		})
	}
}
