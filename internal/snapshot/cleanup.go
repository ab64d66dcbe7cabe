//go:build linux

package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Remove deletes the snapshot key and then its directories (and any other
// directory no snapshot owns). The metastore refuses to remove a snapshot
// that others depend on, and checkRemovable a volume that `localds volume
// rm` did not ask to remove (both errdefs.ErrFailedPrecondition, which
// containerd's garbage collection logs and skips, keeping the snapshot).
func (o *snapshotter) Remove(ctx context.Context, key string) (err error) {
	var removals []string
	// Directories go after the transaction has committed: once the key is
	// gone from the metastore, a failed removal only leaves garbage for
	// the next cleanup, never a snapshot without its files.
	defer func() {
		if err == nil {
			o.removeAll(ctx, removals)
		}
	}()
	return o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return fmt.Errorf("remove snapshot %q: %w", clip(key), err)
		}
		if err := checkRemovable(info, time.Now()); err != nil {
			return err
		}
		if _, _, err := storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("remove snapshot %q: %w", clip(key), err)
		}
		removals, err = o.cleanupDirectories(ctx)
		if err != nil {
			return fmt.Errorf("find directories to remove: %w", err)
		}
		return nil
	})
}

// Cleanup removes the directories no snapshot owns: those of removed
// snapshots and what a crash left behind (temporaries of an unfinished
// prepare, a directory moved into place whose metadata never committed).
// containerd calls it after garbage collection; New calls it at start.
func (o *snapshotter) Cleanup(ctx context.Context) error {
	var dirs []string
	// A write transaction, so no prepare can put a directory in place
	// between the scan and the decision.
	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		dirs, err = o.cleanupDirectories(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	o.removeAll(ctx, dirs)
	return nil
}

func (o *snapshotter) removeAll(ctx context.Context, dirs []string) {
	for _, d := range dirs {
		log.G(ctx).WithField("path", d).Debug("removing snapshot directory")
		if err := os.RemoveAll(d); err != nil {
			log.G(ctx).WithError(err).WithField("path", d).Warn("cannot remove snapshot directory")
		}
	}
}

// cleanupDirectories lists what Cleanup removes; it needs a transaction.
func (o *snapshotter) cleanupDirectories(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if errdefs.IsNotFound(err) {
		ids = map[string]string{} // a new database has no buckets yet
	} else if err != nil {
		return nil, err
	}
	// The volume directories that live snapshots own.
	live := map[string]bool{}
	for id, key := range ids {
		if !strings.Contains(key, "#") {
			continue
		}
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", id, err)
		}
		pl, err := placementOf(info.Name, info.Kind, info.Labels)
		if err != nil {
			// Cannot happen for what Prepare stored; keep everything
			// rather than guess which directory is whose.
			return nil, fmt.Errorf("snapshot %s: %w", id, err)
		}
		if pl.volume {
			live[o.l.dir(id, pl)] = true
		}
	}

	var out []string
	names, err := readDirNames(o.l.snapshotDirs())
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		// Like overlay: everything in snapshots/ that is not a live ID
		// (removed snapshots, "new-" temporaries) goes.
		if _, ok := ids[n]; !ok {
			out = append(out, filepath.Join(o.l.snapshotDirs(), n))
		}
	}
	for _, novault := range []bool{false, true} {
		vdir := o.l.volumes(novault)
		names, err := readDirNames(vdir)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			p := filepath.Join(vdir, n)
			if live[p] {
				continue
			}
			if o.orphanVolumeDir(ctx, vdir, n) {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// orphanVolumeDir decides whether the entry name of a volumes directory,
// owned by no live snapshot, may be removed: temporaries of a prepare
// always; a volume directory only if this database made it (its owner
// file). Volumes hold user data, so anything else is left and reported:
// a vault re-created while novault survived must not wipe novault.
func (o *snapshotter) orphanVolumeDir(ctx context.Context, dir, name string) bool {
	if strings.HasPrefix(name, volumeTempPat) {
		// Unless a copy is filling it right now (createFrom).
		return !o.copying.has(filepath.Join(dir, name))
	}
	base, ok := strings.CutSuffix(name, volumeDirSuffix)
	if ok {
		if _, err := ParseVolume(base); err != nil {
			ok = false
		}
	}
	if !ok {
		log.G(ctx).WithField("path", filepath.Join(dir, name)).Warn("unexpected entry in a volumes directory; leaving it")
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, name, ownerFile))
	if err == nil && strings.TrimSpace(string(b)) == o.instance {
		return true
	}
	log.G(ctx).WithField("path", filepath.Join(dir, name)).Warn("volume directory not known to this snapshot database (made by another one); leaving it")
	return false
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	return names, nil
}

// compile-time checks: containerd calls Cleanup on snapshotters that have it.
var (
	_ snapshots.Snapshotter = (*snapshotter)(nil)
	_ snapshots.Cleaner     = (*snapshotter)(nil)
)
