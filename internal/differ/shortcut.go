package differ

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// applyStaged moves the staged tree of desc (see Staging) onto the
// snapshot behind mounts, where that gives exactly what containerd's apply
// would. It reports false, having changed nothing, when the normal apply
// must run: no staged tree, payloads or mounts it does not know, a target
// that is not an empty directory on the staging file system, whiteouts
// for a target that is not an overlay upperdir. An error means the target
// may be half filled and the apply must fail.
func (a *stagedApplier) applyStaged(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, payloads int, syncFs bool) (ocispec.Descriptor, bool, error) {
	if !stageableMediaType(desc.MediaType) || payloads > 0 {
		return ocispec.Descriptor{}, false, nil
	}
	target, parents, overlay := stagedTarget(mounts)
	if target == "" {
		return ocispec.Descriptor{}, false, nil
	}
	t := a.staging.take(desc.Digest)
	if t == nil {
		return ocispec.Descriptor{}, false, nil
	}
	// Taken once: whatever happens, the rest of the tree goes.
	defer a.staging.discard(ctx, t)
	l := log.G(ctx).WithField("digest", desc.Digest)
	if decoded, _ := layerDecoding(desc.MediaType); t.size != desc.Size || t.decoded != decoded || (t.whiteouts && !overlay) {
		l.Debug("staged layer does not fit this apply; extracting")
		return ocispec.Descriptor{}, false, nil
	}
	if err := fixImplicit(t.dir, t.implicit, parents); err != nil {
		l.WithError(err).Debug("staged layer's implicit parents differ; extracting")
		return ocispec.Descriptor{}, false, nil
	}
	// The staged root stays behind; its own blocks are not the
	// snapshot's (the hint counts the target's instead).
	var rootSt unix.Stat_t
	rootErr := unix.Lstat(t.dir, &rootSt)
	moved, err := moveTree(t.dir, target)
	if err != nil {
		if moved {
			return ocispec.Descriptor{}, false, fmt.Errorf("move staged layer onto %s: %w", target, err)
		}
		if errors.Is(err, errOtherFS) {
			a.otherFS.Do(func() {
				l.WithError(err).Warn("layers staged in the daemon's root cannot be moved onto this snapshotter's file system; they are extracted at apply (--stage-layers=false saves the staging work)")
			})
		}
		l.WithError(err).Debug("staged layer not moved; extracting")
		return ocispec.Descriptor{}, false, nil
	}
	if rootErr == nil && t.usage.Inodes > 0 {
		a.hints.record(target, snapshots.Usage{Inodes: t.usage.Inodes - 1, Size: t.usage.Size - rootSt.Blocks*512})
	}
	if syncFs {
		if err := syncFS(target); err != nil {
			return ocispec.Descriptor{}, false, err
		}
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Size: t.diffSize, Digest: t.diffID}, true, nil
}

// stagedTarget is the directory containerd's apply would extract into for
// mounts, without mounting, and the parents it would give archive.Apply:
// an overlay's upperdir and lowerdirs (containerd extracts there directly,
// whiteouts converted), or the source of a plain read-write bind mount
// (containerd mounts it and extracts, whiteouts removing; no parents).
// "" for anything else.
func stagedTarget(mounts []mount.Mount) (dir string, parents []string, overlay bool) {
	if len(mounts) != 1 {
		return "", nil, false
	}
	m := mounts[0]
	switch m.Type {
	case "overlay":
		// As containerd's getOverlayPath: the other options do not
		// matter to its apply.
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				dir = v
			} else if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				parents = strings.Split(v, ":")
			}
		}
		return dir, parents, true
	case "bind":
		for _, o := range m.Options {
			switch o {
			case "bind", "rbind", "rw":
			default:
				return "", nil, false // ro, idmapped, propagation...: as mounted
			}
		}
		return m.Source, nil, false
	}
	return "", nil, false
}

// moveTree renames every top-level entry of src into the empty directory
// dst (the snapshot keeps its own root directory, as containerd's apply
// never changes it). moved reports that dst may not be empty any more:
// a failure after the first rename is undone, and moved is only true if
// undoing failed too.
func moveTree(src, dst string) (moved bool, err error) {
	var sst, dstSt unix.Stat_t
	if err := unix.Lstat(src, &sst); err != nil {
		return false, fmt.Errorf("stat staged tree: %w", err)
	}
	if err := unix.Lstat(dst, &dstSt); err != nil {
		return false, fmt.Errorf("stat target: %w", err)
	}
	if dstSt.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, fmt.Errorf("target %s is not a directory", dst)
	}
	if sst.Dev != dstSt.Dev {
		return false, fmt.Errorf("target %s: %w", dst, errOtherFS)
	}
	if empty, err := isEmptyDir(dst); err != nil || !empty {
		return false, fmt.Errorf("target %s is not empty (%v)", dst, err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return false, fmt.Errorf("read staged tree: %w", err)
	}
	for i, e := range entries {
		err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(src, e.Name()), unix.AT_FDCWD, filepath.Join(dst, e.Name()), unix.RENAME_NOREPLACE)
		if err == nil {
			continue
		}
		err = fmt.Errorf("rename %s: %w", e.Name(), err)
		for _, back := range entries[:i] {
			if uerr := unix.Renameat2(unix.AT_FDCWD, filepath.Join(dst, back.Name()), unix.AT_FDCWD, filepath.Join(src, back.Name()), unix.RENAME_NOREPLACE); uerr != nil {
				return true, errors.Join(err, fmt.Errorf("undo rename %s: %w", back.Name(), uerr))
			}
		}
		return false, err
	}
	return false, nil
}

// errOtherFS: rename(2) cannot move a staged tree there.
var errOtherFS = errors.New("on another file system than the staging area")

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err == io.EOF {
		return true, nil
	} else if err != nil {
		return false, err
	}
	return false, nil
}

// syncFS is containerd's apply's sync (syncfs(2) of the target's file
// system) for ApplyRequest.SyncFs.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}
