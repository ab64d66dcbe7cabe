//go:build linux

package snapshot

import (
	"context"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// An app's upgrade is a new generation of its volume on the new image
// that carries the old generation's data: a Prepare of the new volume key
// with LabelFromInherited=<old key> copies the old volume's whole writable
// layer (its overlay upper directory, as is) into the new one before the
// new volume exists (`localds volume create --from`). The old volume is
// only read, so rolling back is running it again.
//
// As is means: files, directories, symlinks, hard links, device nodes,
// owners, modes, times and extended attributes, and overlay's own marks,
// so a file the app deleted from the old image (a whiteout) is deleted
// from the new image too, and a directory it replaced (opaque) hides the
// new image's directory of that name. Only overlay's origin attributes,
// which point at inodes of the old image's layers, are left out.
const (
	// LabelFrom names the volume (<uuid>#<generation>) whose data a new
	// volume starts with.
	LabelFrom = "localds.volume/from"
	// LabelFromInherited is LabelFrom as containerd passes it on.
	LabelFromInherited = "containerd.io/snapshot/" + LabelFrom
)

// overlayOrigin are the attributes overlayfs records on a copied-up file
// to find its lower inode; on another image they would point elsewhere.
var overlayOrigin = []string{"trusted.overlay.origin", "user.overlay.origin"}

// fromLabel returns the volume a Prepare asks to copy from, if any.
func fromLabel(labels map[string]string) (Volume, bool, error) {
	var (
		v    Volume
		seen bool
	)
	for _, k := range []string{LabelFrom, LabelFromInherited} {
		val, ok := labels[k]
		if !ok {
			continue
		}
		got, err := ParseVolume(val)
		if err != nil {
			return Volume{}, false, fmt.Errorf("label %s: %w", k, err)
		}
		if seen && got != v {
			return Volume{}, false, fmt.Errorf("labels %s and %s disagree: %w", LabelFrom, LabelFromInherited, errdefs.ErrInvalidArgument)
		}
		v, seen = got, true
	}
	return v, seen, nil
}

// inflight names the temporary volume directories a copy is filling
// outside a transaction, so that Cleanup (containerd calls it after every
// garbage collection) leaves them alone. After a crash none is in flight
// and Cleanup removes what is left.
type inflight struct {
	mu    sync.Mutex
	names map[string]bool
}

// mkdirTemp makes a temporary directory in dir and marks it in flight in
// one step, so no Cleanup can list it unmarked.
func (f *inflight) mkdirTemp(dir, pattern string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	td, err := os.MkdirTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	if f.names == nil {
		f.names = map[string]bool{}
	}
	f.names[td] = true
	return td, nil
}

func (f *inflight) done(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.names, path)
}

func (f *inflight) has(path string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.names[path]
}

