package archiveimport_test

import (
	"testing"
	"time"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testimage"
)

// ingestCount is how many ingests the CAS holds.
func ingestCount(t *testing.T, e *importEnv) int {
	t.Helper()
	ingests, err := cas.ListIngests(e.root)
	if err != nil {
		t.Fatal(err)
	}
	return len(ingests)
}

// cutInSecondBlob is a stream import of a two-layer archive cut in the
// middle of its second blob, the first one pending: it left ingests and
// a checkpoint. ranges are the archive's data ranges.
func cutInSecondBlob(t *testing.T) (*importEnv, *streamRun, [][2]int64, int64) {
	t.Helper()
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 2, "linux/amd64"), "app:1"))
	ranges := dataRanges(t, archive)
	e := newImportEnv(t)
	r := newStreamRun(t, e, archive)
	at := (ranges[1][0] + ranges[1][1]) / 2
	r.cut(t, at, 0)
	if ingestCount(t, e) == 0 {
		t.Fatal("the cut import left no ingest")
	}
	return e, r, ranges, at
}

// TestDropCheckpoint: an interrupted stream import dropped for good takes
// its ingests and its checkpoint with it, and says how many bytes they
// held; a missing checkpoint is no error.
func TestDropCheckpoint(t *testing.T) {
	e, r, ranges, at := cutInSecondBlob(t)
	prefix, err := archiveimport.CheckpointPrefix(r.ckpt)
	if err != nil || prefix == "" {
		t.Fatalf("CheckpointPrefix = %q, %v", prefix, err)
	}
	freed, err := archiveimport.DropCheckpoint(e.ctx, r.local, r.ckpt)
	if err != nil {
		t.Fatal(err)
	}
	if want := ranges[0][1] - ranges[0][0] + at - ranges[1][0]; freed != want {
		t.Errorf("DropCheckpoint freed %d bytes, want %d (a blob and a half)", freed, want)
	}
	e.blobs(t) // fails on a left ingest
	r.requireNoCheckpoint(t)
	if freed, err := archiveimport.DropCheckpoint(e.ctx, r.local, r.ckpt); err != nil || freed != 0 {
		t.Errorf("DropCheckpoint of none: %d, %v", freed, err)
	}
}

// TestSweepImports: the ingests of a killed import that no checkpoint
// names go once nothing wrote them since the cutoff; those of an import
// still waiting for its download (keep) stay, as do recent ones.
func TestSweepImports(t *testing.T) {
	e, r, _, _ := cutInSecondBlob(t)
	prefix, err := archiveimport.CheckpointPrefix(r.ckpt)
	if err != nil {
		t.Fatal(err)
	}
	held := ingestCount(t, e)
	for _, tc := range []struct {
		name   string
		cutoff time.Time
		keep   func(string) bool
	}{
		{"recent", time.Now().Add(-time.Hour), nil},
		{"kept", time.Now().Add(time.Hour), func(p string) bool { return p == prefix }},
	} {
		if n, _, err := archiveimport.SweepImports(e.ctx, r.local, tc.cutoff, tc.keep); err != nil || n != 0 || ingestCount(t, e) != held {
			t.Fatalf("%s: swept %d (%v), %d of %d ingests left", tc.name, n, err, ingestCount(t, e), held)
		}
	}
	n, freed, err := archiveimport.SweepImports(e.ctx, r.local, time.Now().Add(time.Hour), func(p string) bool { return p != prefix })
	if err != nil || n != held || freed == 0 {
		t.Fatalf("swept %d of %d ingests (%d bytes): %v", n, held, freed, err)
	}
	e.blobs(t)
}
