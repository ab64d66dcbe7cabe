package cas

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
