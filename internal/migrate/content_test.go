package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/localds/localds/internal/cas"
)

func blob(t *testing.T, dir string, content, name string) string {
	t.Helper()
	if name == "" {
		s := sha256.Sum256([]byte(content))
		name = hex.EncodeToString(s[:])
	}
	p := filepath.Join(dir, "blobs", "sha256", name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, p, []byte(content))
	return name
}

// TestContent: a good blob is hard-linked (same file system) or copied
// (across), a blob whose bytes do not match its name is left, an existing
// CAS blob is not replaced (right digest: present; wrong: left).
func TestContent(t *testing.T) {
	for _, src := range []string{t.TempDir(), "/dev/shm"} {
		if src == "/dev/shm" {
			d, err := os.MkdirTemp(src, "content")
			if err != nil {
				t.Skip(err)
			}
			defer os.RemoveAll(d)
			src = d
		}
		root := t.TempDir()
		good := blob(t, src, "good", "")
		bad := blob(t, src, "rotten", good[:60]+"0000")
		have := blob(t, src, "have", "")
		blob(t, cas.Dir(root), "have", "")
		damaged := blob(t, src, "damaged", "")
		blob(t, cas.Dir(root), "other bytes", damaged)

		dry, err := Content(context.Background(), ContentOptions{Src: src, Root: root})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]Action{}
		for _, b := range dry {
			got[filepath.Base(b.Path)] = b.Action
		}
		if got[good] != WouldDo || got[bad] != Left || got[have] != Present || got[damaged] != Left {
			t.Fatalf("dry run: %+v", dry)
		}
		if _, err := os.Stat(filepath.Join(cas.Dir(root), "blobs", "sha256", good)); err == nil {
			t.Fatal("dry run wrote")
		}
		res, err := Content(context.Background(), ContentOptions{Src: src, Root: root, Apply: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range res {
			got[filepath.Base(b.Path)] = b.Action
		}
		same, _ := sameFS(src, root)
		wantGood := Copied
		if same {
			wantGood = Linked
		}
		if g := got[good]; g != wantGood && !(g == Cloned && !same) {
			t.Errorf("good blob: %s, want %s (%+v)", g, wantGood, res)
		}
		if got[bad] != Left || got[have] != Present || got[damaged] != Left {
			t.Errorf("apply: %+v", res)
		}
		casBlob := func(n string) string {
			b, _ := os.ReadFile(filepath.Join(cas.Dir(root), "blobs", "sha256", n))
			return string(b)
		}
		if casBlob(good) != "good" || casBlob(bad) != "" || casBlob(damaged) != "other bytes" {
			t.Errorf("CAS after apply: good %q bad %q damaged %q", casBlob(good), casBlob(bad), casBlob(damaged))
		}
		if des, _ := os.ReadDir(filepath.Join(root, "vault", "migrate")); len(des) != 0 {
			t.Errorf("temporary files left: %v", des)
		}
	}
}
