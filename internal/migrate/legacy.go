package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/localds/localds/internal/diskvol"
	"github.com/localds/localds/internal/durable"
	"github.com/localds/localds/internal/snapshot"
)

// LegacyOptions say what Legacy migrates.
type LegacyOptions struct {
	Root    string
	Mapping *Mapping
	Apply   bool
	// Fault, if set, is called after every durable step with its name
	// ("copied", "placing", "staged", "renamed", "removed"); an error
	// stops the run there, as a crash would. For tests.
	Fault func(step string) error
}

// Item is what happened to one legacy volume.
type Item struct {
	Old, New string
	Volume   string
	Action   Action
	Detail   string
}

// Legacy moves each mapped legacy volume to its place under the root: a
// file (a VM disk image) to <key>.qcow2 or <key>.raw by its magic, a
// directory (a prepared pod's tree) to <key>.container/fs, which
// `localds volume adopt` then gives to containerd. Within a file system
// it is a rename; across, a copy that is fsynced, renamed into place and
// only then is the old one removed. A journal under <root>/vault/migrate
// records each move before its data changes place, so a run that was
// killed is finished by the next one, nothing lost or doubled. A volume
// key that exists is never overwritten: that entry is left, with why.
func Legacy(ctx context.Context, opts LegacyOptions) ([]Item, error) {
	j, err := openJournal(opts.Root)
	if err != nil {
		return nil, err
	}
	l := &legacy{opts: opts, j: j}
	var out []Item
	for _, e := range opts.Mapping.Volumes {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		it, err := l.one(e)
		out = append(out, it)
		if err != nil {
			return out, fmt.Errorf("migrate %s to %s: %w", e.Path, e.Volume(), err)
		}
	}
	return out, nil
}

type legacy struct {
	opts LegacyOptions
	j    *journal
}

func (l *legacy) fault(step string) error {
	if l.opts.Fault == nil {
		return nil
	}
	return l.opts.Fault(step)
}

// one migrates one entry; an error is a failure of this run (a crash
// point, a disk error), a Left item a volume that cannot be migrated.
func (l *legacy) one(e MapEntry) (Item, error) {
	it := Item{Old: e.Path, Volume: e.Volume().String()}
	if rec, ok := l.j.Records[e.Path]; ok {
		it.New = rec.Final
		switch {
		case rec.Stage == stageDone:
			it.Action, it.Detail = Present, "migrated by an earlier run"
			return it, nil
		case !l.opts.Apply:
			it.Action, it.Detail = WouldDo, "finish the interrupted "+rec.Method
			return it, nil
		}
		return l.place(e, rec, it, true)
	}
	st, err := os.Lstat(e.Path)
	if err != nil {
		it.Action, it.Detail = Left, fmt.Sprintf("cannot read it: %v", err)
		return it, nil
	}
	final, err := l.final(e, st)
	if err != nil {
		it.Action, it.Detail = Left, err.Error()
		return it, nil
	}
	it.New = final
	if p, err := diskvol.Existing(l.opts.Root, e.Volume()); err != nil {
		return it, err
	} else if p != "" {
		it.Action, it.Detail = Left, fmt.Sprintf("volume %s exists (%s); not overwritten", e.Volume(), p)
		return it, nil
	}
	dir := filepath.Dir(final)
	if l.opts.Apply {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return it, err
		}
	}
	method := "copy"
	if same, err := durable.SameFS(e.Path, nearest(dir)); err != nil {
		return it, err
	} else if same {
		method = "rename"
	}
	if !l.opts.Apply {
		it.Action, it.Detail = WouldDo, method
		return it, nil
	}
	rec := record{Stage: stagePlacing, Method: method, Final: final, Tmp: filepath.Join(dir, "."+e.Volume().String()+".migrate")}
	if err := l.stage(e, st, rec); err != nil {
		return it, err
	}
	if err := l.j.set(e.Path, rec); err != nil {
		return it, err
	}
	if err := l.fault("placing"); err != nil {
		return it, err
	}
	return l.place(e, rec, it, false)
}

// final is where e goes: by its kind and, for a file, its magic.
func (l *legacy) final(e MapEntry, st fs.FileInfo) (string, error) {
	switch {
	case st.IsDir():
		return snapshot.VolumeDir(l.opts.Root, e.Volume(), e.Novault), nil
	case st.Mode().IsRegular():
		f, err := os.Open(e.Path)
		if err != nil {
			return "", err
		}
		defer f.Close()
		head := make([]byte, 4)
		n, err := io.ReadFull(f, head)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return "", err
		}
		return diskvol.Path(l.opts.Root, e.Volume(), e.Novault, diskvol.Detect(head[:n])), nil
	}
	return "", fmt.Errorf("a %s is neither a disk image nor a directory", st.Mode().Type())
}

