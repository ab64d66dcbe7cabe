package cas_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/content"

	"github.com/localds/localds/internal/cas"
)

// TestListStatusesTornIngest: ingests a power cut left torn (a directory
// without its data file, or with an empty startedat) are left out of the
// list; the others are listed, also through a filter, and a writer of a
// torn ingest's ref starts it again.
func TestListStatusesTornIngest(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"whole-1", "whole-2", "torn-data", "torn-startedat"} {
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("some bytes of " + ref)); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	sts, err := cs.ListStatuses(ctx)
	if err != nil || len(sts) != 4 {
		t.Fatalf("before the tear: %d statuses, %v", len(sts), err)
	}
	// Tear two of them as a power cut may.
	for _, st := range sts {
		dir := ingestDirOf(t, root, st.Ref)
		switch st.Ref {
		case "torn-data":
			if err := os.Remove(filepath.Join(dir, "data")); err != nil {
				t.Fatal(err)
			}
		case "torn-startedat":
			if err := os.WriteFile(filepath.Join(dir, "startedat"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cs, err = cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	sts, err = cs.ListStatuses(ctx)
	if err != nil {
		t.Fatalf("a torn ingest fails the list: %v", err)
	}
	var refs []string
	for _, st := range sts {
		refs = append(refs, st.Ref)
	}
	slices.Sort(refs)
	if !slices.Equal(refs, []string{"whole-1", "whole-2"}) {
		t.Fatalf("listed %v, want the two whole ingests", refs)
	}
	if sts, err := cs.ListStatuses(ctx, `ref==whole-2`); err != nil || len(sts) != 1 || sts[0].Ref != "whole-2" {
		t.Fatalf("filtered list: %+v, %v", sts, err)
	}
	w, err := cs.Writer(ctx, content.WithRef("torn-data"))
	if err != nil {
		t.Fatalf("writer of a torn ingest: %v", err)
	}
	defer w.Close()
	if st, err := w.Status(); err != nil || st.Offset != 0 {
		t.Fatalf("torn ingest reopened at %+v, %v; want offset 0", st, err)
	}
}

// ingestDirOf finds the ingest directory whose ref file names ref.
func ingestDirOf(t *testing.T, root, ref string) string {
	t.Helper()
	entries, err := os.ReadDir(cas.IngestDir(root))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		dir := filepath.Join(cas.IngestDir(root), e.Name())
		if b, err := os.ReadFile(filepath.Join(dir, "ref")); err == nil && string(b) == ref {
			return dir
		}
	}
	t.Fatalf("no ingest of ref %q", ref)
	return ""
}
