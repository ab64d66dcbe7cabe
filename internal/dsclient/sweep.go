package dsclient

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// Unfinished is a download an interrupted fetch left in the area.
type Unfinished struct {
	Key     string    // the sha256 it was to have, or "url-<sha256 of the URL>"
	URL     string    // from its state file; "" if there was none
	Bytes   int64     // what its files hold
	Touched time.Time // when one of its files last changed
}

// Sweep says which unfinished downloads SweepUnfinished removes.
type Sweep struct {
	// Before: those none of whose files changed since.
	Before time.Time
	// Companions are suffixes of files a Sink keeps in the area for a
	// download (key+suffix): they are its files too.
	Companions []string
	// Keep, if set, spares those it is true for (the one about to run).
	Keep func(Unfinished) bool
	// Drop, if set, is called for each with the download locked, before
	// its files go; if it fails the download stays.
	Drop func(Unfinished) error
}

// SweepUnfinished removes the downloads that no fetch holds and whose
// files have not changed since sw.Before: an abandoned download (its
// source moved on, or nobody asked again) would otherwise keep its bytes
// on the node's disk for good. A download's files are its partial file,
// state, verified file and companions. It returns what it removed.
func (d *Downloader) SweepUnfinished(sw Sweep) ([]Unfinished, error) {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("downloader area: %w", err)
	}
	suffixes := append([]string{partialSuffix, stateSuffix, verifiedSuffix}, sw.Companions...)
	var keys []string
	for _, e := range entries {
		for _, suf := range suffixes {
			if k, ok := strings.CutSuffix(e.Name(), suf); ok && k != "" && e.Type().IsRegular() {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	var swept []Unfinished
	var errs []error
	for _, key := range slices.Compact(keys) {
		u, ok, err := d.sweepOne(key, sw, suffixes)
		if err != nil {
			errs = append(errs, fmt.Errorf("unfinished download %s: %w", key, err))
		}
		if ok {
			swept = append(swept, u)
		}
	}
	return swept, errors.Join(errs...)
}

// sweepOne removes the download key if it is unused and old enough.
func (d *Downloader) sweepOne(key string, sw Sweep, suffixes []string) (Unfinished, bool, error) {
	u := Unfinished{Key: key}
	var paths []string
	for _, suf := range suffixes {
		p := filepath.Join(d.dir, key+suf)
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		paths = append(paths, p)
		u.Bytes += st.Size()
		if st.ModTime().After(u.Touched) {
			u.Touched = st.ModTime()
		}
	}
	if st, err := readState(filepath.Join(d.dir, key+stateSuffix)); err == nil {
		u.URL = st.URL
	}
	if len(paths) == 0 || !u.Touched.Before(sw.Before) || (sw.Keep != nil && sw.Keep(u)) {
		return u, false, nil
	}
	// Hold the download as a fetch does: the partial file's lock (made
	// for the purpose if there is none, as a fetch would), and the
	// verified file's, which its reader shares.
	partial := filepath.Join(d.dir, key+partialSuffix)
	_, statErr := os.Lstat(partial)
	pf, err := openLocked(partial, os.O_RDONLY|os.O_CREATE, syscall.LOCK_EX)
	if err != nil {
		return u, false, ignoreInUse(err)
	}
	defer pf.Close()
	swept := false
	if errors.Is(statErr, fs.ErrNotExist) {
		defer func() {
			if !swept {
				removeQuiet(partial) // made only for the lock
			}
		}()
	}
	verified := filepath.Join(d.dir, key+verifiedSuffix)
	if vf, err := openLocked(verified, os.O_RDONLY, syscall.LOCK_EX); err == nil {
		defer vf.Close()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return u, false, ignoreInUse(err)
	}
	if sw.Drop != nil {
		if err := sw.Drop(u); err != nil {
			return u, false, err
		}
	}
	// The partial file last: its lock keeps fetches out until the rest
	// is gone.
	paths = slices.DeleteFunc(paths, func(p string) bool { return p == partial })
	if err := removeQuiet(append(paths, partial)...); err != nil {
		return u, false, err
	}
	swept = true
	return u, true, nil
}

// ignoreInUse: a download in use is not swept, and that is no error.
func ignoreInUse(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errdefs.IsUnavailable(err) {
		return nil
	}
	return err
}
