//go:build linux

package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// requestRemoval does what `localds volume rm` does before its Remove.
func requestRemoval(tb testing.TB, ctx context.Context, sn snapshots.Snapshotter, key string, at time.Time) {
	tb.Helper()
	info := snapshots.Info{Name: key, Labels: map[string]string{LabelRemoveInherited: RemoveRequest(at)}}
	if _, err := sn.Update(ctx, info, "labels."+LabelRemoveInherited); err != nil {
		tb.Fatalf("mark %s for removal: %v", key, err)
	}
}

// removeVolume removes a volume the way `localds volume rm` does.
func removeVolume(tb testing.TB, ctx context.Context, sn snapshots.Snapshotter, key string) {
	tb.Helper()
	requestRemoval(tb, ctx, sn, key, time.Now())
	if err := sn.Remove(ctx, key); err != nil {
		tb.Fatalf("remove %s: %v", key, err)
	}
}

// TestVolumeRemoveGuard: a plain Remove of a volume (what containerd's GC
// does after `ctr containers rm` or `ctr snapshots rm`) fails with
// FailedPrecondition naming `localds volume rm`, and neither it nor
// Cleanup nor a restart deletes the data; a removal request that is stale
// or malformed does not count; a fresh one does.
func TestVolumeRemoveGuard(t *testing.T) {
	sn, root, ctx := newTestSnapshotter(t)
	commitLayer(t, ctx, sn, "layer1", "", map[string]string{"hello": "image\n"})
	viaContainerd := "default/17/" + testUUID + "#1"
	novault := testUUID + "#2"
	data := map[string]string{}
	for _, k := range []string{viaContainerd, novault} {
		var opts []snapshots.Opt
		if k == novault {
			opts = append(opts, snapshots.WithLabels(map[string]string{LabelNovaultInherited: "true"}))
		}
		m, err := sn.Prepare(ctx, k, "layer1", opts...)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(upperOf(t, m), "data")
		if err := os.WriteFile(p, []byte("app data\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		data[k] = p
	}
	checkData := func(when string) {
		t.Helper()
		for k, p := range data {
			if b, err := os.ReadFile(p); err != nil || string(b) != "app data\n" {
				t.Fatalf("%s: data of %s: %q, %v", when, k, b, err)
			}
		}
	}

	for k := range data {
		err := sn.Remove(ctx, k)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "localds volume rm") {
			t.Fatalf("plain remove of volume %s: %v; want FailedPrecondition naming `localds volume rm`", k, err)
		}
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	checkData("after refused removes and Cleanup")

	// What does not count as a request: an expired one, one from the
	// future, garbage, and the label on another snapshot.
	now := time.Now()
	for _, bad := range []string{
		RemoveRequest(now.Add(-RemoveGrace - time.Minute)),
		RemoveRequest(now.Add(10 * time.Minute)),
		"yes",
	} {
		info := snapshots.Info{Name: viaContainerd, Labels: map[string]string{LabelRemoveInherited: bad}}
		if _, err := sn.Update(ctx, info, "labels."+LabelRemoveInherited); err != nil {
			t.Fatal(err)
		}
		if err := sn.Remove(ctx, viaContainerd); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("remove with request %q: %v; want FailedPrecondition", bad, err)
		}
	}
	requestRemoval(t, ctx, sn, "layer1", now) // not a volume: no effect on the others
	if err := sn.Remove(ctx, novault); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("remove of %s after marking another snapshot: %v", novault, err)
	}

	// A restart runs Cleanup again: still there.
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	sn, err := newSnapshotter(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	checkData("after a restart")

	// The way `localds volume rm` does it: the volume and its files go.
	for k, p := range data {
		removeVolume(t, ctx, sn, k)
		if _, err := os.Stat(filepath.Dir(filepath.Dir(p))); !os.IsNotExist(err) {
			t.Errorf("volume %s's directory after a requested remove: %v; want it gone", k, err)
		}
	}
	// Ordinary snapshots need no request.
	if err := sn.Remove(ctx, "layer1"); err != nil {
		t.Fatal(err)
	}
}

// TestVolumeAdopt: a volume containerd forgot (its record here kept by the
// guard under containerd's old key) is taken back under a new key with
// its data; the wrong namespace, image chain or place is refused, and a
// volume that does not exist cannot be adopted.
func TestVolumeAdopt(t *testing.T) {
	sn, _, ctx := newTestSnapshotter(t)
	commitLayer(t, ctx, sn, "default/1/sha256:aa", "", nil)
	commitLayer(t, ctx, sn, "default/2/sha256:bb", "", nil)
	forgotten := "default/17/" + testUUID + "#1"
	m, err := sn.Prepare(ctx, forgotten, "default/1/sha256:aa")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upperOf(t, m), "data"), []byte("kept\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	adopt := func(key, parent string, more map[string]string) ([]mount.Mount, error) {
		labels := map[string]string{LabelAdoptInherited: "true"}
		for k, v := range more {
			labels[k] = v
		}
		return sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
	}
	for _, c := range []struct {
		key, parent string
		labels      map[string]string
		is          func(error) bool
	}{
		{"other/30/" + testUUID + "#1", "other/3/sha256:aa", nil, errdefs.IsFailedPrecondition},
		{"default/31/" + testUUID + "#1", "default/2/sha256:bb", nil, errdefs.IsFailedPrecondition},
		{"default/32/" + testUUID + "#1", "default/1/sha256:aa", map[string]string{LabelNovaultInherited: "true"}, errdefs.IsInvalidArgument},
		{"default/33/" + testUUID + "#7", "default/1/sha256:aa", nil, errdefs.IsNotFound},
		{forgotten, "default/1/sha256:aa", nil, errdefs.IsAlreadyExists},
		{"extract-1", "default/1/sha256:aa", nil, errdefs.IsInvalidArgument},
	} {
		if _, err := adopt(c.key, c.parent, c.labels); !c.is(err) {
			t.Errorf("adopt %s on %s %v: %v", c.key, c.parent, c.labels, err)
		}
	}

	// Re-pulled image: same chain ID under a new containerd key.
	adopted := "default/40/" + testUUID + "#1"
	commitLayer(t, ctx, sn, "default/39/sha256:aa", "", nil)
	m, err = adopt(adopted, "default/39/sha256:aa", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(upperOf(t, m), "data")); err != nil || string(b) != "kept\n" {
		t.Fatalf("adopted volume's data: %q, %v", b, err)
	}
	if _, err := sn.Stat(ctx, forgotten); !errdefs.IsNotFound(err) {
		t.Errorf("old record after adoption: %v; want NotFound", err)
	}
	info, err := sn.Stat(ctx, adopted)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := info.Labels[LabelAdoptInherited]; ok {
		t.Errorf("adopt label kept on the volume: %v", info.Labels)
	}
	// The old chain lost its only child and may go; the volume stays.
	if err := sn.Remove(ctx, "default/1/sha256:aa"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(upperOf(t, m), "data")); err != nil || string(b) != "kept\n" {
		t.Fatalf("adopted volume's data after cleanup: %q, %v", b, err)
	}
	removeVolume(t, ctx, sn, adopted)
}
