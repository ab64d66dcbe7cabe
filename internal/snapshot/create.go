//go:build linux

package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Names inside a snapshot's or volume's directory and of temporaries.
const (
	ownerFile       = "owner" // in a volume dir: the instance that made it
	snapshotTempPat = "new-"  // temporaries in snapshots/ (overlay's name)
	volumeTempPat   = ".new-" // temporaries in volumes/
	volumeDirSuffix = ".container"
)

// Crash points a test can stop a prepare at (config.crash).
const (
	crashBeforeRename = "before-rename" // directory built, metadata not yet committed
	crashAfterRename  = "after-rename"  // directory in place, metadata not yet committed
	crashAfterCopy    = "after-copy"    // a --from volume's data copied, nothing recorded
)

func (o *snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	pl, err := placementOf(key, kind, base.Labels)
	if err != nil {
		return nil, err
	}
	// Remapping needs containerd's internal userns package; say so rather
	// than hand out a root filesystem with the wrong owners.
	if _, ok := base.Labels[snapshots.LabelSnapshotUIDMapping]; ok {
		return nil, fmt.Errorf("snapshot %q: user namespace remapping labels are not supported by localds: %w", clip(key), errdefs.ErrNotImplemented)
	}
	if _, ok := base.Labels[snapshots.LabelSnapshotGIDMapping]; ok {
		return nil, fmt.Errorf("snapshot %q: user namespace remapping labels are not supported by localds: %w", clip(key), errdefs.ErrNotImplemented)
	}
	if adoptRequested(base.Labels) {
		if !pl.volume {
			return nil, fmt.Errorf("snapshot %q: label %s applies only to volume keys (<uuid>#<generation>): %w", clip(key), LabelAdopt, errdefs.ErrInvalidArgument)
		}
		if _, from, _ := fromLabel(base.Labels); from {
			return nil, fmt.Errorf("snapshot %q: labels %s and %s exclude each other: %w", clip(key), LabelAdopt, LabelFrom, errdefs.ErrInvalidArgument)
		}
		return o.adopt(ctx, key, parent, pl, base.Labels)
	}
	if from, ok, err := fromLabel(base.Labels); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", clip(key), err)
	} else if ok {
		if !pl.volume {
			return nil, fmt.Errorf("snapshot %q: label %s applies only to volume keys (<uuid>#<generation>): %w", clip(key), LabelFrom, errdefs.ErrInvalidArgument)
		}
		return o.createFrom(ctx, key, parent, pl, from, opts)
	}

	var (
		s         storage.Snapshot
		tmp, dest string // dest is set once the directory is ours at its place
	)
	defer func() {
		if err == nil {
			return
		}
		for _, d := range []string{tmp, dest} {
			if d == "" {
				continue
			}
			if rerr := os.RemoveAll(d); rerr != nil {
				log.G(ctx).WithError(rerr).WithField("path", d).Error("cannot remove the directory of a failed prepare; the next cleanup will")
			}
		}
	}()

	// Everything happens inside one write transaction, so no other
	// prepare, remove or cleanup of this snapshotter runs in between.
	err = o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		tmp, err = o.prepareDirectory(kind, pl)
		if err != nil {
			return err
		}
		s, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("create snapshot %q: %w", clip(key), err)
		}
		// As overlay does: the new upper directory takes the owner of the
		// parent's root, so a non-root image keeps a writable root.
		if len(s.ParentIDs) > 0 {
			st, err := os.Stat(o.l.upper(s.ParentIDs[0], placement{}))
			if err != nil {
				return fmt.Errorf("stat parent of %q: %w", clip(key), err)
			}
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				if err := os.Lchown(filepath.Join(tmp, "fs"), int(sys.Uid), int(sys.Gid)); err != nil {
					return fmt.Errorf("chown new snapshot: %w", err)
				}
			}
		}
		target := o.l.dir(s.ID, pl)
		if err := o.placeNew(pl, tmp, target); err != nil {
			return fmt.Errorf("move new snapshot into place: %w", err)
		}
		tmp, dest = "", target
		// A volume's move is made durable before its metadata commits:
		// its directory outlives any crash (cleanup must find it where the
		// metadata says). A layer's is not fsynced: containerd calls
		// Prepare inside its own metadata write transaction, so the fsync
		// would hold containerd's lock, and it would protect nothing, as
		// the layer's files are durable only if the unpack asks for it
		// (sync_fs: the apply's syncfs then carries the rename to disk too).
		if pl.volume {
			if err := o.fsync(filepath.Dir(target)); err != nil {
				return fmt.Errorf("move new snapshot into place: %w", err)
			}
		}
		o.crashPoint(crashAfterRename)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return o.mounts(s, pl), nil
}

