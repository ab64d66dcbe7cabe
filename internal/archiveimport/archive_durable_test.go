package archiveimport_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testimage"
)

// resumeArchives are the two kinds of archive a stream import resumes.
func resumeArchives(t *testing.T) []struct {
	name    string
	archive []byte
} {
	return []struct {
		name    string
		archive []byte
	}{
		{"oci", testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 2, "linux/amd64"), "app:1"))},
		{"docker-save", dockerSaveTar(t)},
	}
}

// cleanBlobs are the blobs an uninterrupted import of archive leaves.
func cleanBlobs(t *testing.T, archive []byte) []string {
	t.Helper()
	e := newImportEnv(t)
	r := newStreamRun(t, e, archive)
	if _, err := r.complete(t, 0, "app:1"); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range e.blobs(t) {
		out = append(out, d.String())
	}
	return out
}

func blobStrings(t *testing.T, e *importEnv) []string {
	var out []string
	for _, d := range e.blobs(t) {
		out = append(out, d.String())
	}
	return out
}

// zeroTail overwrites the second half of an ingest's data with zeros,
// keeping its length: what a power cut may leave of bytes never synced.
func zeroTail(t *testing.T, in cas.Ingest) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(in.Dir, "data"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, in.Size-in.Size/2), in.Size/2); err != nil {
		t.Fatal(err)
	}
}

// TestStreamImportIngestZeroed: the entry a download broke off in has an
// ingest of the checkpointed length whose second half is zeros. The
// resume writes that entry again from its first byte instead of going on
// after the wrong bytes, and the import ends with the same blobs as an
// uninterrupted one (a docker save layer is named by what was written, so
// a wrong prefix would be a wrong layer).
func TestStreamImportIngestZeroed(t *testing.T) {
	for _, tc := range resumeArchives(t) {
		t.Run(tc.name, func(t *testing.T) {
			want := cleanBlobs(t, tc.archive)
			ranges := dataRanges(t, tc.archive)
			big := ranges[0]
			for _, rg := range ranges {
				if rg[1]-rg[0] > big[1]-big[0] {
					big = rg
				}
			}
			at := (big[0] + big[1]) / 2
			e := newImportEnv(t)
			r := newStreamRun(t, e, tc.archive)
			if off := r.cut(t, at, 0); off != at {
				t.Fatalf("cut at %d resumes at %d", at, off)
			}
			ingests, err := cas.ListIngests(e.root)
			if err != nil {
				t.Fatal(err)
			}
			zeroed := 0
			for _, in := range ingests {
				if in.Size == at-big[0] {
					zeroTail(t, in)
					zeroed++
				}
			}
			if zeroed != 1 {
				t.Fatalf("found %d ingests of the cut blob among %v", zeroed, ingests)
			}
			if _, err := r.complete(t, big[0], "app:1"); err != nil {
				t.Fatal(err)
			}
			if got := blobStrings(t, e); !slices.Equal(got, want) {
				t.Fatalf("blobs after the resume:\n%v\nwant\n%v", got, want)
			}
			r.requireNoCheckpoint(t)
		})
	}
}

// TestStreamImportPendingZeroed: a process killed after a checkpoint,
// and a blob that checkpoint names as written whole has zeros in its
// second half. The checkpoint no longer vouches for what it named, so
// the import starts over, and ends with the right blobs.
func TestStreamImportPendingZeroed(t *testing.T) {
	for _, tc := range resumeArchives(t) {
		t.Run(tc.name, func(t *testing.T) {
			want := cleanBlobs(t, tc.archive)
			ranges := dataRanges(t, tc.archive)
			big := ranges[0]
			for _, rg := range ranges[:len(ranges)-1] {
				if rg[1]-rg[0] > big[1]-big[0] {
					big = rg
				}
			}
			e := newImportEnv(t)
			r := newStreamRun(t, e, tc.archive)
			si, _ := r.open(t, e.ctx, 1) // a checkpoint at every entry
			if err := r.feed(si, 0, big[1]+1024); err != nil {
				t.Fatal(err)
			}
			archiveimport.Kill(si)
			ingests, err := cas.ListIngests(e.root)
			if err != nil {
				t.Fatal(err)
			}
			zeroed := 0
			for _, in := range ingests {
				if in.Size == big[1]-big[0] {
					zeroTail(t, in)
					zeroed++
				}
			}
			if zeroed != 1 {
				t.Fatalf("found %d ingests of the written blob among %v", zeroed, ingests)
			}
			next, err := cas.Open(e.ctx, e.root)
			if err != nil {
				t.Fatal(err)
			}
			r.local = next
			if _, err := r.complete(t, 0, "app:1"); err != nil {
				t.Fatal(err)
			}
			if got := blobStrings(t, e); !slices.Equal(got, want) {
				t.Fatalf("blobs after the resume:\n%v\nwant\n%v", got, want)
			}
			r.requireNoCheckpoint(t)
		})
	}
}

