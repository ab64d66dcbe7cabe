package dsserver

import (
	"archive/tar"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarDir packs dir into the archive out, paths relative to dir.
func tarDir(t *testing.T, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, _ := d.Info()
		h, _ := tar.FileInfoHeader(fi, "")
		h.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// layoutArchive writes an OCI-layout archive at path holding a random
// image of layers layers, named by the bare tag, and returns the image.
func layoutArchive(t *testing.T, path, tag string, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(1000, layers)
	if err != nil {
		t.Fatal(err)
	}
	lp, err := layout.Write(t.TempDir(), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
	tarDir(t, string(lp), path)
	return img
}

func TestImportArchives(t *testing.T) {
	dir := t.TempDir()
	imp := filepath.Join(dir, ImportDir)
	if err := os.MkdirAll(imp, 0o755); err != nil {
		t.Fatal(err)
	}
	// An OCI layout whose image is named by a bare tag: repository from the file name.
	ociImg := layoutArchive(t, filepath.Join(imp, "web.tar"), "2", 2)
	// A docker save archive with a full name.
	dockerImg, _ := random.Image(1000, 1)
	tag, _ := name.NewTag("docker.io/library/tool:1.0")
	if err := tarball.WriteToFile(filepath.Join(imp, "tool.tar"), tag, dockerImg); err != nil {
		t.Fatal(err)
	}
	// Garbage is reported, not fatal.
	os.WriteFile(filepath.Join(imp, "junk.tar"), []byte("not a tar"), 0o644)

	s, ts := startServer(t, dir)
	s.Registry().SetReadOnly(true) // clients cannot push; imports still load
	s.Registry().ImportDir(t.Context(), imp)
	if r := do(t, "POST", ts.URL+"/v2/web/blobs/uploads/", nil, nil); r.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("push to a read-only datastore: %d", r.StatusCode)
	}
	if r := do(t, "DELETE", ts.URL+"/v2/web/manifests/2", nil, nil); r.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("delete on a read-only datastore: %d", r.StatusCode)
	}

	want, _ := ociImg.Digest()
	checkPull(t, ts, "web:2", want)
	// docker save layers are re-compressed by ggcr's tarball package: check
	// the config (the image's identity) instead of the manifest digest.
	img, err := remoteImage(t, ts, "tool:1.0")
	if err != nil {
		t.Fatalf("pull imported docker archive: %v", err)
	}
	gotCfg, _ := img.ConfigName()
	wantCfg, _ := dockerImg.ConfigName()
	if gotCfg != wantCfg {
		t.Fatalf("config %s, want %s", gotCfg, wantCfg)
	}
	// Importing again is harmless.
	s.Registry().ImportDir(t.Context(), imp)
	checkPull(t, ts, "web:2", want)
}

func TestImportRef(t *testing.T) {
	for in, want := range map[string]string{
		"1":                            "localds.invalid/fallback:1",
		"app:1":                        "localds.invalid/app:1",
		"docker.io/library/app:1":      "localds.invalid/app:1",
		"registry.example:5000/x/y:v2": "localds.invalid/x/y:v2",
		"team/app":                     "localds.invalid/team/app:latest",
		"":                             "localds.invalid/fallback:latest",
		"app@sha256:abc":               "localds.invalid/app:latest",
	} {
		got, err := importRef(in, "fallback")
		if err != nil || got.String() != want {
			t.Errorf("importRef(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	if _, err := importRef("Bad Name:1", "fallback"); err == nil {
		t.Error("importRef accepted a bad name")
	}
}