func (o *snapshotter) crashPoint(stage string) {
	if o.crash != nil {
		o.crash(stage)
	}
}

// prepareDirectory builds a snapshot's directory under a temporary name
// next to where it will live, so a rename puts it in place atomically.
func (o *snapshotter) prepareDirectory(kind snapshots.Kind, pl placement) (string, error) {
	parent, pattern := o.l.snapshotDirs(), snapshotTempPat
	if pl.volume {
		parent, pattern = o.l.volumes(pl.novault), volumeTempPat
	}
	td, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return "", fmt.Errorf("create snapshot directory: %w", err)
	}
	if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
		return td, fmt.Errorf("create snapshot directory: %w", err)
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(td, "work"), 0o711); err != nil {
			return td, fmt.Errorf("create snapshot directory: %w", err)
		}
	}
	if pl.volume {
		if err := os.WriteFile(filepath.Join(td, ownerFile), []byte(o.instance+"\n"), 0o600); err != nil {
			return td, fmt.Errorf("create volume directory: %w", err)
		}
		// The owner file and its entry reach the disk before the
		// directory is renamed into place.
		if err := syncNew(o.fsync, filepath.Join(td, ownerFile), td); err != nil {
			return td, fmt.Errorf("create volume directory: %w", err)
		}
	}
	return td, nil
}

// mounts are overlay's: a bind mount without parents, else an overlay
// whose upper and work directories are the snapshot's (a volume's live in
// its volume directory) and whose lower ones are the committed parents.
func (o *snapshotter) mounts(s storage.Snapshot, pl placement) []mount.Mount {
	if len(s.ParentIDs) == 0 {
		opts := []string{"rw", "rbind"}
		if s.Kind == snapshots.KindView {
			opts = []string{"ro", "rbind", "nodev"}
		}
		return []mount.Mount{{
			Source:  o.l.upper(s.ID, pl),
			Type:    "bind",
			Options: opts,
		}}
	}
	// nodev: containerd's applier creates the device nodes a layer
	// carries, but none can be opened through a localds mount, so an image
	// cannot smuggle a host device into a container's root (runc mounts
	// the container's /dev separately). A read-write bind mount (a
	// snapshot without parents, never an image's root) cannot take it:
	// the kernel ignores flags on a plain bind.
	options := []string{"nodev"}
	if s.Kind == snapshots.KindActive {
		options = append(options,
			"workdir="+o.l.work(s.ID, pl),
			"upperdir="+o.l.upper(s.ID, pl),
		)
	} else if len(s.ParentIDs) == 1 {
		return []mount.Mount{{
			Source:  o.l.upper(s.ParentIDs[0], placement{}),
			Type:    "bind",
			Options: []string{"ro", "rbind", "nodev"},
		}}
	}
	lower := make([]string, len(s.ParentIDs))
	for i, id := range s.ParentIDs {
		lower[i] = o.l.upper(id, placement{}) // parents are committed: never volumes
	}
	options = append(options, "lowerdir="+strings.Join(lower, ":"))
	options = append(options, o.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

// loadInstance returns the identity of the metadata database, making a new
// one when the database is new (or the file is missing).
func loadInstance(path string, fresh bool, fsync func(string) error) (string, error) {
	if !fresh {
		b, err := os.ReadFile(path)
		if err == nil {
			if id := strings.TrimSpace(string(b)); isHex(id, 32) {
				return id, nil
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("snapshotter instance: %w", err)
		}
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("snapshotter instance: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("snapshotter instance: %w", err)
	}
	if err := fsync(tmp); err != nil {
		return "", fmt.Errorf("snapshotter instance: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("snapshotter instance: %w", err)
	}
	if err := fsync(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("snapshotter instance: %w", err)
	}
	return id, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// placeNew renames the prepared directory tmp to target. For a volume it
// first refuses a directory already there: rename would silently replace
// an empty one, and a volume directory already there is another
// namespace's volume of the same key or the leftover of a crash, never
// to be taken over.
func (o *snapshotter) placeNew(pl placement, tmp, target string) error {
	if pl.volume {
		if _, err := os.Lstat(target); err == nil {
			return fmt.Errorf("volume %s: directory %s already exists: %w", pl.vol, target, errdefs.ErrAlreadyExists)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("volume %s: %w", pl.vol, err)
		}
	}
	o.crashPoint(crashBeforeRename)
	return os.Rename(tmp, target)
}
