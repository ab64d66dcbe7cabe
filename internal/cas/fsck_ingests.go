package cas

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultIngestAge is how long an ingest must have been untouched before
// fsck calls it stale: far longer than any running write pauses (a pull
// that waits out a datastore outage still writes within minutes), short
// enough that a dead daemon's prefetch does not hold its space for days.
const DefaultIngestAge = time.Hour

// StaleIngest is an unfinished write nothing has touched for a while.
type StaleIngest struct {
	Ingest
	// Ref is the writer's ref (e.g. localds-prefetch-sha256:…), if its
	// ref file could be read.
	Ref string
	// Age is how long ago its data was last written.
	Age time.Duration
	// Removed and RemoveErr say what --remove did.
	Removed   bool
	RemoveErr error
}

func (s StaleIngest) String() string {
	out := fmt.Sprintf("%s (ref %q, %d bytes, untouched for %v)", s.Dir, s.Ref, s.Size, s.Age.Round(time.Second))
	switch {
	case s.Removed:
		out += " (removed)"
	case s.RemoveErr != nil:
		out += fmt.Sprintf(" (not removed: %v)", s.RemoveErr)
	}
	return out
}

// staleIngests lists the ingests of root whose data (or, without data,
// directory) was last modified more than age ago, removing them if asked.
// Age is what tells them from a running write: a writer touches its data
// file with every write, and a live pull writes within minutes.
func staleIngests(root string, age time.Duration, remove bool) ([]StaleIngest, error) {
	if age <= 0 {
		age = DefaultIngestAge
	}
	ingests, err := ListIngests(root)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var out []StaleIngest
	for _, in := range ingests {
		mod, ok := ingestModTime(in.Dir)
		if !ok || now.Sub(mod) < age {
			continue
		}
		s := StaleIngest{Ingest: in, Age: now.Sub(mod)}
		if b, err := os.ReadFile(filepath.Join(in.Dir, "ref")); err == nil {
			s.Ref = strings.TrimSpace(string(b))
		}
		if remove {
			if err := os.RemoveAll(in.Dir); err != nil {
				s.RemoveErr = err
			} else {
				s.Removed = true
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// ingestModTime is when an ingest was last written: its data file's mtime,
// else its directory's (an ingest killed before its first byte).
func ingestModTime(dir string) (time.Time, bool) {
	for _, p := range []string{filepath.Join(dir, "data"), dir} {
		if st, err := os.Stat(p); err == nil {
			return st.ModTime(), true
		}
	}
	return time.Time{}, false
}
