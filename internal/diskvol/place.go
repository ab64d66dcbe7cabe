package diskvol

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/durable"
	"github.com/localds/localds/internal/snapshot"
)

// Entry is one disk volume on disk.
type Entry struct {
	Volume  snapshot.Volume
	Format  Format
	Novault bool
	Path    string
	Size    int64
	ModTime time.Time
}

// Dir is the volumes directory of the vault or the novault tree: the one
// the snapshotter keeps container volumes in.
func Dir(root string, novault bool) string {
	return filepath.Dir(snapshot.VolumeDir(root, snapshot.Volume{}, novault))
}

// Path is where the disk volume v of format f lives.
func Path(root string, v snapshot.Volume, novault bool, f Format) string {
	return filepath.Join(Dir(root, novault), v.String()+"."+string(f))
}

// Existing returns the path of any volume with v's key on disk: a disk
// image of either format or a container volume, in the vault or novault
// tree; "" for none. A key names one volume, whatever its kind or place.
func Existing(root string, v snapshot.Volume) (string, error) {
	for _, novault := range []bool{false, true} {
		names := []string{filepath.Base(snapshot.VolumeDir(root, v, novault))}
		for _, f := range formats {
			names = append(names, filepath.Base(Path(root, v, novault, f)))
		}
		for _, n := range names {
			p := filepath.Join(Dir(root, novault), n)
			if _, err := os.Lstat(p); err == nil {
				return p, nil
			} else if !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("look for volume %s: %w", v, err)
			}
		}
	}
	return "", nil
}

// List returns the disk volumes under root, by key.
func List(root string) ([]Entry, error) {
	var out []Entry
	for _, novault := range []bool{false, true} {
		dir := Dir(root, novault)
		des, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("list disk volumes: %w", err)
		}
		for _, de := range des {
			e, ok := parseName(de.Name())
			if !ok || !de.Type().IsRegular() {
				continue
			}
			info, err := de.Info()
			if err != nil {
				continue // removed meanwhile
			}
			e.Novault, e.Path, e.Size, e.ModTime = novault, filepath.Join(dir, de.Name()), info.Size(), info.ModTime()
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume.String() < out[j].Volume.String() })
	return out, nil
}

// parseName reads "<key>.<format>"; partial files start with a dot and
// never parse.
func parseName(name string) (Entry, bool) {
	for _, f := range formats {
		base, ok := strings.CutSuffix(name, "."+string(f))
		if !ok {
			continue
		}
		v, err := snapshot.ParseVolume(base)
		if err != nil || v.String() != base {
			return Entry{}, false
		}
		return Entry{Volume: v, Format: f}, true
	}
	return Entry{}, false
}

// Find returns the disk volume with v's key, errdefs.ErrNotFound if none.
func Find(root string, v snapshot.Volume) (Entry, error) {
	all, err := List(root)
	if err != nil {
		return Entry{}, err
	}
	for _, e := range all {
		if e.Volume == v {
			return e, nil
		}
	}
	return Entry{}, fmt.Errorf("no disk volume %s under %s: %w", v, root, errdefs.ErrNotFound)
}

// Remove deletes the disk volume with v's key and makes the removal
// durable. Nothing tells whether a VM still has the image open: its
// blocks stay until the VM closes it.
func Remove(root string, v snapshot.Volume) (Entry, error) {
	e, err := Find(root, v)
	if err != nil {
		return Entry{}, err
	}
	if err := os.Remove(e.Path); err != nil {
		return Entry{}, fmt.Errorf("remove disk volume %s: %w", v, err)
	}
	if err := durable.SyncDir(filepath.Dir(e.Path)); err != nil {
		return Entry{}, err
	}
	return e, nil
}
