//go:build linux

package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
)

// containerd's metadata layer forgets a snapshot at once on Remove (`ctr
// containers rm`, `ctr snapshots rm`) and only later asks the backend to
// remove it; the guard (checkRemovable) refuses that for volumes, so such a
// volume stays here, with its data, under a key containerd no longer
// knows. Adoption gives it back: a Prepare of the volume's key carrying
// LabelAdoptInherited=true takes over the existing directory instead of
// making a new one (`localds volume adopt`).
const (
	// LabelAdopt set to "true" on a volume's Prepare adopts the volume's
	// existing directory and data.
	LabelAdopt = "localds.volume/adopt"
	// LabelAdoptInherited is LabelAdopt as containerd passes it on.
	LabelAdoptInherited = "containerd.io/snapshot/" + LabelAdopt
)

func adoptRequested(labels map[string]string) bool {
	return labels[LabelAdopt] == "true" || labels[LabelAdoptInherited] == "true"
}

// adopt re-keys the volume of pl to key on parent. An existing record of
// the volume (the one containerd forgot) must be in the same containerd
// namespace and on the same image chain; it is replaced in the same
// transaction, so the directory is never without an owner. A directory
// with no record (another snapshot database made it) is claimed.
func (o *snapshotter) adopt(ctx context.Context, key, parent string, pl placement, labels map[string]string) ([]mount.Mount, error) {
	kept := map[string]string{}
	for k, v := range labels {
		if k != LabelAdopt && k != LabelAdoptInherited {
			kept[k] = v
		}
	}
	var s storage.Snapshot
	err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		old, found, err := o.findVolume(ctx, pl.vol)
		if err != nil {
			return err
		}
		dir := o.l.dir("", pl)
		if found {
			if old.Name == key {
				return fmt.Errorf("volume %s is not lost: %w", pl.vol, errdefs.ErrAlreadyExists)
			}
			oldPl, err := placementOf(old.Name, old.Kind, old.Labels)
			if err != nil {
				return err
			}
			if oldPl != pl {
				return fmt.Errorf("adopt volume %s: it lives under %s: %w", pl.vol, filepath.Dir(o.l.dir("", oldPl)), errdefs.ErrInvalidArgument)
			}
			if ns, oldNS := keyNamespace(key), keyNamespace(old.Name); ns != oldNS {
				return fmt.Errorf("adopt volume %s: it belongs to containerd namespace %q, not %q: %w", pl.vol, oldNS, ns, errdefs.ErrFailedPrecondition)
			}
			if want, have := keyName(parent), keyName(old.Parent); want != have {
				return fmt.Errorf("adopt volume %s: it was made on snapshot %s, not %s (adopt it with the image it was created from): %w", pl.vol, clip(have), clip(want), errdefs.ErrFailedPrecondition)
			}
			// Only the record goes: the directory is named by the volume,
			// not by the record's ID, and the new record takes it over.
			if _, _, err := storage.Remove(ctx, old.Name); err != nil {
				return fmt.Errorf("adopt volume %s: drop record %q: %w", pl.vol, clip(old.Name), err)
			}
		} else if _, err := os.Lstat(filepath.Join(dir, "fs")); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("adopt volume %s: no directory %s: %w", pl.vol, dir, errdefs.ErrNotFound)
			}
			return fmt.Errorf("adopt volume %s: %w", pl.vol, err)
		}
		s, err = storage.CreateSnapshot(ctx, snapshots.KindActive, key, parent, snapshots.WithLabels(kept))
		if err != nil {
			return fmt.Errorf("adopt volume %s: %w", pl.vol, err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "work"), 0o711); err != nil {
			return fmt.Errorf("adopt volume %s: %w", pl.vol, err)
		}
		// From now on this database owns it: its cleanup may remove it
		// once `localds volume rm` has removed its record.
		if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(o.instance+"\n"), 0o600); err != nil {
			return fmt.Errorf("adopt volume %s: %w", pl.vol, err)
		}
		if err := syncNew(o.fsync, filepath.Join(dir, ownerFile), dir); err != nil {
			return fmt.Errorf("adopt volume %s: %w", pl.vol, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return o.mounts(s, pl), nil
}

// findVolume returns the active snapshot that holds volume v, whatever
// containerd prefix its key has.
func (o *snapshotter) findVolume(ctx context.Context, v Volume) (snapshots.Info, bool, error) {
	var (
		found snapshots.Info
		ok    bool
	)
	err := storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind != snapshots.KindActive || ok {
			return nil
		}
		if got, isVol, err := ParseVolumeKey(info.Name); err == nil && isVol && got == v {
			found, ok = info, true
		}
		return nil
	})
	return found, ok, err
}

// keyNamespace is the containerd namespace of a backend key
// ("<ns>/<n>/<key>"), "" for a key without that prefix.
func keyNamespace(key string) string {
	if parts := strings.SplitN(key, "/", 3); len(parts) == 3 {
		return parts[0]
	}
	return ""
}

// keyName is a backend key without containerd's "<ns>/<n>/" prefix: two
// records of the same chain ID are the same layers.
func keyName(key string) string {
	if parts := strings.SplitN(key, "/", 3); len(parts) == 3 {
		return parts[2]
	}
	return key
}
