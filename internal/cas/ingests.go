package cas

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Ingest is one unfinished write in the CAS's ingest/ directory
// (containerd's local store: ingest/<hash of the ref>/data).
type Ingest struct {
	Dir  string // the ingest's directory
	Size int64  // bytes written so far (0 if its data file is gone)
}

// Ingests are the unfinished writes of a CAS.
type Ingests []Ingest

// ListIngests reads the unfinished writes under root's CAS from disk,
// without opening the store (fsck, tests and tools that watch a pull).
// A CAS with no ingest directory has none.
func ListIngests(root string) (Ingests, error) {
	dir := IngestDir(root)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	out := make(Ingests, 0, len(entries))
	for _, e := range entries {
		in := Ingest{Dir: filepath.Join(dir, e.Name())}
		if st, err := os.Stat(filepath.Join(in.Dir, "data")); err == nil {
			in.Size = st.Size()
		}
		out = append(out, in)
	}
	return out, nil
}

// IngestDir is the ingest directory of root's CAS.
func IngestDir(root string) string { return filepath.Join(Dir(root), ingestDir) }

// Largest is the size of the biggest ingest, 0 if there is none.
func (l Ingests) Largest() int64 {
	var n int64
	for _, in := range l {
		n = max(n, in.Size)
	}
	return n
}

// Total is the bytes written in all ingests.
func (l Ingests) Total() int64 {
	var n int64
	for _, in := range l {
		n += in.Size
	}
	return n
}

// RemoveIngestsByRef removes every ingest whose ref starts with prefix and
// returns how many it removed and their bytes. The daemon calls it at
// start for its prefetch's refs: no prefetch runs before the daemon does,
// so each such ingest is a dead daemon's and nothing would resume it
// (the next pull finds the manifest stored and prefetches afresh).
func RemoveIngestsByRef(root, prefix string) (n int, size int64, err error) {
	ingests, err := ListIngests(root)
	if err != nil {
		return 0, 0, err
	}
	for _, in := range ingests {
		ref, rerr := os.ReadFile(filepath.Join(in.Dir, "ref"))
		if rerr != nil || !strings.HasPrefix(string(ref), prefix) {
			continue
		}
		if rerr := os.RemoveAll(in.Dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove ingest %s: %w", in.Dir, rerr))
			continue
		}
		n++
		size += in.Size
	}
	return n, size, err
}
