package daemon_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/prefetch"
)

// TestStartRemovesDeadPrefetchIngests: the partial prefetch ingests a
// killed daemon left are gone once the next daemon serves; a localds pull's
// ingest stays for its resume.
func TestStartRemovesDeadPrefetchIngests(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{prefetch.RefPrefix + "sha256:aa", "localds-import-x"} {
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	startDaemon(t, dir, nil)
	ingests, err := cas.ListIngests(root)
	if err != nil || len(ingests) != 1 || ingests.Total() != 1000 {
		t.Fatalf("ingests after start: %+v, %v; want only the import's", ingests, err)
	}
	if _, err := cs.Status(ctx, "localds-import-x"); err != nil {
		t.Fatalf("the import's ingest: %v", err)
	}
}
