package dsclient

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestSweepUnfinished: downloads untouched since the cutoff go with all
// their files (companions too, after Drop saw them); a download in use, a
// recent one, one Keep spares and one Drop refuses stay as they were.
func TestSweepUnfinished(t *testing.T) {
	d := newDownloader(t, t.TempDir(), Options{})
	old := time.Now().Add(-48 * time.Hour)
	put := func(name string, mtime time.Time) {
		t.Helper()
		p := filepath.Join(d.Dir(), name)
		if err := os.WriteFile(p, []byte("bytes of "+name), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	download := func(key string, mtime time.Time, suffixes ...string) {
		t.Helper()
		for _, suf := range suffixes {
			put(key+suf, mtime)
		}
		if err := writeState(filepath.Join(d.Dir(), key+stateSuffix), state{URL: "http://ds.local/" + key, Size: -1}); err != nil {
			t.Fatal(err)
		}
		st := filepath.Join(d.Dir(), key+stateSuffix)
		if err := os.Chtimes(st, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	download("abandoned", old, partialSuffix, ".import")
	download("stateonly", old)
	put("verifiedonly"+verifiedSuffix, old)
	download("recent", time.Now(), partialSuffix)
	download("touched", old, partialSuffix)
	put("touched.import", time.Now()) // a companion written lately
	download("inuse", old, partialSuffix)
	download("spared", old, partialSuffix)
	download("refused", old, partialSuffix)
	download("refusednolock", old) // no partial file: one is made for the lock, and goes again
	f, err := openLocked(filepath.Join(d.Dir(), "inuse"+partialSuffix), os.O_RDWR, syscall.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	var dropped []string
	swept, err := d.SweepUnfinished(Sweep{
		Before:     time.Now().Add(-24 * time.Hour),
		Companions: []string{".import"},
		Keep:       func(u Unfinished) bool { return u.URL == "http://ds.local/spared" },
		Drop: func(u Unfinished) error {
			dropped = append(dropped, u.Key)
			if u.Key == "refused" || u.Key == "refusednolock" {
				return errors.New("cannot drop")
			}
			return nil
		},
	})
	if err == nil {
		t.Error("the refused drop is not reported")
	}
	var keys []string
	for _, u := range swept {
		keys = append(keys, u.Key)
		if u.Key == "abandoned" && (u.URL != "http://ds.local/abandoned" || u.Bytes == 0 || !u.Touched.Equal(old)) {
			t.Errorf("swept %+v", u)
		}
	}
	if want := []string{"abandoned", "stateonly", "verifiedonly"}; !slices.Equal(keys, want) {
		t.Errorf("swept %v, want %v", keys, want)
	}
	if want := []string{"abandoned", "refused", "refusednolock", "stateonly", "verifiedonly"}; !slices.Equal(dropped, want) {
		t.Errorf("Drop saw %v, want %v", dropped, want)
	}
	entries, err := os.ReadDir(d.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := []string{
		"inuse.partial", "inuse.state", "recent.partial", "recent.state", "refused.partial", "refused.state", "refusednolock.state",
		"spared.partial", "spared.state", "touched.import", "touched.partial", "touched.state",
	}
	if !slices.Equal(left, want) {
		t.Errorf("area holds %v, want %v", left, want)
	}
}
