//go:build linux

package snapshot

import (
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// layout names every path of the snapshotter. Paths come from the root,
// from the metastore's numeric IDs and from parsed volumes only.
//
//	<root>/vault/snapshots/metadata.db          containerd's bolt metastore
//	<root>/vault/snapshots/instance             identity of that database
//	<root>/vault/snapshots/snapshots/<id>/fs    layers, unpack and other keys
//	<root>/vault/snapshots/snapshots/<id>/work
//	<root>/vault/volumes/<uuid>#<gen>.container/{fs,work,owner}
//	<root>/novault/volumes/<uuid>#<gen>.container/{fs,work,owner}
type layout struct {
	root string
}

func (l layout) snapshotsRoot() string { return filepath.Join(l.root, "vault", "snapshots") }
func (l layout) metadataDB() string    { return filepath.Join(l.snapshotsRoot(), "metadata.db") }
func (l layout) instanceFile() string  { return filepath.Join(l.snapshotsRoot(), "instance") }
func (l layout) snapshotDirs() string  { return filepath.Join(l.snapshotsRoot(), "snapshots") }

// volumes is the directory holding the volumes of one kind.
func (l layout) volumes(novault bool) string {
	if novault {
		return filepath.Join(l.root, "novault", "volumes")
	}
	return filepath.Join(l.root, "vault", "volumes")
}

// dir is the directory of snapshot id placed at pl.
func (l layout) dir(id string, pl placement) string {
	if pl.volume {
		return filepath.Join(l.volumes(pl.novault), pl.vol.DirName())
	}
	return filepath.Join(l.snapshotDirs(), id)
}

func (l layout) upper(id string, pl placement) string { return filepath.Join(l.dir(id, pl), "fs") }
func (l layout) work(id string, pl placement) string  { return filepath.Join(l.dir(id, pl), "work") }

// placement is where a snapshot's directories live. It is comparable, so
// Update can tell whether a change of labels would move a volume.
type placement struct {
	volume  bool   // false: an ordinary snapshot under snapshots/<id>
	vol     Volume // set when volume
	novault bool
}

// VolumeDir returns the directory of volume v under root, where its
// writable fs/ and work/ live.
func VolumeDir(root string, v Volume, novault bool) string {
	return layout{root: root}.dir("", placement{volume: true, vol: v, novault: novault})
}

// placementOf decides where the snapshot key of kind with labels lives,
// and refuses what does not fit the rules: a malformed volume key, a
// volume key on anything but an active snapshot, a novault label on a
// snapshot that is not a volume or with a value other than true/false.
func placementOf(key string, kind snapshots.Kind, labels map[string]string) (placement, error) {
	if err := checkKey("key", key); err != nil {
		return placement{}, err
	}
	v, isVol, err := ParseVolumeKey(key)
	if err != nil {
		return placement{}, err
	}
	novault, err := NovaultFromLabels(labels)
	if err != nil {
		return placement{}, fmt.Errorf("snapshot %q: %w", clip(key), err)
	}
	if !isVol {
		if novault {
			return placement{}, fmt.Errorf("snapshot %q: label %s=true applies only to volume keys (<uuid>#<generation>): %w", clip(key), LabelNovault, errdefs.ErrInvalidArgument)
		}
		return placement{}, nil
	}
	if kind != snapshots.KindActive {
		return placement{}, fmt.Errorf("snapshot %q: a volume key names an active snapshot (Prepare), not a %s one: %w", clip(key), kind, errdefs.ErrInvalidArgument)
	}
	return placement{volume: true, vol: v, novault: novault}, nil
}

// NovaultFromLabels reads the novault switch from either of its labels
// (LabelNovault, LabelNovaultInherited); both absent means vault.
func NovaultFromLabels(labels map[string]string) (bool, error) {
	var (
		novault, seen bool
	)
	for _, k := range []string{LabelNovault, LabelNovaultInherited} {
		v, ok := labels[k]
		if !ok {
			continue
		}
		var b bool
		switch v {
		case "true":
			b = true
		case "false":
		default:
			return false, fmt.Errorf("label %s=%q: want true or false: %w", k, clip(v), errdefs.ErrInvalidArgument)
		}
		if seen && b != novault {
			return false, fmt.Errorf("labels %s and %s disagree: %w", LabelNovault, LabelNovaultInherited, errdefs.ErrInvalidArgument)
		}
		novault, seen = b, true
	}
	return novault, nil
}