// createFrom makes volume key on parent holding a copy of volume from's
// writable layer. The copy runs outside any transaction (it may take a
// while; other snapshot calls go on) into a temporary directory that
// becomes the volume only once complete and synced, in the transaction
// that records it: a failed or interrupted copy leaves no volume.
func (o *snapshotter) createFrom(ctx context.Context, key, parent string, pl placement, from Volume, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	if from == pl.vol {
		return nil, fmt.Errorf("volume %s: cannot be made from itself: %w", pl.vol, errdefs.ErrInvalidArgument)
	}
	src, srcPl, err := o.copySource(ctx, key, pl, from)
	if err != nil {
		return nil, err
	}

	tmp, err := o.copying.mkdirTemp(o.l.volumes(pl.novault), volumeTempPat)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", pl.vol, err)
	}
	var (
		dest   string // set once the directory is in place
		copied = tmp  // the in-flight name, kept when tmp is cleared
	)
	defer func() {
		if err != nil {
			for _, d := range []string{tmp, dest} {
				if d == "" {
					continue
				}
				if rerr := os.RemoveAll(d); rerr != nil {
					log.G(ctx).WithError(rerr).WithField("path", d).Error("cannot remove the directory of a failed copy; the next cleanup will")
				}
			}
		}
		o.copying.done(copied)
	}()
	if err := o.fillVolumeDir(tmp, o.l.upper("", srcPl)); err != nil {
		return nil, fmt.Errorf("volume %s: copy the data of %s: %w", pl.vol, from, err)
	}
	o.crashPoint(crashAfterCopy)

	var s storage.Snapshot
	err = o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		// The source must be the one copied: removed and made again
		// meanwhile, the copy may be of neither.
		now, found, err := o.findVolume(ctx, from)
		if err != nil {
			return err
		}
		if !found || now.Name != src.Name || !now.Created.Equal(src.Created) {
			return fmt.Errorf("volume %s: %s was removed or replaced while it was copied: %w", pl.vol, from, errdefs.ErrAborted)
		}
		s, err = storage.CreateSnapshot(ctx, snapshots.KindActive, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("create snapshot %q: %w", clip(key), err)
		}
		target := o.l.dir(s.ID, pl)
		if err := o.placeNew(pl, tmp, target); err != nil {
			return fmt.Errorf("move new volume into place: %w", err)
		}
		dest = target
		if err := o.fsync(filepath.Dir(target)); err != nil {
			return fmt.Errorf("move new volume into place: %w", err)
		}
		o.crashPoint(crashAfterRename)
		return nil
	})
	if err != nil {
		return nil, err
	}
	tmp = "" // renamed: nothing to remove
	return o.mounts(s, pl), nil
}

// copySource finds the volume to copy from and checks the copy is allowed:
// the same containerd namespace, not out of the vault, key still free.
func (o *snapshotter) copySource(ctx context.Context, key string, pl placement, from Volume) (src snapshots.Info, srcPl placement, err error) {
	err = o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		info, found, err := o.findVolume(ctx, from)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("volume %s: no volume %s to copy from: %w", pl.vol, from, errdefs.ErrNotFound)
		}
		if ns, srcNS := keyNamespace(key), keyNamespace(info.Name); ns != srcNS {
			return fmt.Errorf("volume %s: %s belongs to containerd namespace %q, not %q: %w", pl.vol, from, srcNS, ns, errdefs.ErrFailedPrecondition)
		}
		if srcPl, err = placementOf(info.Name, info.Kind, info.Labels); err != nil {
			return err
		}
		if !srcPl.novault && pl.novault {
			return fmt.Errorf("volume %s: %s is in the vault and its data must not leave it (make the new volume without novault): %w", pl.vol, from, errdefs.ErrFailedPrecondition)
		}
		if _, _, _, err := storage.GetInfo(ctx, key); err == nil {
			return fmt.Errorf("snapshot %q: %w", clip(key), errdefs.ErrAlreadyExists)
		} else if !errdefs.IsNotFound(err) {
			return err
		}
		src = info
		return nil
	})
	return src, srcPl, err
}

// fillVolumeDir lays out a volume directory at tmp whose fs/ is a copy of
// srcUpper, and syncs its file system so the copy is on disk before the
// volume is recorded.
func (o *snapshotter) fillVolumeDir(tmp, srcUpper string) error {
	dst := filepath.Join(tmp, "fs")
	if err := fs.CopyDir(dst, srcUpper, fs.WithXAttrExclude(overlayOrigin...)); err != nil {
		return err
	}
	if err := copyDirTimes(dst, srcUpper); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(tmp, "work"), 0o711); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ownerFile), []byte(o.instance+"\n"), 0o600); err != nil {
		return err
	}
	return syncFS(tmp)
}

// copyDirTimes gives every directory under dst the times of its source:
// fs.CopyDir sets them before it fills the directory, which moves them.
func copyDirTimes(dst, src string) error {
	return filepath.WalkDir(src, func(p string, d iofs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dst, rel), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("times of %s: %w", filepath.Join(dst, rel), err)
		}
		return nil
	})
}

// syncFS flushes the file system holding path (syncfs(2)).
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}