// stage prepares the temporary name before the journal says "placing":
// the whole copy for a copy, the empty <key>.container with work/ for a
// directory's rename. A crashed run's leftover is removed first; before
// "placing" it never holds the only copy of anything.
func (l *legacy) stage(e MapEntry, st fs.FileInfo, rec record) error {
	if err := os.RemoveAll(rec.Tmp); err != nil {
		return err
	}
	switch {
	case rec.Method == "copy" && st.IsDir():
		if err := os.Mkdir(rec.Tmp, 0o700); err != nil {
			return err
		}
		if err := durable.CopyTree(e.Path, filepath.Join(rec.Tmp, "fs")); err != nil {
			os.RemoveAll(rec.Tmp)
			return err
		}
		if err := os.Mkdir(filepath.Join(rec.Tmp, "work"), 0o700); err != nil {
			return err
		}
		if err := durable.SyncDir(rec.Tmp); err != nil {
			return err
		}
	case rec.Method == "copy":
		if _, err := durable.CopyFile(e.Path, rec.Tmp, nil); err != nil {
			os.Remove(rec.Tmp)
			return err
		}
	case st.IsDir():
		if err := os.Mkdir(rec.Tmp, 0o700); err != nil {
			return err
		}
		if err := os.Mkdir(filepath.Join(rec.Tmp, "work"), 0o700); err != nil {
			return err
		}
		if err := durable.SyncDir(rec.Tmp); err != nil {
			return err
		}
	default:
		return nil // a file's rename needs no temporary name
	}
	if err := durable.SyncDir(filepath.Dir(rec.Tmp)); err != nil {
		return err
	}
	return l.fault("copied")
}

// place takes a "placing" move to its end, from wherever a crash left
// it: the data is in exactly one of old, tmp and final.
func (l *legacy) place(e MapEntry, rec record, it Item, resumed bool) (Item, error) {
	dir := filepath.Dir(rec.Final)
	if !exists(rec.Final) {
		isDir := rec.Tmp != "" && exists(filepath.Join(rec.Tmp, "work"))
		switch {
		case rec.Method == "rename" && !isDir:
			if !exists(e.Path) {
				return it, fmt.Errorf("neither %s nor %s exists: the journal says it was being renamed", e.Path, rec.Final)
			}
			if err := durable.RenameNoReplace(e.Path, rec.Final); err != nil {
				return it, err
			}
		case rec.Method == "rename":
			fsDir := filepath.Join(rec.Tmp, "fs")
			if !exists(fsDir) {
				if !exists(e.Path) {
					return it, fmt.Errorf("neither %s nor %s exists: the journal says it was being renamed", e.Path, fsDir)
				}
				if err := os.Rename(e.Path, fsDir); err != nil {
					return it, err
				}
				if err := syncBoth(filepath.Dir(e.Path), rec.Tmp); err != nil {
					return it, err
				}
				if err := l.fault("staged"); err != nil {
					return it, err
				}
			}
			if err := durable.RenameNoReplace(rec.Tmp, rec.Final); err != nil {
				return it, err
			}
		default: // copy: the temporary copy is complete once "placing"
			if !exists(rec.Tmp) {
				return it, fmt.Errorf("the copy %s is gone and %s does not exist; run migrate again after moving the journal %s away", rec.Tmp, rec.Final, l.j.path)
			}
			if err := durable.RenameNoReplace(rec.Tmp, rec.Final); err != nil {
				return it, err
			}
		}
		if err := durable.SyncDir(dir); err != nil {
			return it, err
		}
		if err := l.fault("renamed"); err != nil {
			return it, err
		}
	}
	if rec.Method == "copy" && exists(e.Path) {
		if err := os.RemoveAll(e.Path); err != nil {
			return it, err
		}
		if err := durable.SyncDir(filepath.Dir(e.Path)); err != nil {
			return it, err
		}
		if err := l.fault("removed"); err != nil {
			return it, err
		}
	}
	rec.Stage = stageDone
	if err := l.j.set(e.Path, rec); err != nil {
		return it, err
	}
	it.Action = Moved
	if rec.Method == "copy" {
		it.Action = Copied
	}
	if resumed {
		it.Action, it.Detail = Finished, "an interrupted run's "+rec.Method+" finished"
	}
	return it, nil
}

func syncBoth(a, b string) error {
	if err := durable.SyncDir(a); err != nil {
		return err
	}
	return durable.SyncDir(b)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// nearest is dir or its nearest existing ancestor (a dry run creates
// nothing, but can tell the file system).
func nearest(dir string) string {
	for !exists(dir) && dir != filepath.Dir(dir) {
		dir = filepath.Dir(dir)
	}
	return dir
}