// TestCheckpointSyncs: before a checkpoint is renamed into place, every
// ingest it names was fsynced (the entry in progress included), then its
// temporary file; after the rename, its directory.
func TestCheckpointSyncs(t *testing.T) {
	archive := testimage.OCILayoutTar(t, testimage.NamedIndex(randomImage(t, 3, "linux/amd64"), "app:1"))
	ranges := dataRanges(t, archive)
	big := ranges[0]
	for _, rg := range ranges[:len(ranges)-1] {
		if rg[1]-rg[0] > big[1]-big[0] {
			big = rg
		}
	}
	check := func(t *testing.T, rec *archiveimport.SyncRecorder, ckpt string) {
		t.Helper()
		b, err := os.ReadFile(ckpt)
		if err != nil {
			t.Fatal(err)
		}
		var cp struct {
			Pending []struct {
				Ref    string `json:"ref"`
				Exists bool   `json:"exists"`
			} `json:"pending"`
			Current *struct {
				Ref string `json:"ref"`
			} `json:"current"`
		}
		if err := json.Unmarshal(b, &cp); err != nil {
			t.Fatal(err)
		}
		var refs []string
		for _, p := range cp.Pending {
			if !p.Exists {
				refs = append(refs, p.Ref)
			}
		}
		if cp.Current != nil {
			refs = append(refs, cp.Current.Ref)
		}
		if len(refs) == 0 {
			t.Fatal("the checkpoint names no ingest")
		}
		// The last checkpoint written: its temporary file, then its
		// directory (a killed entry's ingest may be synced after it).
		calls, last := rec.Calls, -1
		for i, c := range calls {
			if strings.HasPrefix(c, "file "+ckpt) {
				last = i
			}
		}
		if last < 0 || last+1 >= len(calls) || calls[last+1] != "dir "+filepath.Dir(ckpt) {
			t.Fatalf("the checkpoint's file is not synced, then its directory: %q", calls)
		}
		for _, ref := range refs {
			if !slices.Contains(calls[:last], "ingest "+ref) {
				t.Errorf("ingest %s named by the checkpoint was not synced before it: %q", ref, calls)
			}
		}
	}
	t.Run("between-entries", func(t *testing.T) {
		e := newImportEnv(t)
		r := newStreamRun(t, e, archive)
		si, _ := r.open(t, e.ctx, 1)
		rec := &archiveimport.SyncRecorder{}
		archiveimport.RecordSyncs(si, rec)
		if err := r.feed(si, 0, big[1]+1024); err != nil {
			t.Fatal(err)
		}
		archiveimport.Kill(si)
		check(t, rec, r.ckpt)
	})
	t.Run("in-an-entry", func(t *testing.T) {
		e := newImportEnv(t)
		r := newStreamRun(t, e, archive)
		si, _ := r.open(t, e.ctx, 0)
		rec := &archiveimport.SyncRecorder{}
		archiveimport.RecordSyncs(si, rec)
		if err := r.feed(si, 0, (big[0]+big[1])/2); err != nil {
			t.Fatal(err)
		}
		si.Stop(errCut)
		check(t, rec, r.ckpt)
	})
}
